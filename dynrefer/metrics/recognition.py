"""Region recognition on COCO with ground-truth boxes (SPEC §6): top-1 accuracy and box mAP.

Protocol:

* regions are matched by ``(image, id)``; the model classifies every ground-truth box;
* ``accuracy``: share of the ground-truth boxes (with a ``category``) of the evaluated images whose
  predicted ``category`` ([name, score], or a name) equals theirs (names compared verbatim); a box
  without a prediction counts as wrong, as it is a miss in ``map``;
* ``map``: COCO box mAP (AP averaged over IoU 0.50:0.95, pycocotools ``COCOeval``, ``iouType="bbox"``,
  up to 100 detections per image and class) where every ground-truth box is a detection **for every
  class**, scored with that class's score from the predicted region's ``categories``
  ([[name, score], ...] over every class; ``dynrefer describe --all-scores``). The ground truth of
  the evaluated images is every region with a ``category`` (regions without a prediction are misses;
  ``iscrowd`` is honoured when a region carries it); a box's ``area`` is its box area. ``map_50`` and
  ``map_75`` are COCO's AP at IoU 0.5 / 0.75. Without ``categories`` in the predictions ``map`` is null
  and ``notes`` says why.
"""

from __future__ import annotations

import contextlib
import io

from ..errors import InputError
from .common import RecordEvaluator, check_box, check_number, image_size, percent, where

__all__ = ["RecognitionEvaluator", "evaluate_recognition"]

_MAX_DETS = 100


def _category(value, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str):
        return value[0]
    raise InputError(f"{what}: 'category' must be [name, score] (or a name), got {value!r}")


def _class_scores(value, what: str) -> dict:
    if isinstance(value, dict):
        value = list(value.items())
    if not isinstance(value, list):
        raise InputError(f"{what}: 'categories' must be [[name, score], ...]")
    out = {}
    for item in value:
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)):
            raise InputError(f"{what}: 'categories' must be [[name, score], ...], got item {item!r}")
        if item[0] in out:
            raise InputError(f"{what}: class {item[0]!r} is listed twice in 'categories'")
        out[item[0]] = check_number(item[1], f"{what}: score of class {item[0]!r}")
    return out


class RecognitionEvaluator(RecordEvaluator):
    """COCO region recognition over ground-truth boxes (protocol in the module docstring)."""

    task = "recognition"

    def evaluate(self) -> dict:
        matches, missing = self._match(("category",), ("category",))
        correct = 0
        with_scores = [m for m in matches if m.pred_region.get("categories") is not None]
        if with_scores and len(with_scores) != len(matches):
            m = next(m for m in matches if m.pred_region.get("categories") is None)
            raise InputError(f"{m.where}: missing field 'categories' (other regions have it; mAP needs every "
                             "region's class scores)")
        for m in matches:
            gt_name = m.gt_region["category"]
            if not isinstance(gt_name, str):
                raise InputError(f"{m.gt_where}: 'category' must be a class name, got {gt_name!r}")
            correct += _category(m.pred_region["category"], m.where) == gt_name
        # over the ground-truth boxes of the evaluated images (SPEC §6): an unpredicted box is a miss, as in mAP
        matched = {(m.image, m.gt_region.get("id")) for m in matches}
        records = {m.image: m.gt_record for m in matches}
        unpredicted = sum(1 for key, record in records.items() for region in record.get("regions", [])
                          if region.get("category") is not None and (key, region.get("id")) not in matched)
        total = len(matches) + unpredicted
        report = {"accuracy": percent(correct / total) if total else None}
        if with_scores:
            report.update(self._coco_map(matches))
        else:
            report.update(map=None, map_50=None, map_75=None,
                          notes="no 'categories' class scores in the predictions: box mAP needs them "
                                "(dynrefer describe --all-scores)")
        report.update(num_regions=len(matches), num_images=len({m.image for m in matches}), **missing)
        return report

    def _coco_map(self, matches) -> dict:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        images = {}
        for m in matches:
            images.setdefault(m.image, m.gt_record)
        classes: dict[str, int] = {}
        anns, ann_ids = [], {}
        for img_id, (key, record) in enumerate(images.items(), 1):
            gwhat = where(self.ground_truth_name, key)
            size = image_size(record, gwhat)
            for region in record.get("regions", []):
                name = region.get("category")
                if name is None:
                    continue
                rwhat = f"{gwhat}, region {region.get('id')!r}"
                if not isinstance(name, str):
                    raise InputError(f"{rwhat}: 'category' must be a class name, got {name!r}")
                if region.get("box") is None:
                    raise InputError(f"{rwhat}: missing field 'box'")
                x1, y1, x2, y2 = check_box(region["box"], size, rwhat, clip=True)
                cat = classes.setdefault(name, len(classes) + 1)
                ann_ids[(key, region.get("id"))] = len(anns) + 1
                anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat,
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                             "iscrowd": int(bool(region.get("iscrowd", 0)))})
        image_ids = {key: i for i, key in enumerate(images, 1)}
        dets = {}  # (image id, class id) -> [(score, bbox)]
        for m in matches:
            scores = _class_scores(m.pred_region["categories"], m.where)
            absent = [c for c in classes if c not in scores]
            if absent:
                raise InputError(f"{m.where}: no score for class {absent[0]!r} in 'categories' (it must list "
                                 "every class, names verbatim)")
            bbox = anns[ann_ids[(m.image, m.gt_region["id"])] - 1]["bbox"]
            for name, cat in classes.items():
                dets.setdefault((image_ids[m.image], cat), []).append((scores[name], bbox))
        results = []
        for (img_id, cat), items in dets.items():
            items.sort(key=lambda x: -x[0])  # COCOeval keeps the 100 best per image and class anyway
            results += [{"image_id": img_id, "category_id": cat, "bbox": list(b), "score": s}
                        for s, b in items[:_MAX_DETS]]
        if not anns or not results:
            return {"map": None, "map_50": None, "map_75": None, "notes": "no ground-truth boxes with a category"}
        dataset = {"images": [{"id": i} for i in image_ids.values()], "annotations": anns,
                   "categories": [{"id": c, "name": n} for n, c in classes.items()]}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            gt = COCO()
            gt.dataset = dataset
            gt.createIndex()
            dt = gt.loadRes(results)
            ev = COCOeval(gt, dt, iouType="bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats = [None if v < 0 else percent(v) for v in ev.stats[:3]]
        return {"map": stats[0], "map_50": stats[1], "map_75": stats[2]}


def evaluate_recognition(predictions, ground_truth, *, strict: bool = False, split: str | None = None) -> dict:
    """Function form of :class:`RecognitionEvaluator` on lists of JSONL records."""
    evaluator = RecognitionEvaluator(strict=strict, split=split)
    evaluator.process(predictions, ground_truth)
    return evaluator.evaluate()
