"""OVAD box-oracle attribute mAP: scikit-learn's AP definition, head / medium / tail, verbatim names."""

from __future__ import annotations

import copy
import json
import math
import random

import pytest

from dynrefer.errors import InputError
from dynrefer.metrics import OVADEvaluator, evaluate_ovad, load_ovad_attributes
from dynrefer.metrics.ovad import binary_average_precision


def ref_ap(labels, scores):
    """Σ (R_n − R_{n−1}) P_n over the distinct thresholds, highest first (sklearn's definition)."""
    npos = sum(labels)
    if npos == 0:
        return float("nan")
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        tp = sum(1 for y, s in zip(labels, scores) if s >= t and y)
        fp = sum(1 for y, s in zip(labels, scores) if s >= t and not y)
        recall = tp / npos
        ap += (recall - prev_recall) * tp / (tp + fp)
        prev_recall = recall
    return ap


def test_average_precision_definition():
    # scikit-learn's documented example
    assert binary_average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8333333333333333)
    assert binary_average_precision([1, 0, 1], [0.5, 0.5, 0.5]) == pytest.approx(2 / 3)  # one tied threshold
    assert binary_average_precision([1, 1], [0.2, 0.9]) == pytest.approx(1.0)
    assert math.isnan(binary_average_precision([0, 0], [0.2, 0.9]))
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 12)
        labels = [rng.random() < 0.4 for _ in range(n)]
        scores = [rng.choice([0.1, 0.2, 0.5, rng.random()]) for _ in range(n)]
        expected = ref_ap(labels, scores)
        got = binary_average_precision(labels, scores)
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, abs=1e-12)


ATTRIBUTES = [
    {"id": 0, "name": "color:blue/navy", "type": "color", "parent_type": "color", "is_has_att": "is",
     "freq_set": "head"},
    {"id": 1, "name": "color:red", "type": "color", "parent_type": "color", "is_has_att": "is", "freq_set": "head"},
    {"id": 2, "name": "material:wooden/wood", "type": "material", "parent_type": "material", "is_has_att": "is",
     "freq_set": "medium"},
    {"id": 3, "name": "pattern:striped", "type": "pattern", "parent_type": "pattern", "is_has_att": "has",
     "freq_set": "tail"},
    {"id": 4, "name": "state:wet", "type": "state", "parent_type": "state", "is_has_att": "is", "freq_set": "tail"},
]
NAMES = [a["name"] for a in ATTRIBUTES]

GT = [
    {"image": "ovad/1.jpg", "width": 640, "height": 480, "regions": [
        {"id": 0, "box": [0, 0, 10, 10], "category": "car", "attributes": ["color:blue/navy"],
         "negative_attributes": ["color:red", "pattern:striped"]},
        {"id": 1, "box": [20, 0, 40, 10], "category": "chair", "attributes": ["color:red", "material:wooden/wood"],
         "negative_attributes": ["color:blue/navy"]},
        {"id": 2, "box": [50, 0, 70, 10], "category": "shirt", "attributes": ["pattern:striped", "color:blue/navy"],
         "negative_attributes": ["material:wooden/wood", "state:wet"]}]},
    {"image": "ovad/2.jpg", "width": 640, "height": 480, "regions": [
        {"id": 5, "box": [0, 0, 10, 10], "category": "car", "attributes": ["color:red"],
         "negative_attributes": ["color:blue/navy", "material:wooden/wood"]},
        {"id": 6, "box": [0, 0, 10, 10], "category": "table"}]},  # no attribute annotated
]


def predictions(scores):
    return [{"image": g["image"], "regions": [
        {"id": r["id"], "attributes": [[n, scores[(g["image"], r["id"], n)]] for n in NAMES]} for r in g["regions"]]}
        for g in GT]


def random_scores(seed):
    rng = random.Random(seed)
    return {(g["image"], r["id"], n): rng.choice([0.1, 0.5, rng.random()]) for g in GT for r in g["regions"]
            for n in NAMES}


def expected_report(scores):
    per = {}
    for name in NAMES:
        labels, values = [], []
        for g in GT:
            for r in g["regions"]:
                if name in r.get("attributes", []) or name in r.get("negative_attributes", []):
                    labels.append(name in r.get("attributes", []))
                    values.append(scores[(g["image"], r["id"], name)])
        per[name] = ref_ap(labels, values) if labels else float("nan")

    def mean(names):
        vals = [per[n] for n in names if not math.isnan(per[n])]
        return 100 * sum(vals) / len(vals) if vals else None

    return per, {"map": mean(NAMES),
                 "map_head": mean([a["name"] for a in ATTRIBUTES if a["freq_set"] == "head"]),
                 "map_medium": mean([a["name"] for a in ATTRIBUTES if a["freq_set"] == "medium"]),
                 "map_tail": mean([a["name"] for a in ATTRIBUTES if a["freq_set"] == "tail"])}


@pytest.mark.parametrize("seed", range(5))
def test_matches_reference(seed):
    scores = random_scores(seed)
    report = evaluate_ovad(predictions(scores), GT, attributes=ATTRIBUTES)
    per, expected = expected_report(scores)
    for key, value in expected.items():
        assert report[key] == pytest.approx(value, abs=1e-9), key
    assert report["ap"]["state:wet"] is None  # no positive: not computed, left out of the means
    assert report["map_tail"] == pytest.approx(100 * per["pattern:striped"])
    assert report["num_attributes"] == 4 and report["num_regions"] == 5


def test_perfect_scores_give_100():
    scores = {}
    for g in GT:
        for r in g["regions"]:
            for n in NAMES:
                scores[(g["image"], r["id"], n)] = 1.0 if n in r.get("attributes", []) else 0.0
    report = evaluate_ovad(predictions(scores), GT, attributes=ATTRIBUTES)
    assert report["map"] == pytest.approx(100)
    assert report["map_head"] == pytest.approx(100) and report["map_medium"] == pytest.approx(100)


def test_hand_worked():
    # color:blue/navy: positives r0 (0.9), r2 (0.3); negatives r1 (0.5), r5 (0.1)
    # ranking 0.9 +, 0.5 -, 0.3 +, 0.1 -: AP = 0.5 * 1 + 0.5 * 2/3
    scores = {k: 0.5 for k in random_scores(0)}
    scores.update({("ovad/1.jpg", 0, "color:blue/navy"): 0.9, ("ovad/1.jpg", 1, "color:blue/navy"): 0.5,
                   ("ovad/1.jpg", 2, "color:blue/navy"): 0.3, ("ovad/2.jpg", 5, "color:blue/navy"): 0.1})
    report = evaluate_ovad(predictions(scores), GT, attributes=ATTRIBUTES)
    assert report["ap"]["color:blue/navy"] == pytest.approx(100 * (0.5 + 0.5 * 2 / 3))
    # color:red: r1 +, r5 +, r0 -: all tied at 0.5 -> one threshold, precision 2/3
    assert report["ap"]["color:red"] == pytest.approx(100 * 2 / 3)


def test_metadata_sources(tmp_path):
    annotation = tmp_path / "ova_anno.json"
    annotation.write_text(json.dumps({"images": [], "annotations": [], "attributes": ATTRIBUTES}))
    only_list = tmp_path / "attributes.json"
    only_list.write_text(json.dumps(ATTRIBUTES))
    assert load_ovad_attributes(annotation) == ATTRIBUTES == load_ovad_attributes(only_list)
    scores = random_scores(3)
    a = evaluate_ovad(predictions(scores), GT, attributes=str(annotation))
    b = evaluate_ovad(predictions(scores), GT, attributes=ATTRIBUTES)
    assert a == b
    no_meta = evaluate_ovad(predictions(scores), GT)
    assert no_meta["map"] == pytest.approx(a["map"]) and no_meta["map_head"] is None and "notes" in no_meta
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(InputError, match="'attributes' key"):
        load_ovad_attributes(bad)
    bad.write_text(json.dumps([{"name": "x", "freq_set": "rare"}]))
    with pytest.raises(InputError, match="freq_set 'rare'"):
        load_ovad_attributes(bad)
    with pytest.raises(InputError, match="cannot read"):
        load_ovad_attributes(tmp_path / "missing.json")


def test_batches():
    scores = random_scores(4)
    ev = OVADEvaluator(attributes=ATTRIBUTES)
    preds = predictions(scores)
    ev.process(preds[:1], GT[:1])
    ev.process(preds[1:], GT[1:])
    assert ev.evaluate() == evaluate_ovad(preds, GT, attributes=ATTRIBUTES)


def _drop_score(preds, gts):
    preds[0]["regions"][2]["attributes"] = [a for a in preds[0]["regions"][2]["attributes"] if a[0] != "state:wet"]


@pytest.mark.parametrize("mutate, message", [
    (_drop_score, r"image 'ovad/1\.jpg', region 2: no score for attribute 'state:wet'"),
    (lambda p, g: g[0]["regions"][0]["attributes"].append("blue"),
     r"attribute 'blue' is not in the OVAD attribute list"),
    (lambda p, g: p[0]["regions"][0].pop("attributes"), r"region 0: missing field 'attributes'"),
    (lambda p, g: p[0]["regions"][0].__setitem__("attributes", [["color:red", "high"]]), "must be a finite number"),
    (lambda p, g: p[0]["regions"][0].__setitem__("attributes", ["color:red"]), r"must be \[\[name, score\]"),
    (lambda p, g: g[0]["regions"][0]["negative_attributes"].append("color:blue/navy"), "both positive and negative"),
    (lambda p, g: p[1]["regions"][0].__setitem__("id", 7), r"region 7: region id not in ground truth"),
])
def test_bad_input(mutate, message):
    preds, gts = predictions(random_scores(1)), copy.deepcopy(GT)
    mutate(preds, gts)
    with pytest.raises(InputError, match=message):
        evaluate_ovad(preds, gts, attributes=ATTRIBUTES)
