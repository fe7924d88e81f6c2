"""``dynrefer evaluate``: JSON reports on stdout / --out, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import shutil

import pytest

from dynrefer.cli import main

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="METEOR and the PTB tokenizer need Java")

GT = [
    {"image": "images/a.jpg", "width": 100, "height": 80, "split": "test", "regions": [
        {"id": 0, "box": [0, 0, 40, 40], "captions": ["a red car on the street"], "category": "car",
         "attributes": ["color:red"], "negative_attributes": ["color:blue/navy"]},
        {"id": 1, "box": [50, 20, 90, 70], "captions": ["a man in a blue shirt"], "category": "person",
         "attributes": ["color:blue/navy"], "negative_attributes": ["color:red"]}]},
    {"image": "images/b.jpg", "width": 60, "height": 60, "split": "test", "regions": [
        {"id": 0, "box": [10, 10, 50, 50], "captions": ["green tree"], "category": "tree",
         "attributes": [], "negative_attributes": ["color:red", "color:blue/navy"]}]},
]
ATTRIBUTES = [
    {"id": 0, "name": "color:red", "type": "color", "parent_type": "color", "is_has_att": "is", "freq_set": "head"},
    {"id": 1, "name": "color:blue/navy", "type": "color", "parent_type": "color", "is_has_att": "is",
     "freq_set": "tail"},
]
CLASSES = ["car", "person", "tree"]


def perfect_predictions():
    preds = []
    for g in GT:
        regions = []
        for r in g["regions"]:
            regions.append({
                "id": r["id"], "box": r["box"], "caption": r["captions"][0], "caption_score": 0.5, "score": 0.5,
                "attributes": [[a["name"], 1.0 if a["name"] in r["attributes"] else 0.0] for a in ATTRIBUTES],
                "category": [r["category"], 0.9],
                "categories": [[c, 0.9 if c == r["category"] else 0.01] for c in CLASSES]})
        preds.append({"image": g["image"], "width": g["width"], "height": g["height"], "regions": regions})
    return preds


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def files(tmp_path):
    gt = write_jsonl(tmp_path / "gt.jsonl", GT)
    pred = write_jsonl(tmp_path / "pred.jsonl", perfect_predictions())
    attrs = tmp_path / "ovad_annotations.json"
    attrs.write_text(json.dumps({"images": [], "annotations": [], "attributes": ATTRIBUTES}))
    return tmp_path, pred, gt, attrs


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, out, err, *fragments):
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dynrefer: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def meteor():
    if shutil.which("java") is None:
        pytest.skip("needs Java")
    from dynrefer.metrics.meteor import shared_meteor

    return shared_meteor()


@needs_java
def test_caption(files, capsys, meteor):
    tmp, pred, gt, _ = files
    out_file = tmp / "reports" / "caption.json"
    code, out, err = run(["evaluate", "caption", "--predictions", pred, "--ground-truth", gt,
                          "--out", out_file], capsys)
    assert code == 0 and err == ""
    report = json.loads(out)
    assert report["task"] == "caption"
    assert {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider"} <= set(report)
    assert report["bleu_1"] == pytest.approx(100) and report["meteor"] > 90
    assert json.loads(out_file.read_text()) == report


@needs_java
def test_densecap_and_strict(files, capsys, meteor):
    tmp, _, gt, _ = files
    preds = perfect_predictions()[:1]  # image b has no predictions
    pred = write_jsonl(tmp / "dense.jsonl", preds)
    code, out, err = run(["evaluate", "densecap", "--predictions", pred, "--ground-truth", gt], capsys)
    assert code == 0 and err == ""
    report = json.loads(out)
    assert report["npos"] == 2 and report["map"] == pytest.approx(100) and report["det_map"] == pytest.approx(100)
    assert set(report["ap"]) == {"0.3", "0.4", "0.5", "0.6", "0.7"}
    assert set(report["ap"]["0.5"]) == {"0", "0.05", "0.1", "0.15", "0.2", "0.25"}
    code, out, err = run(["evaluate", "densecap", "--predictions", pred, "--ground-truth", gt, "--strict"], capsys)
    assert code == 0 and json.loads(out)["npos"] == 3 and json.loads(out)["map"] == pytest.approx(67.0)


def test_ovad(files, capsys):
    _, pred, gt, attrs = files
    code, out, err = run(["evaluate", "ovad", "--predictions", pred, "--ground-truth", gt,
                          "--ovad-attributes", attrs], capsys)
    assert code == 0 and err == ""
    report = json.loads(out)
    assert report["map"] == pytest.approx(100) and report["map_head"] == pytest.approx(100)
    assert report["map_medium"] is None and report["map_tail"] == pytest.approx(100)


def test_recognition(files, capsys):
    _, pred, gt, _ = files
    code, out, err = run(["evaluate", "recognition", "--predictions", pred, "--ground-truth", gt], capsys)
    assert code == 0 and err == ""
    report = json.loads(out)
    assert report["accuracy"] == pytest.approx(100) and report["map"] == pytest.approx(100)


def test_image_paths_match_across_folders(files, capsys):
    tmp, _, gt, _ = files
    preds = perfect_predictions()
    preds[0]["image"] = str(tmp / "images" / "a.jpg")  # absolute
    (tmp / "out").mkdir()
    preds[1]["image"] = "../images/b.jpg"  # relative to the predictions file
    pred = write_jsonl(tmp / "out" / "pred.jsonl", preds)
    code, out, err = run(["evaluate", "recognition", "--predictions", pred, "--ground-truth", gt], capsys)
    assert code == 0 and json.loads(out)["num_images"] == 2
    root = tmp / "root"
    preds[1]["image"] = "images/b.jpg"
    write_jsonl(pred, preds)
    code, out, err = run(["evaluate", "recognition", "--predictions", pred, "--ground-truth", gt,
                          "--image-root", tmp], capsys)
    assert code == 0, err
    code, out, err = run(["evaluate", "recognition", "--predictions", pred, "--ground-truth", gt,
                          "--image-root", root], capsys)
    assert_one_line_error(code, out, err, "a.jpg': image not in", "relative to each file's folder")


def test_split(files, capsys):
    tmp, pred, gt, _ = files
    code, out, err = run(["evaluate", "recognition", "--predictions", pred, "--ground-truth", gt,
                          "--split", "val"], capsys)
    assert_one_line_error(code, out, err, "no predicted image is in", "(split 'val')")
    # predictions over the whole file, scored on one split: the other split's images are left out and counted
    mixed = [dict(GT[0]), dict(GT[1], split="train")]
    gt2 = write_jsonl(tmp / "gt_mixed.jsonl", mixed)
    wrong = perfect_predictions()
    wrong[1]["regions"][0]["category"] = ["car", 0.9]  # image b is wrong, but it is not in the test split
    pred2 = write_jsonl(tmp / "pred_mixed.jsonl", wrong)
    code, out, err = run(["evaluate", "recognition", "--predictions", pred2, "--ground-truth", gt2,
                          "--split", "test"], capsys)
    report = json.loads(out)
    assert code == 0 and report["accuracy"] == pytest.approx(100) and report["predicted_images_of_other_splits"] == 1
    code, out, err = run(["evaluate", "recognition", "--predictions", pred2, "--ground-truth", gt2], capsys)
    assert json.loads(out)["accuracy"] == pytest.approx(200 / 3) and "predicted_images_of_other_splits" not in out
    # an image in no split of the ground truth is still an error
    stray = perfect_predictions() + [dict(perfect_predictions()[1], image="images/zzz.jpg")]
    code, out, err = run(["evaluate", "recognition", "--predictions", write_jsonl(tmp / "stray.jsonl", stray),
                          "--ground-truth", gt2, "--split", "test"], capsys)
    assert_one_line_error(code, out, err, "'images/zzz.jpg'", "image not in")


def mutate_predictions(files, change):
    tmp, _, _, _ = files
    preds = perfect_predictions()
    change(preds)
    return write_jsonl(tmp / "bad.jsonl", preds)


@pytest.mark.parametrize("task, change, fragments", [
    ("recognition", lambda p: p[0].__setitem__("image", "images/zzz.jpg"),
     ["bad.jsonl'", "'images/zzz.jpg'", "not in"]),
    ("ovad", lambda p: p[1]["regions"][0].__setitem__("id", 5), ["region 5", "region id not in"]),
    ("recognition", lambda p: p[0]["regions"][1].pop("category"), ["'images/a.jpg', region 1", "'category'"]),
    ("ovad", lambda p: p[0]["regions"][0].pop("attributes"), ["region 0", "missing field 'attributes'"]),
    ("densecap", lambda p: p[0]["regions"][1].pop("score"), ["region 1", "missing field 'score'"]),
    ("densecap", lambda p: p[0]["regions"][1].__setitem__("box", [50, 20, 40, 50]), ["region 1", "xywh"]),
    ("densecap", lambda p: p[1]["regions"][0].__setitem__("box", [10, 10, 70, 50]), ["outside the 60x60 image"]),
    ("caption", lambda p: p[0]["regions"][0].pop("caption"), ["missing field 'caption'"]),
])
def test_bad_predictions(files, capsys, task, change, fragments):
    _, _, gt, attrs = files
    pred = mutate_predictions(files, change)
    extra = ["--ovad-attributes", attrs] if task == "ovad" else []
    code, out, err = run(["evaluate", task, "--predictions", pred, "--ground-truth", gt, *extra], capsys)
    assert_one_line_error(code, out, err, *fragments)


def test_malformed_files(files, capsys):
    tmp, pred, gt, _ = files
    broken = tmp / "broken.jsonl"
    broken.write_text(json.dumps(GT[0]) + "\n{not json\n")
    code, out, err = run(["evaluate", "densecap", "--predictions", pred, "--ground-truth", broken], capsys)
    assert_one_line_error(code, out, err, "broken.jsonl", "line 2")
    code, out, err = run(["evaluate", "densecap", "--predictions", tmp / "nope.jsonl", "--ground-truth", gt], capsys)
    assert_one_line_error(code, out, err, "nope.jsonl")
    bad_attrs = tmp / "attrs.json"
    bad_attrs.write_text("[")
    code, out, err = run(["evaluate", "ovad", "--predictions", pred, "--ground-truth", gt,
                          "--ovad-attributes", bad_attrs], capsys)
    assert_one_line_error(code, out, err, "attrs.json", "not a JSON file")


def test_usage_errors(files, capsys):
    _, pred, gt, attrs = files
    code, out, err = run(["evaluate", "recognition", "--predictions", pred, "--ground-truth", gt,
                          "--ovad-attributes", attrs], capsys)
    assert_one_line_error(code, out, err, "--ovad-attributes", "only used by 'ovad'")
    code, out, err = run(["evaluate", "bleu", "--predictions", pred, "--ground-truth", gt], capsys)
    assert_one_line_error(code, out, err, "invalid choice")
    code, out, err = run(["evaluate", "caption", "--ground-truth", gt], capsys)
    assert_one_line_error(code, out, err, "--predictions")


def test_missing_java(files, capsys, monkeypatch):
    _, pred, gt, _ = files
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    code, out, err = run(["evaluate", "caption", "--predictions", pred, "--ground-truth", gt], capsys)
    assert_one_line_error(code, out, err, "captioning metrics need Java", "openjdk-17-jre-headless")
    code, out, err = run(["evaluate", "densecap", "--predictions", pred, "--ground-truth", gt], capsys)
    assert_one_line_error(code, out, err, "METEOR (pycocoevalcap's meteor-1.5.jar) needs Java")
    code, out, err = run(["evaluate", "recognition", "--predictions", pred, "--ground-truth", gt], capsys)
    assert code == 0  # no Java needed
