"""COCO region recognition: top-1 accuracy and box mAP from class scores (pycocotools)."""

from __future__ import annotations

import copy

import pytest

from dynrefer.errors import InputError
from dynrefer.metrics import RecognitionEvaluator, evaluate_recognition

CLASSES = ["person", "dog", "cat"]
GT = [
    {"image": "val2017/1.jpg", "width": 640, "height": 480, "split": "val", "regions": [
        {"id": 11, "box": [10, 10, 110, 210], "category": "person"},
        {"id": 12, "box": [200, 200, 300, 280], "category": "dog"}]},
    {"image": "val2017/2.jpg", "width": 320, "height": 240, "split": "val", "regions": [
        {"id": 21, "box": [0, 0, 100, 100], "category": "cat"},
        {"id": 22, "box": [150, 50, 250, 150], "category": "person"}]},
]


def predictions(score_of):
    """``score_of(gt_region, class) -> score``; ``category`` is the argmax."""
    out = []
    for g in GT:
        regions = []
        for r in g["regions"]:
            scores = [[c, score_of(r, c)] for c in CLASSES]
            best = max(scores, key=lambda x: x[1])
            regions.append({"id": r["id"], "box": r["box"], "category": best, "categories": scores})
        out.append({"image": g["image"], "width": g["width"], "height": g["height"], "regions": regions})
    return out


def test_perfect_predictions():
    report = evaluate_recognition(predictions(lambda r, c: 0.9 if c == r["category"] else 0.05), GT)
    assert report["accuracy"] == pytest.approx(100)
    assert report["map"] == pytest.approx(100) and report["map_50"] == pytest.approx(100)
    assert report["num_regions"] == 4 and report["num_images"] == 2


def test_hand_made_accuracy_and_map():
    # person: true boxes 11 (0.8) and 22 (0.3), false boxes 12 (0.6), 21 (0.1):
    #   ranking +, -, +, -  -> precision 1 at recall 0.5, 2/3 at recall 1 -> COCO 101-point AP
    #   = (51 * 1 + 50 * 2/3) / 101
    # dog: true 12 (0.9), others lower -> 1.0; cat: true 21 (0.2) below 11 (0.7) and 22 (0.4): -, -, + -> 1/3
    table = {11: {"person": 0.8, "dog": 0.1, "cat": 0.7}, 12: {"person": 0.6, "dog": 0.9, "cat": 0.0},
             21: {"person": 0.1, "dog": 0.05, "cat": 0.2}, 22: {"person": 0.3, "dog": 0.0, "cat": 0.4}}
    report = evaluate_recognition(predictions(lambda r, c: table[r["id"]][c]), GT)
    # argmax: 11 person (ok), 12 dog (ok), 21 cat (ok), 22 cat (wrong)
    assert report["accuracy"] == pytest.approx(75.0)
    person = (51 * 1 + 50 * 2 / 3) / 101
    assert report["map"] == pytest.approx(100 * (person + 1.0 + 1 / 3) / 3)


def test_without_class_scores_map_is_null():
    preds = predictions(lambda r, c: 1.0 if c == r["category"] else 0.0)
    for p in preds:
        for r in p["regions"]:
            del r["categories"]
            r["category"] = r["category"][0]  # a plain name is accepted too
    report = evaluate_recognition(preds, GT)
    assert report["accuracy"] == pytest.approx(100)
    assert report["map"] is None and "categories" in report["notes"]


def test_unpredicted_region_is_a_miss_for_map_and_accuracy():
    preds = predictions(lambda r, c: 1.0 if c == r["category"] else 0.0)
    preds[1]["regions"] = preds[1]["regions"][:1]  # region 22 (person) not predicted
    report = evaluate_recognition(preds, GT)
    # accuracy over the ground-truth boxes (SPEC §6): 3 right of 4
    assert report["accuracy"] == pytest.approx(75) and report["unpredicted_regions"] == 1
    assert report["map"] == pytest.approx(100 * (51 / 101 + 1 + 1) / 3)  # person recall tops out at 0.5
    with pytest.raises(InputError, match="no prediction for region 22"):
        evaluate_recognition(preds, GT, strict=True)


def test_batches():
    preds = predictions(lambda r, c: (r["id"] * 7 + len(c)) % 5 / 5)
    ev = RecognitionEvaluator()
    for p, g in zip(preds, GT):
        ev.process([p], [g])
    assert ev.evaluate() == evaluate_recognition(preds, GT)


@pytest.mark.parametrize("mutate, message", [
    (lambda p, g: p[0]["regions"][0].pop("category"), r"region 11: missing field 'category'"),
    (lambda p, g: p[0]["regions"][0]["categories"].pop(), r"region 11: no score for class 'cat'"),
    (lambda p, g: p[0]["regions"][1].pop("categories"), r"region 12: missing field 'categories'"),
    (lambda p, g: p[0]["regions"][0].__setitem__("category", 3), r"'category' must be \[name, score\]"),
    (lambda p, g: g[1]["regions"][0].pop("category"), r"ground truth: image 'val2017/2\.jpg', region 21: missing"),
    (lambda p, g: g[1]["regions"][1].__setitem__("box", [150, 50, 100, 100]), "xywh"),
    (lambda p, g: p[0]["regions"][0].__setitem__("id", "11"), r"region '11': region id not in ground truth"),
])
def test_bad_input(mutate, message):
    preds = predictions(lambda r, c: 0.5)
    gts = copy.deepcopy(GT)
    mutate(preds, gts)
    with pytest.raises(InputError, match=message):
        evaluate_recognition(preds, gts)


def test_ground_truth_box_past_the_image_is_clipped():
    gts = copy.deepcopy(GT)
    gts[0]["regions"][0]["box"] = [10, 10, 700, 210]  # 60 px past the 640 px edge
    report = evaluate_recognition(predictions(lambda r, c: 0.9 if c == r["category"] else 0.05), gts)
    assert report["accuracy"] == pytest.approx(100) and report["map"] == pytest.approx(100)
