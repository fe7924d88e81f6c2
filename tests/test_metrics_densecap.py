"""Dense captioning mAP (SPEC §6) against a slow, obvious reference implementation and hand-worked cases."""

from __future__ import annotations

import platform
import random
import shutil

import numpy as np
import pytest

from dynrefer.errors import InputError
from dynrefer.metrics.densecap import (
    IOU_THRESHOLDS,
    METEOR_THRESHOLDS,
    RECALL_THRESHOLDS,
    DenseCaptioningEvaluator,
    average_precision,
    evaluate_densecap,
    merge_ground_truth,
)

# --------------------------------------------------------------------------- reference (plain loops)


def ref_iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def ref_merge(boxes, captions):
    remaining = list(range(len(boxes)))
    merged = []
    while remaining:
        best, best_count = None, -1
        for i in remaining:
            count = sum(1 for j in remaining if j == i or ref_iou(boxes[i], boxes[j]) >= 0.7)
            if count > best_count:
                best, best_count = i, count
        group = [j for j in remaining if j == best or ref_iou(boxes[best], boxes[j]) >= 0.7]
        mean = [sum(boxes[j][k] for j in group) / len(group) for k in range(4)]
        merged.append((mean, [c for j in group for c in captions[j]]))
        remaining = [j for j in remaining if j not in group]
    return merged


def ref_ap(flags, npos):
    """Official AP: float32 cumulative sums, 100 float32 recall thresholds (torch.arange(0, 1, 0.01))."""
    if not flags or npos == 0:
        return 0.0
    tp = fp = np.float32(0)
    rec, prec = [], []
    for flag in flags:
        if flag:
            tp = np.float32(tp + np.float32(1))
        else:
            fp = np.float32(fp + np.float32(1))
        rec.append(np.float32(tp / np.float32(npos)))
        prec.append(np.float32(tp / np.float32(tp + fp)))
    total = 0.0
    for k in range(100):
        t = RECALL_THRESHOLDS[k]
        total += float(max([p for r, p in zip(rec, prec) if r >= t], default=np.float32(0)))
    return total / 100


def ref_densecap(predictions, ground_truth, meteor_fn, strict=False):
    gt_by_image = {r["image"]: r for r in ground_truth}
    predicted = {r["image"] for r in predictions if r["regions"]}
    records, npos = [], 0
    for pred in predictions:
        if not pred["regions"]:
            continue
        gt = gt_by_image[pred["image"]]
        merged = ref_merge([r["box"] for r in gt["regions"]], [r["captions"] for r in gt["regions"]])
        npos += len(merged)
        dets = sorted(pred["regions"], key=lambda r: -r["score"])
        used = [False] * len(merged)
        for det in dets:
            best_j, best_iou = -1, 0.0
            for j, (box, _) in enumerate(merged):
                v = ref_iou(det["box"], box)
                if best_j < 0 or v > best_iou:
                    best_j, best_iou = j, v
            ok = best_iou > 0 and not used[best_j]
            if ok:
                used[best_j] = True
            refs = merged[best_j][1] if best_iou > 0 else []
            met = meteor_fn([(det["caption"], refs)])[0] if refs else 0.0
            records.append((det["score"], best_iou, ok, refs, met))
    if strict:
        for image, gt in gt_by_image.items():
            if image not in predicted:
                npos += len(ref_merge([r["box"] for r in gt["regions"]], [r["captions"] for r in gt["regions"]]))
    records.sort(key=lambda r: -r[0])
    ap, det_ap = {}, {}
    for t_iou in IOU_THRESHOLDS:
        det_ap[t_iou] = ref_ap([bool(r[3]) and r[1] >= t_iou and r[2] for r in records], npos)
        for t_m in METEOR_THRESHOLDS:
            ap[(t_iou, t_m)] = ref_ap([bool(r[3]) and r[1] >= t_iou and r[2] and r[4] > t_m for r in records], npos)
    return {"map": 100 * sum(ap.values()) / 30, "det_map": 100 * sum(det_ap.values()) / 5, "npos": npos,
            "ap": ap, "det_ap": det_ap}


def assert_matches_reference(report, ref):
    assert report["npos"] == ref["npos"]
    assert report["map"] == pytest.approx(ref["map"], abs=1e-9)
    assert report["det_map"] == pytest.approx(ref["det_map"], abs=1e-9)
    for (t_iou, t_m), v in ref["ap"].items():
        assert report["ap"][f"{t_iou:g}"][f"{t_m:g}"] == pytest.approx(100 * v, abs=1e-9)
    for t_iou, v in ref["det_ap"].items():
        assert report["det_ap"][f"{t_iou:g}"] == pytest.approx(100 * v, abs=1e-9)


# --------------------------------------------------------------------------- fake METEOR

# Values exactly at the thresholds (0, 0.05, 0.1, ...) must not count as above them.
FAKE_VALUES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.07, 0.12, 0.6, 0.22, 1.0)


def fake_meteor(pairs):
    """Deterministic METEOR stand-in: a fixed value per (hypothesis, references) pair."""
    out = []
    for hyp, refs in pairs:
        assert refs, "pairs without references must not be scored"
        key = sum(ord(c) for c in hyp + "|".join(refs))
        out.append(FAKE_VALUES[key % len(FAKE_VALUES)])
    return out


class CountingMeteor:
    def __init__(self):
        self.calls = 0

    def __call__(self, pairs):
        self.calls += 1
        return fake_meteor(pairs)


def random_scene(seed, n_images=6, size=(200, 150)):
    rng = random.Random(seed)
    words = ["red", "car", "man", "dog", "tree", "sky", "blue", "shirt", "sign", "a", "the", "on"]
    w, h = size
    gts, preds = [], []
    for i in range(n_images):
        gt_regions = []
        for _ in range(rng.randint(1, 6)):
            x1, y1 = rng.randint(0, w - 40), rng.randint(0, h - 40)
            box = [x1, y1, x1 + rng.randint(10, 40), y1 + rng.randint(10, 40)]
            gt_regions.append({"id": len(gt_regions), "box": box,
                               "captions": [" ".join(rng.choice(words) for _ in range(3))]})
            if rng.random() < 0.4:  # a near-duplicate box: merged with it
                dup = [box[0] + 1, box[1], box[2] + 1, box[3] - 1]
                gt_regions.append({"id": len(gt_regions), "box": dup,
                                   "captions": [" ".join(rng.choice(words) for _ in range(2))]})
        gts.append({"image": f"img{i}.jpg", "width": w, "height": h, "regions": gt_regions})
        if i == 2:
            preds.append({"image": f"img{i}.jpg", "regions": []})  # an image without predictions
            continue
        if i == 4:
            continue  # an image without a prediction record
        pred_regions = []
        for g in gt_regions:
            for _ in range(rng.randint(0, 2)):  # duplicates of the same box
                dx, dy = rng.randint(-12, 12), rng.randint(-12, 12)
                b = g["box"]
                box = [max(0, b[0] + dx), max(0, b[1] + dy), min(w, b[2] + dx), min(h, b[3] + dy)]
                if box[2] <= box[0] or box[3] <= box[1]:
                    continue
                pred_regions.append({"id": len(pred_regions), "box": box,
                                     "caption": " ".join(rng.choice(words) for _ in range(3)),
                                     "score": rng.choice([0.9, 0.5, 0.5, rng.random()])})  # ties too
        pred_regions.append({"id": len(pred_regions), "box": [0, 0, 5, 5], "caption": "sky", "score": 0.3})
        preds.append({"image": f"img{i}.jpg", "width": w, "height": h, "regions": pred_regions})
    return preds, gts


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("strict", [False, True])
def test_matches_reference_implementation(seed, strict):
    preds, gts = random_scene(seed)
    report = evaluate_densecap(preds, gts, meteor=fake_meteor, strict=strict)
    assert_matches_reference(report, ref_densecap(preds, gts, fake_meteor, strict=strict))
    assert report["unpredicted_images"] == 2


def test_merging_groups_near_duplicates():
    boxes = [[0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60], [0, 0, 10, 9.5], [100, 0, 110, 10]]
    caps = [["a"], ["b"], ["c"], ["d"], ["e"]]
    merged, refs = merge_ground_truth(boxes, caps)
    assert refs == [["a", "b", "d"], ["c"], ["e"]]
    np.testing.assert_allclose(merged[0], [0, 0, 10, 28.5 / 3])
    for (mb, mr), (rb, rr) in zip(zip(merged, refs), ref_merge(boxes, caps)):
        np.testing.assert_allclose(mb, rb)
        assert mr == rr


def test_merging_takes_the_box_with_most_neighbours():
    # box 1 overlaps both 0 and 2 at IoU >= 0.7, 0 and 2 do not overlap that much: 1 wins and takes both
    boxes = [[0, 0, 10, 10], [1.5, 0, 11.5, 10], [3, 0, 13, 10]]
    merged, refs = merge_ground_truth(boxes, [["a"], ["b"], ["c"]])
    assert refs == [["a", "b", "c"]] and merged.shape == (1, 4)


def test_hand_worked_three_boxes():
    gts = [{"image": "x", "width": 100, "height": 100, "regions": [
        {"id": 0, "box": [0, 0, 10, 10], "captions": ["one"]},
        {"id": 1, "box": [50, 50, 60, 60], "captions": ["two"]}]}]
    preds = [{"image": "x", "regions": [
        {"id": 0, "box": [0, 0, 10, 10], "caption": "a", "score": 0.9},        # TP
        {"id": 1, "box": [80, 80, 90, 90], "caption": "b", "score": 0.8},      # FP (no overlap)
        {"id": 2, "box": [50, 50, 60, 60], "caption": "c", "score": 0.7}]}]    # TP, METEOR exactly 0.1
    meteor = {"a": 1.0, "c": 0.1}
    report = evaluate_densecap(preds, gts, meteor=lambda pairs: [meteor[h] for h, _ in pairs])
    # recall 0.5, 0.5, 1 / precision 1, 0.5, 2/3: thresholds 0.00..0.50 -> 1, 0.51..0.99 -> 2/3
    full = (51 * 1.0 + 49 * float(np.float32(2) / np.float32(3))) / 100
    half = 51 / 100  # METEOR 0.1 is not > 0.1: only the first detection is a TP
    assert report["npos"] == 2
    for t_iou in ("0.3", "0.5", "0.7"):
        assert report["det_ap"][t_iou] == pytest.approx(100 * full)
        assert report["ap"][t_iou]["0"] == pytest.approx(100 * full)
        assert report["ap"][t_iou]["0.05"] == pytest.approx(100 * full)
        assert report["ap"][t_iou]["0.1"] == pytest.approx(100 * half)
        assert report["ap"][t_iou]["0.25"] == pytest.approx(100 * half)
    assert report["map"] == pytest.approx(100 * (2 * full + 4 * half) / 6)
    assert report["det_map"] == pytest.approx(100 * full)
    assert list(report["ap"]) == ["0.3", "0.4", "0.5", "0.6", "0.7"]
    assert list(report["ap"]["0.3"]) == ["0", "0.05", "0.1", "0.15", "0.2", "0.25"]


def perfect_scene():
    gts = [{"image": f"i{k}", "width": 100, "height": 100, "regions": [
        {"id": j, "box": [j * 20, k * 10, j * 20 + 15, k * 10 + 30], "captions": [f"thing {j} {k}", "other"]}
        for j in range(4)]} for k in range(3)]
    preds = [{"image": g["image"], "regions": [
        {"id": r["id"], "box": r["box"], "caption": r["captions"][0], "score": 0.5 + 0.1 * r["id"]}
        for r in g["regions"]]} for g in gts]
    return preds, gts


def test_perfect_predictions_give_100():
    preds, gts = perfect_scene()
    report = evaluate_densecap(preds, gts, meteor=lambda pairs: [1.0] * len(pairs))
    assert report["map"] == pytest.approx(100) and report["det_map"] == pytest.approx(100)
    assert report["npos"] == 12 and report["num_detections"] == 12


@pytest.mark.parametrize("shift, expected_det", [(0, [100] * 5), (9, [100, 100, 100, 0, 0]), (12, [100, 100, 0, 0, 0]),
                                                  (17, [0] * 5)])
def test_shifted_boxes(shift, expected_det):
    preds, gts = perfect_scene()
    for p in preds:
        for r in p["regions"]:
            r["box"] = [r["box"][0], r["box"][1] + shift, r["box"][2], r["box"][3] + shift]
    # IoU = (30 - s) / (30 + s): 0.538 for s = 9, 0.429 for s = 12, 0.277 (< 0.3, > 0) for s = 17
    report = evaluate_densecap(preds, gts, meteor=lambda pairs: [1.0] * len(pairs))
    assert [report["det_ap"][k] for k in ("0.3", "0.4", "0.5", "0.6", "0.7")] == pytest.approx(expected_det)
    for k, v in zip(("0.3", "0.4", "0.5", "0.6", "0.7"), expected_det):
        assert list(report["ap"][k].values()) == pytest.approx([v] * 6)
    if shift == 17:
        assert report["map"] == 0 and report["det_map"] == 0


def test_ground_truth_boxes_past_the_image_are_clipped():
    """Visual Genome has regions that run past the image (DenseCap's preprocessing clamps them): the ground
    truth is clipped, so a prediction of the clipped box matches it; a prediction past the image stays an error."""
    preds, gts = perfect_scene()
    gts[0]["regions"][3]["box"] = [60, 0, 130, 30]  # 30 px past the right edge of the 100 px image
    preds[0]["regions"][3]["box"] = [60, 0, 100, 30]
    report = evaluate_densecap(preds, gts, meteor=lambda pairs: [1.0] * len(pairs))
    assert report["det_map"] == pytest.approx(100) and report["npos"] == 12
    preds[0]["regions"][3]["box"] = [60, 0, 130, 30]
    with pytest.raises(InputError, match="outside the 100x100 image"):
        evaluate_densecap(preds, gts, meteor=lambda pairs: [1.0] * len(pairs))


def test_skipped_image_rule_and_strict():
    preds, gts = perfect_scene()
    preds = preds[:2]  # the third image has no predictions
    ones = lambda pairs: [1.0] * len(pairs)  # noqa: E731
    default = evaluate_densecap(preds, gts, meteor=ones)
    assert default["npos"] == 8 and default["map"] == pytest.approx(100) and default["unpredicted_images"] == 1
    strict = evaluate_densecap(preds, gts, meteor=ones, strict=True)
    assert strict["npos"] == 12
    # recall tops out at 8/12: thresholds 0.00..0.66 -> precision 1
    assert strict["map"] == pytest.approx(67.0)


def test_batches_and_single_meteor_call():
    preds, gts = random_scene(11)
    counting = CountingMeteor()
    ev = DenseCaptioningEvaluator(meteor=counting)
    for k in range(0, len(preds), 2):
        ev.process(preds[k:k + 2], gts[k:k + 2])
    ev.process([], gts)  # the same ground truth again is harmless
    report = ev.evaluate()
    assert counting.calls == 1
    assert report == evaluate_densecap(preds, gts, meteor=fake_meteor)
    ev.reset()
    with pytest.raises(InputError, match="no prediction records"):
        ev.evaluate()


def test_average_precision_edge_cases():
    assert average_precision(np.zeros(0, bool), 5) == 0.0
    assert average_precision(np.array([True]), 0) == 0.0
    assert average_precision(np.array([False, False]), 3) == 0.0
    assert average_precision(np.array([True, True]), 2) == pytest.approx(1.0)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 torch.arange values")
def test_recall_thresholds_are_torch_arange():
    torch = pytest.importorskip("torch")
    assert RECALL_THRESHOLDS.dtype == np.float32
    np.testing.assert_array_equal(RECALL_THRESHOLDS, torch.arange(0, 1, 0.01).numpy())


@pytest.mark.parametrize("mutate, message", [
    (lambda p, g: p[0]["regions"][0].pop("score"), "missing field 'score'"),
    (lambda p, g: p[0]["regions"][0].pop("caption"), "missing field 'caption'"),
    (lambda p, g: p[0]["regions"][0].__setitem__("box", [20, 10, 15, 30]), r"xywh"),
    (lambda p, g: p[0]["regions"][0].__setitem__("box", [90, 10, 150, 30]), r"outside the 100x100 image"),
    (lambda p, g: g[0]["regions"][1].__setitem__("box", [20, 0, 10, 30]), r"xywh"),
    (lambda p, g: g[0]["regions"][1].pop("captions"), "missing field 'captions'"),
    (lambda p, g: p[0].__setitem__("image", "nope"), "image 'nope': image not in ground truth"),
    (lambda p, g: p[0].__setitem__("width", 50), "differs from the ground truth"),
])
def test_bad_input(mutate, message):
    preds, gts = perfect_scene()
    preds[0]["width"], preds[0]["height"] = 100, 100
    mutate(preds, gts)
    with pytest.raises(InputError, match=message):
        evaluate_densecap(preds, gts, meteor=fake_meteor)


# --------------------------------------------------------------------------- the real METEOR jar

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")


@pytest.fixture(scope="module")
def meteor():
    from dynrefer.metrics.meteor import shared_meteor

    return shared_meteor()


@needs_java
def test_real_meteor(meteor):
    gts = [{"image": "a", "width": 100, "height": 100, "regions": [
        {"id": 0, "box": [0, 0, 40, 40], "captions": ["a red car parked on the street"]},
        {"id": 1, "box": [50, 50, 90, 90], "captions": ["a man wearing a blue shirt"]},
        {"id": 2, "box": [0, 50, 40, 90], "captions": ["green tree"]}]}]
    preds = [{"image": "a", "regions": [
        {"id": 0, "box": [0, 0, 40, 40], "caption": "a red car on the street", "score": 0.9},
        {"id": 1, "box": [50, 50, 90, 90], "caption": "man in a blue shirt", "score": 0.8},
        {"id": 2, "box": [0, 50, 40, 90], "caption": "zebra", "score": 0.7}]}]  # METEOR exactly 0
    scores = meteor([(r["caption"], g["captions"]) for r, g in zip(preds[0]["regions"], gts[0]["regions"])])
    assert scores[2] == 0.0 and scores[0] > 0.25 and scores[1] > 0.25
    report = evaluate_densecap(preds, gts)  # the shared jar
    assert_matches_reference(report, ref_densecap(preds, gts, meteor))
    # the third detection is a TP for detection AP but never for METEOR > 0
    assert report["det_ap"]["0.5"] == pytest.approx(100)
    assert report["ap"]["0.5"]["0"] == pytest.approx(67.0)


@needs_java
def test_meteor_process_errors():
    from dynrefer.metrics import MeteorError, MeteorScorer

    scorer = MeteorScorer()
    assert scorer.score_with_aggregate([]) == (0.0, [])
    with pytest.raises(ValueError, match="no reference"):
        scorer([("a dog", [])])
    scorer._proc.kill()
    scorer._proc.wait()
    with pytest.raises(MeteorError, match="METEOR process failed"):
        scorer([("a dog", ["a dog"])])
    scorer.close()
    scorer.close()  # idempotent
    with pytest.raises(MeteorError, match="closed"):
        scorer([("a dog", ["a dog"])])
