"""``describe``: captions, tags, attributes and a category for every region of one or many images.

    import dynrefer
    record = dynrefer.describe("photo.jpg", [[10, 20, 200, 180], {"polygon": [...]}],
                               tasks=("caption", "tags", "attributes", "category"))

Per image: the regions are parsed (boxes xyxy / xywh, polygons, masks, COCO RLE); then the
engine (:mod:`dynrefer.inference.engine`) chooses the views of all regions of all images with the
model's policy (greedy pHash by default), renders each image's unique crops once and runs every
region of every image through the model together. The result is one record per image in the
shape of SPEC §5.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError
from ..images import load_image
from ..regions import parse_regions
from .engine import TASKS, Engine, check_tasks


def _resolve_model(model):
    from ..model.dynrefer import DynRefer

    if isinstance(model, DynRefer):
        return model
    return DynRefer.from_pretrained(model)


class Predictor:
    """Holds a model and describes regions of images with it (through :class:`~dynrefer.inference.engine.Engine`).

    Args:
        model: a ``DynRefer``, a model folder, or ``"builtin"``.
        device: where to run (default: the model's device).
        encoder_batch_size: views per encoder call (``None``: chosen for the device, see
            :func:`dynrefer.inference.engine.auto_encoder_batch_size`); ``dtype``: optional autocast
            (``"bfloat16"`` / ``"float16"``, or ``"auto"``: bfloat16 on a CUDA device with bfloat16 tensor cores).
    """

    def __init__(self, model="builtin", device=None, *, encoder_batch_size: int | None = None,
                 dtype: str | None = None):
        self.model = _resolve_model(model).eval()
        if device is not None:
            self.model.to(device)
        self.engine = Engine(self.model, encoder_batch_size=encoder_batch_size, dtype=dtype)

    @property
    def device(self) -> torch.device:
        return self.model.tag_embeddings.device

    def describe(self, image, regions, *, image_label=None, box_format="xyxy", **kwargs) -> dict:
        """Describe ``regions`` of one ``image`` (path, PIL image, array or tensor); see
        :meth:`describe_many` for the options."""
        return self.describe_many([image], [regions], image_labels=[image_label], box_format=box_format, **kwargs)[0]

    def describe_many(self, images, regions, *, tasks=TASKS, num_views=None, policy=None, ts=None, box_format="xyxy",
                      classes=None, attributes=None, all_scores=False, tag_threshold=None, image_labels=None,
                      hash_flavour=None, generator=None, views=None, return_tokens=False) -> list[dict]:
        """Describe the regions of several images in one engine pass; one record per image.

        ``regions``: one list per image (boxes, polygons, masks, RLE; see
        :func:`~dynrefer.regions.parse_regions`). ``policy`` / ``ts`` / ``hash_flavour``
        override the model's view settings (``generator``: a ``torch.Generator`` for the
        ``random`` policy); ``classes`` / ``attributes`` default to the model's vocabularies;
        ``all_scores`` lists every tag and every class (the captions are the same either way: their
        control string is the tags above the threshold). ``views`` (SPEC §2) sets the views in one
        argument: a policy name (``"greedy"``), a list of ``t`` values (the ``fixed`` policy), or a dict of
        ``num_views`` / ``policy`` / ``ts`` / ``hash_flavour``. ``return_tokens``: return ``(records, tokens)``,
        ``tokens`` the (R, Q, D) region tokens of every region in order (None without regions; a region index
        stores them, :mod:`dynrefer.search`).
        """
        if views is not None:
            num_views, policy, ts, hash_flavour = _view_options(views, num_views, policy, ts, hash_flavour)
        tasks = check_tasks(tasks)
        if len(images) != len(regions):
            raise InputError(f"got {len(images)} images but {len(regions)} region lists")
        cfg = self.model.config.views
        if num_views is not None and num_views != cfg.num_views:
            raise InputError(f"this model fuses {cfg.num_views} views; num_views={num_views} is not possible")
        labels = list(image_labels) if image_labels is not None else [None] * len(images)
        pixels, parsed, records = [], [], []
        for image, regs, label in zip(images, regions, labels):
            px = load_image(image)
            size = (int(px.shape[2]), int(px.shape[1]))
            pixels.append(px)
            parsed.append(parse_regions(regs, size, box_format=box_format))
            label = label if label is not None else (str(image) if isinstance(image, (str, Path)) else None)
            records.append({"image": label, "width": size[0], "height": size[1], "regions": []})
        outputs, plan, tokens = self.engine.run_with_tokens(
            pixels, parsed, tasks=tasks, policy=policy, ts=ts, hash_flavour=hash_flavour, classes=classes,
            attributes=attributes, tag_threshold=tag_threshold, all_tags=all_scores, generator=generator)
        records = self._fill(records, parsed, outputs, plan, tasks, all_scores, tag_threshold)
        return (records, tokens) if return_tokens else records

    def describe_prepared(self, items: list[PreparedImage], *, tasks=TASKS, classes=None, attributes=None,
                          all_scores=False, tag_threshold=None, return_tokens=False) -> list[dict]:
        """:meth:`describe_many` for images whose regions were parsed and whose views were planned and
        rendered beforehand by :func:`prepare_image` (e.g. in DataLoader workers); same records (and
        ``return_tokens`` as there)."""
        from .engine import merge_prepared

        tasks = check_tasks(tasks)
        if not items:
            return ([], None) if return_tokens else []
        parsed = [item.regions for item in items]
        records = [{"image": item.label, "width": item.size[0], "height": item.size[1], "regions": []}
                   for item in items]
        prepared = merge_prepared([(item.plan, item.pixels) for item in items])
        outputs, plan, tokens = self.engine.run_with_tokens(None, parsed, tasks=tasks, classes=classes,
                                                            attributes=attributes, tag_threshold=tag_threshold,
                                                            all_tags=all_scores, prepared=prepared)
        records = self._fill(records, parsed, outputs, plan, tasks, all_scores, tag_threshold)
        return (records, tokens) if return_tokens else records

    def _fill(self, records, parsed, outputs, plan, tasks, all_scores, tag_threshold) -> list[dict]:
        threshold = self.model.config.tags.threshold if tag_threshold is None else tag_threshold
        views = iter(plan.views)
        for record, regs, outs in zip(records, parsed, outputs):
            for region, out in zip(regs, outs):
                record["regions"].append(region_output(region, next(views), out, tasks, all_scores, threshold))
        return records


def _view_options(views, num_views, policy, ts, hash_flavour):
    """``(num_views, policy, ts, hash_flavour)`` from ``describe``'s ``views`` argument and the separate options
    (giving one both ways is an error)."""
    if isinstance(views, str):
        views = {"policy": views}
    elif isinstance(views, (list, tuple)):
        views = {"policy": "fixed", "ts": list(views)}
    elif isinstance(views, int) and not isinstance(views, bool):
        views = {"num_views": views}
    if not isinstance(views, dict):
        raise InputError(f"views must be a policy name, a list of t values or a dict, got {type(views).__name__}")
    unknown = sorted(set(views) - {"num_views", "policy", "ts", "hash_flavour"})
    if unknown:
        raise InputError(f"unknown views key(s) {', '.join(unknown)}; expected num_views, policy, ts, hash_flavour")
    given = {"num_views": num_views, "policy": policy, "ts": ts, "hash_flavour": hash_flavour}
    both = sorted(k for k in views if given[k] is not None)
    if both:
        raise InputError(f"{', '.join(both)} given both in views= and on its own")
    given.update(views)
    return given["num_views"], given["policy"], given["ts"], given["hash_flavour"]


class PreparedImage:
    """One image made ready for the model by :func:`prepare_image`: ``label``, ``size`` (W, H),
    ``regions`` (parsed; masks dropped, only the boxes are used from here on), ``plan`` (its
    :class:`~dynrefer.inference.engine.ViewPlan`) and ``pixels`` ((U, 3, S, S) uint8 unique crops). A plain
    object, not a dataclass or a mapping, so that Lightning's batch transfer passes it through as it is."""

    __slots__ = ("label", "size", "regions", "plan", "pixels")

    def __init__(self, label, size, regions, plan, pixels):
        self.label, self.size, self.regions, self.plan, self.pixels = label, size, regions, plan, pixels


def prepare_image(image, regions, settings: dict, *, box_format: str = "xyxy", label=None) -> PreparedImage:
    """What can be done for one image before the model sees it, without the model: load it, parse its
    regions, plan and render their views (:func:`~dynrefer.inference.engine.prepare_views` with ``settings`` from
    :meth:`Engine.view_settings <dynrefer.inference.engine.Engine.view_settings>`), for
    :meth:`Predictor.describe_prepared`."""
    from dataclasses import replace

    from .engine import prepare_views

    px = load_image(image)
    size = (int(px.shape[2]), int(px.shape[1]))
    parsed = [replace(r, mask=None) for r in parse_regions(regions, size, box_format=box_format)]
    plan, pixels = prepare_views(px, [r.box for r in parsed], settings)
    label = label if label is not None else (str(image) if isinstance(image, (str, Path)) else None)
    return PreparedImage(label, size, parsed, plan, pixels)


def detection_score(region, caption_score):
    """A region's ``score`` (SPEC §5): its input ``score`` when given; else, for a proposal, its objectness; else
    the caption score. (Multiplying a proposal's objectness by its caption score ranked worse on generated scenes:
    the caption score of parts and background patches is as high as an object's, and the dense-captioning mAP
    fell from 47.3 to 15.1; docs/proposals.md.)"""
    if region.score is not None:
        return region.score
    if region.objectness is not None:
        return region.objectness
    return caption_score


def region_output(region, view, out: dict, tasks, all_scores: bool, threshold: float) -> dict:
    """One predicted region in the shape of SPEC §5."""
    item = {"id": region.id, "box": [float(v) for v in region.box],
            "views": [{"t": float(t), "crop": [int(c) for c in crop]}
                      for t, crop in zip(view.geometry.ts, view.geometry.crops)]}
    if "caption" in tasks:
        item["caption"] = out["caption"]
        item["caption_score"] = out["caption_score"]
    item["score"] = detection_score(region, item.get("caption_score"))
    if region.objectness is not None:
        item["objectness"] = region.objectness
    if "tags" in tasks:
        item["tags"] = out["tags"] if all_scores else [t for t in out["tags"] if t[1] > threshold]
    if "attributes" in tasks:
        item["attributes"] = out.get("attributes", [])
    if "category" in tasks:
        item["category"] = out.get("category")
        if all_scores:
            item["categories"] = out.get("categories", [])
    return item



_PREDICTORS: dict[str, Predictor] = {}


def describe(image, regions, *, model="builtin", **kwargs):
    """Describe regions of one image (a record) or of several (``image`` a list, ``regions`` a
    list of region lists; a list of records). ``model``: ``"builtin"``, a folder or a
    ``DynRefer``; folders are loaded once per process."""
    if isinstance(model, (str, Path)):
        # the folder itself (absolute; and its weights' modification time): a relative path after a chdir, or
        # a folder saved again, loads what is there now
        from ..model.io import model_identity

        key = model_identity(model)
        weights = Path(key) / "model.safetensors"
        if key != "builtin" and weights.is_file():
            key = f"{key}@{weights.stat().st_mtime_ns}"
        if key not in _PREDICTORS:
            _PREDICTORS[key] = Predictor(model)
        predictor = _PREDICTORS[key]
    else:
        predictor = Predictor(model)
    if isinstance(image, (list, tuple)):
        if not isinstance(regions, (list, tuple)) or len(regions) != len(image):
            raise InputError("with several images, give one list of regions per image")
        return predictor.describe_many(list(image), list(regions), **kwargs)
    return predictor.describe(image, regions, **kwargs)
