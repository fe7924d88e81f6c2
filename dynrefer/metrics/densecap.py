"""Dense captioning mAP (Visual Genome, SPEC §6): the official DenseCap protocol, in Python.

Per image (predicted regions need ``box`` [x1, y1, x2, y2], ``caption``, ``score``; ground-truth
regions ``box`` and ``captions``):

1. **Merge the ground truth**: repeatedly take the remaining box with the most remaining boxes at
   IoU ≥ 0.7 (itself included; the first such box on ties), replace that group by its mean box with
   all its captions as references; until no box remains.
2. **Match**: detections in decreasing ``score`` (ties: input order); each takes the merged box of
   highest IoU (the first on ties). It is a *candidate* true positive when that IoU is > 0 and the
   merged box is still unused (it becomes used); otherwise it is a false positive that keeps its IoU
   and references (none when the IoU is 0).
3. **METEOR** of each candidate's caption against its merged box's references: one batch through one
   METEOR 1.5 process (other detections can never be true positives and are not scored).

Over all images, detections in decreasing score (ties: image order, then the per-image order),
for IoU thresholds {0.3, 0.4, 0.5, 0.6, 0.7} × METEOR thresholds {0, 0.05, 0.1, 0.15, 0.2, 0.25}: a
detection is a TP iff it has references, its IoU ≥ the IoU threshold, it was a candidate and its METEOR
is **strictly greater** than the METEOR threshold. TP / FP cumulative sums, recall = TP / npos
(npos = number of merged ground-truth boxes) and precision = TP / (TP + FP), all in float32 as the
official evaluator; AP = mean over 100 recall thresholds (the float32 values of
``torch.arange(0, 1, 0.01)``) of the maximum precision at recall ≥ threshold (0 if none). ``map`` = mean
of the 30 APs, ``det_map`` = mean over the IoU thresholds of the AP without the METEOR condition.

IoU is continuous (``inter / union`` of real-valued boxes, no +1; 0 when the union is 0).
Official quirk kept by default: an image without predicted regions is skipped and its boxes are not
counted in ``npos``; ``strict=True`` counts them. The published 47.6 uses the ground-truth boxes as
the detections, scored by the caption score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import InputError
from .common import RecordEvaluator, check_box, check_number, check_regions, image_size, where, where_id

__all__ = ["DenseCaptioningEvaluator", "evaluate_densecap", "merge_ground_truth", "box_iou",
           "average_precision", "RECALL_THRESHOLDS", "IOU_THRESHOLDS", "METEOR_THRESHOLDS"]

IOU_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
METEOR_THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)
MERGE_IOU = 0.7


def _official_recall_thresholds() -> np.ndarray:
    """The float32 values of ``torch.arange(0, 1, 0.01)`` on x86 (8-wide vector blocks, scalar tail).

    Up to one ulp away from ``float32(k / 100)`` at 19 of the 100 positions; fixed here so the
    result does not depend on the platform.
    """
    i = np.arange(100)
    block = i - i % 8
    values = np.float32(np.float32(block * 0.01).astype(np.float64) + (i % 8) * 0.01)
    tail = i >= 96
    values[tail] = np.float32(i[tail] * 0.01)
    return values.astype(np.float32)


RECALL_THRESHOLDS = _official_recall_thresholds()

MeteorFn = Callable[[Sequence[tuple[str, Sequence[str]]]], Sequence[float]]


def box_iou(a, b) -> np.ndarray:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` xyxy boxes in float64 (0 where the union is 0)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def merge_ground_truth(boxes, captions: Sequence[Sequence[str]], threshold: float = MERGE_IOU):
    """Greedy merging of step 1: ``(merged boxes (K, 4) float64, [references per merged box])``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    good = box_iou(boxes, boxes) >= threshold
    np.fill_diagonal(good, True)
    remaining = np.ones(len(boxes), dtype=bool)
    counts = good.sum(axis=1).astype(np.int64)  # remaining neighbours of each remaining box, -1 once merged
    merged, refs = [], []
    while remaining.any():
        top = int(np.argmax(counts))  # the first on ties
        group = np.flatnonzero(good[top] & remaining)
        merged.append(boxes[group].mean(axis=0))
        refs.append([c for g in group for c in captions[g]])
        remaining[group] = False
        counts -= good[:, group].sum(axis=1)
        counts[group] = -1
    return np.asarray(merged, dtype=np.float64).reshape(-1, 4), refs


def average_precision(is_tp: np.ndarray, npos: int) -> float:
    """Official interpolated AP of detections already sorted by score (float32 arithmetic)."""
    is_tp = np.asarray(is_tp, dtype=bool)
    if is_tp.size == 0 or npos <= 0:
        return 0.0
    tp = np.cumsum(is_tp, dtype=np.float32)
    fp = np.cumsum(~is_tp, dtype=np.float32)
    recall = tp / np.float32(npos)
    precision = tp / (fp + tp)
    best_after = np.maximum.accumulate(precision[::-1])[::-1]  # max precision from index on
    first = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")  # recall is non-decreasing
    total = 0.0
    for idx in first:
        total += float(best_after[idx]) if idx < len(recall) else 0.0
    return total / len(RECALL_THRESHOLDS)


def _key(x: float) -> str:
    return f"{x:g}"


class DenseCaptioningEvaluator(RecordEvaluator):
    """Dense captioning mAP (see the module docstring for the protocol); report in percent.

    Args:
        meteor: callable scoring a list of ``(hypothesis, references)`` pairs, one float in [0, 1]
            each (default: the shared METEOR 1.5 process of :func:`~dynrefer.metrics.meteor.shared_meteor`).
        strict: count the ground-truth boxes of images without predictions in ``npos``.
    """

    task = "densecap"

    def __init__(self, *, meteor: MeteorFn | None = None, **kwargs):
        self.meteor = meteor
        super().__init__(**kwargs)

    def _ground_truth(self, key, gt) -> tuple[np.ndarray, list]:
        what = where(self.ground_truth_name, key)
        size = image_size(gt, what)
        boxes, captions = [], []
        for i, region in enumerate(check_regions(gt, what, need_ids=False)):
            rwhat = where_id(what, region.get("id", f"#{i}"))
            if region.get("box") is None:
                _missing(rwhat, "box")
            boxes.append(check_box(region["box"], size, rwhat, clip=True))  # VG boxes can run past the image
            caps = region.get("captions")
            if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
                raise InputError(f"{rwhat}: " + ("missing field 'captions'" if caps is None else
                                                 "'captions' must be a list of strings"))
            captions.append(caps)
        return merge_ground_truth(boxes, captions)

    def _detections(self, key, pred, size) -> list:
        what = where(self.predictions_name, key)
        out = []
        for i, region in enumerate(check_regions(pred, what, need_ids=False)):
            rwhat = where_id(what, region.get("id", f"#{i}"))
            for field in ("box", "caption", "score"):
                if region.get(field) is None:
                    _missing(rwhat, field)
            box = check_box(region["box"], size, rwhat)
            score = check_number(region["score"], f"{rwhat}: 'score'")
            if not isinstance(region["caption"], str):
                raise InputError(f"{rwhat}: 'caption' must be a string, got {region['caption']!r}")
            out.append((score, box, region["caption"], region.get("id", i)))
        return out

    def evaluate(self) -> dict:
        records = []  # (score, iou, candidate, references, caption)
        npos, num_images, skipped = 0, 0, 0
        for key, gt, pred in self._images():
            merged, refs = self._ground_truth(key, gt)
            dets = self._detections(key, pred, image_size(gt, where(self.ground_truth_name, key)))
            if not dets:
                skipped += 1
                npos += len(merged) if self.strict else 0
                continue
            num_images += 1
            npos += len(merged)
            order = sorted(range(len(dets)), key=lambda d: -dets[d][0])  # stable: ties keep input order
            ious = box_iou([dets[d][1] for d in order], merged) if len(merged) else np.zeros((len(order), 0))
            used = np.zeros(len(merged), dtype=bool)
            for row, d in enumerate(order):
                j = int(np.argmax(ious[row])) if len(merged) else -1
                iou = float(ious[row, j]) if j >= 0 else 0.0
                candidate = iou > 0 and not used[j]
                if candidate:
                    used[j] = True
                records.append((dets[d][0], iou, candidate, refs[j] if iou > 0 else [], dets[d][2]))
        for key in self._unpredicted_images():
            skipped += 1
            if self.strict:
                npos += len(self._ground_truth(key, self._gt[key])[0])
        return self._report(records, npos, num_images, skipped)

    def _report(self, records: list, npos: int, num_images: int, skipped: int) -> dict:
        scored = [i for i, r in enumerate(records) if r[2] and r[3]]
        meteor = np.zeros(len(records), dtype=np.float64)
        if scored:
            scorer = self.meteor
            if scorer is None:
                from .meteor import shared_meteor

                scorer = shared_meteor()
            values = list(scorer([(records[i][4], records[i][3]) for i in scored]))
            if len(values) != len(scored):
                raise ValueError(f"the METEOR scorer returned {len(values)} scores for {len(scored)} pairs")
            meteor[scored] = [float(v) for v in values]
        order = np.argsort(-np.asarray([r[0] for r in records], dtype=np.float64), kind="stable")
        iou = np.asarray([records[i][1] for i in order], dtype=np.float64)
        ok = np.asarray([records[i][2] and bool(records[i][3]) for i in order], dtype=bool)
        met = meteor[order]
        ap, det_ap = {}, {}
        for t_iou in IOU_THRESHOLDS:
            hit = ok & (iou >= t_iou)
            det_ap[_key(t_iou)] = average_precision(hit, npos)
            ap[_key(t_iou)] = {_key(t_m): average_precision(hit & (met > t_m), npos) for t_m in METEOR_THRESHOLDS}
        all_ap = [v for row in ap.values() for v in row.values()]
        report = {
            "map": 100.0 * sum(all_ap) / len(all_ap),
            "det_map": 100.0 * sum(det_ap.values()) / len(det_ap),
            "npos": int(npos),
            "ap": {k: {m: 100.0 * v for m, v in row.items()} for k, row in ap.items()},
            "det_ap": {k: 100.0 * v for k, v in det_ap.items()},
            "num_images": num_images,
            "num_detections": len(records),
            "unpredicted_images": skipped,
        }
        if not records:
            report["notes"] = "no predicted regions: every AP is 0"
        return report


def _missing(what: str, field: str):
    raise InputError(f"{what}: missing field '{field}'")


def evaluate_densecap(predictions, ground_truth, *, strict: bool = False, split: str | None = None,
                      meteor: MeteorFn | None = None) -> dict:
    """Function form of :class:`DenseCaptioningEvaluator` on lists of JSONL records."""
    evaluator = DenseCaptioningEvaluator(strict=strict, split=split, meteor=meteor)
    evaluator.process(predictions, ground_truth)
    return evaluator.evaluate()
