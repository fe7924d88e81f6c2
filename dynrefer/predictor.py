"""``describe``: captions, tags, attributes and a category for every region of one or many images.

    import dynrefer
    record = dynrefer.describe("photo.jpg", [[10, 20, 200, 180], {"polygon": [...]}],
                               tasks=("caption", "tags", "attributes", "category"))

Per image: the regions are parsed (boxes xyxy / xywh, polygons, masks, COCO RLE), the views
of all regions are chosen with the model's policy (greedy pHash by default) and rendered in
one call, identical crops are encoded once, and all regions go through the model together.
The result is one record per image in the shape of SPEC §5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .images import load_image
from .regions import parse_regions
from .view_selection import select_views
from .views import render_crops

TASKS = ("caption", "tags", "attributes", "category")


def _resolve_model(model):
    from .model.dynrefer import DynRefer

    if isinstance(model, DynRefer):
        return model
    return DynRefer.from_pretrained(model)


class Predictor:
    """Holds a model and describes regions of images with it.

    Args:
        model: a ``DynRefer``, a model folder, or ``"builtin"``.
        device: where to run (default: the model's device).
    """

    def __init__(self, model="builtin", device=None):
        self.model = _resolve_model(model).eval()
        if device is not None:
            self.model.to(device)

    @property
    def device(self) -> torch.device:
        return self.model.tag_embeddings.device

    def describe(self, image, regions, *, tasks=TASKS, num_views=None, policy=None, ts=None, box_format="xyxy",
                 classes=None, attributes=None, all_scores=False, tag_threshold=None, image_label=None) -> dict:
        """Describe ``regions`` of one ``image`` (path, PIL image, array or tensor); see the module doc."""
        tasks = _check_tasks(tasks)
        cfg = self.model.config.views
        num_views = cfg.num_views if num_views is None else num_views
        if num_views != cfg.num_views:
            raise InputError(f"this model fuses {cfg.num_views} views; num_views={num_views} is not possible")
        policy = policy or cfg.policy
        if policy == "fixed" and ts is None:
            ts = cfg.fixed_ts
        pixels = load_image(image)
        size = (int(pixels.shape[2]), int(pixels.shape[1]))
        parsed = parse_regions(regions, size, box_format=box_format)
        label = image_label if image_label is not None else (str(image) if isinstance(image, (str, Path)) else None)
        record = {"image": label, "width": size[0], "height": size[1], "regions": []}
        if not parsed:
            return record
        views = select_views(pixels, [r.box for r in parsed], num_views=num_views, policy=policy, ts=ts,
                             size=cfg.size, hash_flavour=cfg.hash_flavour, render=False)
        crops = np.concatenate([v.geometry.crops for v in views])
        unique, inverse = np.unique(crops, axis=0, return_inverse=True)
        batch = {
            "pixels": render_crops(pixels.to(self.device), unique, cfg.size),
            "view_index": torch.as_tensor(inverse.reshape(-1), device=self.device),
            "boxes_in_view": torch.as_tensor(np.concatenate([v.geometry.box_in_view for v in views]),
                                             dtype=torch.float32, device=self.device),
        }
        classes = list(classes) if classes is not None else list(self.model.categories)
        attributes = list(attributes) if attributes is not None else list(self.model.attributes)
        outputs = self.model.predict(batch, tasks, attributes=attributes or None, categories=classes or None,
                                     tag_threshold=0.0 if all_scores else tag_threshold)
        threshold = self.model.config.tags.threshold if tag_threshold is None else tag_threshold
        for region, view, out in zip(parsed, views, outputs):
            item = {"id": region.id, "box": [float(v) for v in region.box],
                    "views": [{"t": float(t), "crop": [int(c) for c in crop]}
                              for t, crop in zip(view.geometry.ts, view.geometry.crops)]}
            if "caption" in tasks:
                item["caption"] = out["caption"]
                item["caption_score"] = out["caption_score"]
            item["score"] = region.score if region.score is not None else item.get("caption_score")
            if "tags" in tasks:
                item["tags"] = out["tags"] if all_scores else [t for t in out["tags"] if t[1] > threshold]
            if "attributes" in tasks:
                item["attributes"] = out.get("attributes", [])
            if "category" in tasks:
                item["category"] = out.get("category")
                if all_scores:
                    item["categories"] = out.get("categories", [])
            record["regions"].append(item)
        return record


def _check_tasks(tasks) -> tuple[str, ...]:
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    tasks = tuple(tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise InputError(f"unknown task(s) {bad or '(none)'}; expected some of {', '.join(TASKS)}")
    return tasks


_PREDICTORS: dict[str, Predictor] = {}


def describe(image, regions, *, model="builtin", **kwargs):
    """Describe regions of one image (a record) or of several (``image`` a list, ``regions`` a
    list of region lists; a list of records). ``model``: ``"builtin"``, a folder or a
    ``DynRefer``; folders are loaded once per process."""
    if isinstance(model, (str, Path)):
        key = str(model)
        if key not in _PREDICTORS:
            _PREDICTORS[key] = Predictor(model)
        predictor = _PREDICTORS[key]
    else:
        predictor = Predictor(model)
    if isinstance(image, (list, tuple)):
        if not isinstance(regions, (list, tuple)) or len(regions) != len(image):
            raise InputError("with several images, give one list of regions per image")
        return [predictor.describe(img, regs, **kwargs) for img, regs in zip(image, regions)]
    return predictor.describe(image, regions, **kwargs)
