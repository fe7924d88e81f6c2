"""Shared plumbing of the evaluators: Java check, record bookkeeping, input validation.

Every evaluator follows the detectron2 pattern: ``reset()``, ``process(predictions, ground_truth)``
(any number of times, with batches of project JSONL records, SPEC §5), ``evaluate() -> dict``.
``process`` only collects and checks the records; matching happens in ``evaluate`` so that the
predictions and the ground truth of one image may arrive in different batches.

Bad input is an :class:`~dynrefer.errors.InputError` whose message names the file (or "predictions" /
"ground truth"), the image and the region and says what is wrong: a prediction for an image or a
region that is not in the ground truth, a missing field, a box outside its image (the usual symptom
of ``[x, y, w, h]`` boxes where ``[x1, y1, x2, y2]`` is expected).
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass

from ..errors import DynReferError, InputError

JAVA_HINT = (
    "install a Java runtime (8 or newer), e.g. 'apt-get install openjdk-17-jre-headless' "
    "(Debian/Ubuntu), 'brew install openjdk' (macOS) or 'conda install -c conda-forge openjdk'"
)


class MissingJavaError(DynReferError, RuntimeError):
    """A metric needs Java and no ``java`` executable is on PATH."""


class JavaToolError(DynReferError, RuntimeError):
    """A Java tool of pycocoevalcap (METEOR jar, PTB tokenizer) could not be found, started or read."""


class MeteorError(JavaToolError):
    """The METEOR jar could not be found, started or read."""


def require_java(needs: str) -> str:
    """Path of ``java``; else raise :class:`MissingJavaError` starting with ``needs`` ("METEOR needs Java")."""
    java = shutil.which("java")
    if java is None:
        raise MissingJavaError(f"{needs}, but no 'java' executable is on PATH: {JAVA_HINT}")
    return java


def percent(value) -> float | None:
    """``100 * value`` as a float, ``None`` for NaN / missing (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else 100.0 * value


def where(source: str, image, region=None) -> str:
    text = f"{source}: image {image!r}"
    return text if region is None else f"{text}, region {region!r}"


def check_number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def check_box(box, size, what: str, *, clip: bool = False) -> tuple[float, float, float, float]:
    """A validated ``[x1, y1, x2, y2]`` box; ``size = (width, height)`` or ``None`` (not checked).

    Raises InputError when the box is not 4 finite numbers, has ``x2 < x1`` / ``y2 < y1``, or lies
    outside the image by more than 1 px: the usual sign of xywh boxes given as xyxy. With ``clip``
    (ground truth: Visual Genome has regions that run past the image, which DenseCap's preprocessing
    clamps) a box is clipped to the image instead.
    """
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise InputError(f"{what}: 'box' must be [x1, y1, x2, y2], got {box!r}")
    x1, y1, x2, y2 = (check_number(v, f"{what}: 'box' coordinate") for v in box)
    problem = None
    if x2 < x1 or y2 < y1:
        problem = "has x2 < x1 or y2 < y1"
    elif size is not None and clip:
        w, h = size
        x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
        y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
    elif size is not None:
        w, h = size
        if x1 < -1 or y1 < -1 or x2 > w + 1 or y2 > h + 1:
            problem = f"lies outside the {w:g}x{h:g} image"
    if problem:
        raise InputError(
            f"{what}: box {list(box)} {problem}; boxes must be [x1, y1, x2, y2] pixels (xyxy): "
            "were they written as [x, y, width, height] (xywh)?"
        )
    return x1, y1, x2, y2


def image_size(record: dict, what: str):
    """``(width, height)`` of a record, or ``None`` when it has neither."""
    if record.get("width") is None and record.get("height") is None:
        return None
    width = check_number(record.get("width"), f"{what}: 'width'")
    return width, check_number(record.get("height"), f"{what}: 'height'")


def require(region: dict, field: str, what: str):
    if field not in region or region[field] is None:
        raise InputError(f"{what}: missing field '{field}'")
    return region[field]


def check_regions(record: dict, what: str, need_ids: bool) -> list[dict]:
    regions = record.get("regions", [])
    if not isinstance(regions, list) or not all(isinstance(r, dict) for r in regions):
        raise InputError(f"{what}: 'regions' must be a list of objects")
    if need_ids:
        seen = set()
        for r in regions:
            rid = r.get("id")
            if rid is None:
                raise InputError(f"{what}: a region has no 'id'")
            if not isinstance(rid, (int, str)) or isinstance(rid, bool):
                raise InputError(f"{what}: region id {rid!r} must be an integer or a string")
            if rid in seen:
                raise InputError(f"{where_id(what, rid)}: region id appears twice in the image")
            seen.add(rid)
    return regions


def where_id(what: str, rid) -> str:
    return f"{what}, region {rid!r}"


def resolve_image(image, base) -> str | None:
    """``image`` as a normalised path relative to ``base`` (absolute paths unchanged)."""
    if not isinstance(image, str) or base is None:
        return None
    return os.path.normpath(image if os.path.isabs(image) else os.path.join(str(base), image))


def align_images(predictions: list[dict], ground_truth: list[dict], pred_base=None, gt_base=None) -> list[dict]:
    """Rename prediction images that match a ground-truth image only as paths.

    Images match as written; failing that, as paths resolved against ``pred_base`` / ``gt_base``
    (the JSONL files' folders, or ``--image-root``). Returns new records where renamed.
    """
    gt_keys = {r.get("image") for r in ground_truth}
    resolved = {}
    for r in ground_truth:
        key = resolve_image(r.get("image"), gt_base)
        if key is not None:
            resolved.setdefault(key, r.get("image"))
    out = []
    for r in predictions:
        image = r.get("image")
        if image not in gt_keys:
            key = resolve_image(image, pred_base)
            if key in resolved:
                r = dict(r, image=resolved[key])
        out.append(r)
    return out


@dataclass
class Match:
    """A predicted region and its ground-truth region (region-keyed tasks)."""

    image: object
    gt_record: dict
    gt_region: dict
    pred_region: dict
    where: str
    gt_where: str


def _merge_records(first: dict, second: dict, what: str) -> dict:
    """One record for an image listed twice, e.g. once per split (the RefCOCOg Google split puts refs of one
    image in train and val; ``prepare`` writes a record per image and split): the regions of both, when
    the two agree on the size and share no region id; else an error."""
    size = lambda r: (r.get("width"), r.get("height"))  # noqa: E731
    regions = [r for rec in (first, second) for r in (rec.get("regions") or [])]
    ids = [r.get("id") for r in regions if isinstance(r, dict)]
    if size(first) != size(second) or len(ids) != len(set(ids)) or None in ids:
        raise InputError(f"{what}: the image has two records (with another size, or the same region ids)")
    merged = {k: v for k, v in first.items() if k != "split"} | {"regions": regions}
    if first.get("split") == second.get("split") and "split" in first:
        merged["split"] = first["split"]
    return merged


class RecordEvaluator:
    """Base of the evaluators: collects records; subclasses implement :meth:`evaluate`.

    Args:
        strict: every ground-truth image (and, for region-keyed tasks, every region) must be
            predicted; the dense-captioning evaluator instead counts the unpredicted images' boxes.
        split: keep only ground-truth records whose ``split`` equals this.
        predictions_name / ground_truth_name: how messages name the two inputs (e.g. file paths).
    """

    task = ""
    unknown_image_hint = ""  # appended to the "image not in the ground truth" message

    def __init__(self, *, strict: bool = False, split: str | None = None,
                 predictions_name: str = "predictions", ground_truth_name: str = "ground truth"):
        self.strict = strict
        self.split = split
        self.predictions_name = predictions_name
        self.ground_truth_name = ground_truth_name
        self.reset()

    def reset(self) -> None:
        self._pred: dict = {}
        self._gt: dict = {}
        # ground-truth images of other splits → their region ids (predictions of those are left out)
        self._other_split: dict = {}
        #: predicted images left out because their ground truth is in another split than ``split``
        self.skipped_other_split = 0

    def process(self, predictions=(), ground_truth=()) -> None:
        """Add a batch of prediction records and / or ground-truth records."""
        for record in ground_truth:
            if self.split is None or (isinstance(record, dict) and record.get("split") == self.split):
                self._add(self._gt, record, self.ground_truth_name)
            elif isinstance(record, dict) and isinstance(record.get("image"), (str, type(None))):
                ids = {r.get("id") for r in record.get("regions") or [] if isinstance(r, dict)}
                self._other_split.setdefault(record.get("image"), set()).update(ids)
        for record in predictions:
            self._add(self._pred, record, self.predictions_name)

    @staticmethod
    def _add(store: dict, record, source: str) -> None:
        if not isinstance(record, dict):
            raise InputError(f"{source}: expected a record object, got {type(record).__name__}")
        if "image" not in record:
            raise InputError(f"{source}: a record has no 'image' field")
        key = record["image"]
        if key is not None and not isinstance(key, str):
            raise InputError(f"{source}: 'image' must be a string or null, got {key!r}")
        if key in store:
            if store[key] == record:
                return
            store[key] = _merge_records(store[key], record, where(source, key))
            return
        store[key] = record

    def _images(self):
        """``(key, gt_record, pred_record)`` for each predicted image, checking it is in the ground truth."""
        if not self._pred:
            raise InputError(f"{self.predictions_name}: no prediction records")
        split = f" (split {self.split!r})" if self.split is not None else ""
        self.skipped_other_split = sum(1 for key in self._pred if key not in self._gt and key in self._other_split)
        if self.skipped_other_split == len(self._pred):
            raise InputError(f"{self.predictions_name}: no predicted image is in {self.ground_truth_name}{split}")
        for key, pred in self._pred.items():
            gt = self._gt.get(key)
            if gt is None and key in self._other_split:
                continue  # an image of another split: predicting a whole file and scoring one split is fine
            if gt is None:
                raise InputError(f"{where(self.predictions_name, key)}: image not in {self.ground_truth_name}{split}"
                                 f"{self.unknown_image_hint}")
            psize = image_size(pred, where(self.predictions_name, key))
            gsize = image_size(gt, where(self.ground_truth_name, key))
            if psize is not None and gsize is not None and psize != gsize:
                raise InputError(
                    f"{where(self.predictions_name, key)}: size {psize[0]:g}x{psize[1]:g} differs from the ground "
                    f"truth's {gsize[0]:g}x{gsize[1]:g}"
                )
            yield key, gt, pred

    def _unpredicted_images(self) -> list:
        return [k for k in self._gt if k not in self._pred]

    def _match(self, pred_fields: tuple, gt_fields: tuple) -> tuple[list[Match], dict]:
        """Match predicted regions to ground-truth regions by ``(image, id)``.

        Returns the matches (prediction order) and counts of ground-truth images / regions that
        have no prediction (an error when ``strict``).
        """
        matches: list[Match] = []
        missed_regions = 0
        for key, gt, pred in self._images():
            gt_what, pred_what = where(self.ground_truth_name, key), where(self.predictions_name, key)
            by_id = {r["id"]: r for r in check_regions(gt, gt_what, need_ids=True)}
            seen = set()
            for region in check_regions(pred, pred_what, need_ids=True):  # ids are unique
                rid = region["id"]
                if rid not in by_id:
                    if rid in self._other_split.get(key, ()):
                        continue  # a region of this image in another split (RefCOCOg's Google split has such)
                    raise InputError(f"{where_id(pred_what, rid)}: region id not in {self.ground_truth_name}")
                seen.add(rid)
                for field in pred_fields:
                    require(region, field, where_id(pred_what, rid))
                for field in gt_fields:
                    require(by_id[rid], field, where_id(gt_what, rid))
                matches.append(Match(key, gt, by_id[rid], region, where_id(pred_what, rid), where_id(gt_what, rid)))
            missed = [rid for rid in by_id if rid not in seen]
            if missed and self.strict:
                raise InputError(f"{where(self.predictions_name, key)}: no prediction for region {missed[0]!r} "
                                 f"({len(missed)} region(s) missing; --strict)")
            missed_regions += len(missed)
        missed_images = self._unpredicted_images()
        if missed_images and self.strict:
            raise InputError(f"{where(self.ground_truth_name, missed_images[0])}: no predictions for this image "
                             f"({len(missed_images)} image(s) missing; --strict)")
        return matches, {"unpredicted_images": len(missed_images), "unpredicted_regions": missed_regions}
