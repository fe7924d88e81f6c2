"""Region proposals for "describe everything": sources behind one interface (``image → boxes + objectness``),
duplicates removed with ``torchvision.ops.batched_nms``.

Sources (:func:`proposal_source`):

* ``default``: graph-based segmentation at three scales, segments and adjacent pairs, scored by stability
  (:mod:`dynrefer.proposals.segments`; needs scikit-image, the ``proposals`` extra);
* ``sam:CHECKPOINT``: Segment Anything's automatic mask generator (:mod:`dynrefer.proposals.sam`; the
  ``segment-anything`` package, also in the ``proposals`` extra), objectness its predicted IoU;
* ``file:PATH``: proposals read from a file made elsewhere (as the original's predicted-box evaluation reads
  GRiT's): a JSONL of SPEC §5 records (``{"image", "regions": [{"box", "score"}]}``; images matched by path
  relative to the file's folder, or by file name) or a COCO-style results list (``[{"image_id", "bbox": [x, y,
  w, h], "score"}]``; ``image_id`` matched to the image's file name without its extension).

The dense-captioning confidence (``score``) of a proposal is its objectness, kept as ``objectness`` as well; a
source without objectness leaves the caption score, as the original ranks. Combining the two ranked worse on
generated scenes (caption × objectness: mAP 15.1, objectness alone 47.3; docs/proposals.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..records import iter_jsonl
from .base import Proposals

__all__ = ["FileProposals", "Proposals", "best_first", "proposal_source"]


class FileProposals:
    """``file:PATH`` proposals (see the module docstring)."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"cannot read proposals '{self.path}': no such file")
        self._by_key: dict[str, list] = {}
        self._names: dict[str, set] = {}  # file name -> the record paths that have it
        try:
            with self.path.open("r", encoding="utf-8") as fh:
                coco = fh.read(65536).lstrip().startswith("[")  # a COCO results list, else JSONL records
            if coco:
                self._read_coco(self.path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise InputError(f"proposals '{self.path}': not UTF-8 text") from None
        if not coco:
            self._read_jsonl()

    def _read_coco(self, text: str) -> None:
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"proposals '{self.path}': not valid JSON ({exc.msg})") from None
        if not isinstance(items, list):
            raise InputError(f"proposals '{self.path}': a COCO results file is a list")
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "image_id" not in item or "bbox" not in item:
                raise InputError(f"proposals '{self.path}': item {i} needs 'image_id' and 'bbox' (COCO results)")
            x, y, w, h = _numbers(item["bbox"], 4, f"proposals '{self.path}' item {i}: bbox")
            score = _score(item.get("score"), f"proposals '{self.path}' item {i}")
            self._by_key.setdefault(str(item["image_id"]), []).append(([x, y, x + w, y + h], score))

    def _read_jsonl(self) -> None:
        for n, record in iter_jsonl(self.path, numbered=True):  # checks the JSON and that each line is an object
            if not isinstance(record.get("image"), str):
                raise InputError(f"proposals '{self.path}' line {n}: a record needs 'image' (a path)")
            regions = record.get("regions", [])
            if not isinstance(regions, list) or not all(isinstance(r, dict) for r in regions):
                raise InputError(f"proposals '{self.path}' line {n}: 'regions' must be a list of objects")
            where = f"proposals '{self.path}' line {n}"
            boxes = [(_numbers(r.get("box"), 4, f"{where} region {k}: box"), _score(r.get("score"), where))
                     for k, r in enumerate(regions)]
            self._by_key.setdefault(str((self.path.parent / record["image"]).resolve()), []).extend(boxes)
            name = Path(record["image"]).name
            self._names.setdefault(name, set()).add(record["image"])
            self._by_key.setdefault(name, []).extend(boxes)

    def __call__(self, image_path) -> Proposals:
        path = Path(image_path)
        if str(path.resolve()) not in self._by_key and len(self._names.get(path.name, ())) > 1:
            raise InputError(f"proposals '{self.path}': several records are named '{path.name}' "
                             f"({', '.join(sorted(self._names[path.name]))}); name the image by its path")
        stem_int = str(int(path.stem)) if path.stem.isdigit() else path.stem  # COCO: 000000397133.jpg -> 397133
        for key in (str(path.resolve()), path.name, path.stem, stem_int):
            if key in self._by_key:
                items = self._by_key[key]
                break
        else:
            raise InputError(f"proposals '{self.path}' hold nothing for image '{image_path}' (matched by path, file "
                             "name, or COCO image_id = the file name without its extension)")
        boxes = np.asarray([b for b, _ in items], dtype=np.float64).reshape(-1, 4)
        scores = [s for _, s in items]
        if all(s is None for s in scores):
            return Proposals(boxes)
        if any(s is None for s in scores):
            raise InputError(f"proposals '{self.path}' for '{image_path}': some boxes have a score, others none")
        scores = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
        return Proposals(boxes, scores)


def _numbers(value, count: int, what: str) -> list[float]:
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{what} must be {count} numbers, got {value!r}") from None
    if len(out) != count or not np.isfinite(out).all():
        raise InputError(f"{what} must be {count} finite numbers, got {value!r}")
    return out


def _score(value, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise InputError(f"{what}: a score must be a finite number, got {value!r}")
    return float(value)


def resolved_source(spec: str) -> str:
    """``spec`` with the path of a ``file:`` / ``sam:`` source made absolute (the same source from any folder)."""
    kind, _, arg = str(spec).partition(":")
    return f"{kind}:{Path(arg).resolve()}" if kind in ("file", "sam") and arg else str(spec)


def proposal_source(spec: str, *, device=None):
    """The proposal source a ``--proposals`` value names (see the module docstring); ``device``: where a model
    source (SAM) runs."""
    kind, _, arg = str(spec).partition(":")
    if kind == "file" and arg:
        return FileProposals(arg)
    if kind == "sam" and arg:
        from .sam import SamProposals

        return SamProposals(arg, device=device)
    if spec == "default":
        from .segments import SegmentProposals

        return SegmentProposals()
    raise InputError(f"unknown proposal source {spec!r}; expected default, sam:CHECKPOINT or file:PATH")


def best_first(record: dict) -> dict:
    """A ``describe`` record of proposals with its regions best first (by ``score``: the objectness for a source
    with it, else the caption score; see :func:`~dynrefer.inference.predictor.detection_score`)."""
    record["regions"].sort(key=lambda r: -(r.get("score") or 0.0))
    return record
