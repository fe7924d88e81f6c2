"""Region captioning metrics: equal to pycocoevalcap called directly, keyed by region; Java errors."""

from __future__ import annotations

import shutil

import pytest

from dynrefer.errors import InputError
from dynrefer.metrics import CaptioningEvaluator, MissingJavaError, evaluate_captioning, ptb_tokenize

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's tokenizer and METEOR need Java")

GT = [
    {"image": "coco/1.jpg", "width": 640, "height": 480, "split": "val", "regions": [
        {"id": 1, "box": [10, 10, 200, 200], "captions": ["A man riding a brown horse.", "a person on a horse"]},
        {"id": 2, "box": [300, 50, 400, 300], "captions": ["the tall tree on the right"]},
        {"id": 3, "box": [0, 300, 640, 480], "captions": ["green grass", "grassy field, sunny"]}]},
    {"image": "coco/2.jpg", "width": 500, "height": 500, "split": "val", "regions": [
        {"id": "a", "box": [0, 0, 100, 100], "captions": ["a red stop sign"]},
        {"id": "b", "box": [100, 100, 300, 300], "captions": ["white car parked by the road", "a small white car"]}]},
    {"image": "coco/3.jpg", "width": 500, "height": 500, "split": "train", "regions": [
        {"id": 1, "box": [0, 0, 100, 100], "captions": ["not evaluated"]}]},
]
PRED = [
    {"image": "coco/1.jpg", "regions": [
        {"id": 1, "caption": "a man rides a horse"},
        {"id": 2, "caption": "a big tree"},
        {"id": 3, "caption": "Green grass (field)."}]},
    {"image": "coco/2.jpg", "regions": [
        {"id": "a", "caption": "red sign"},
        {"id": "b", "caption": "a white car on the road"}]},
]


@pytest.fixture(scope="module")
def meteor():
    from dynrefer.metrics.meteor import shared_meteor

    return shared_meteor()


def pycocoevalcap_direct(preds, gts):
    """The reference: pycocoevalcap's own tokenizer and scorers on region-keyed dicts."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gt_regions = {(g["image"], r["id"]): r for g in gts for r in g["regions"]}
    refs, hyps = {}, {}
    for p in preds:
        for r in p["regions"]:
            key = len(refs)
            refs[key] = [{"caption": c} for c in gt_regions[(p["image"], r["id"])]["captions"]]
            hyps[key] = [{"caption": r["caption"]}]
    tok = PTBTokenizer()
    refs, hyps = tok.tokenize(refs), tok.tokenize(hyps)
    bleu, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
    meteor_scorer = Meteor()
    meteor, meteor_each = meteor_scorer.compute_score(refs, hyps)
    proc = meteor_scorer.meteor_p  # pycocoevalcap never closes its pipes
    proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        pipe.close()
    rouge, _ = Rouge().compute_score(refs, hyps)
    cider, _ = Cider().compute_score(refs, hyps)
    scores = {"bleu_1": bleu[0], "bleu_2": bleu[1], "bleu_3": bleu[2], "bleu_4": bleu[3], "meteor": meteor,
              "rouge_l": rouge, "cider": cider}
    return {k: 100 * v for k, v in scores.items()}, (refs, hyps, meteor_each)


@pytest.fixture(scope="module")
def direct():
    if shutil.which("java") is None:
        pytest.skip("needs Java")
    return pycocoevalcap_direct(PRED, GT)


@needs_java
def test_equals_pycocoevalcap(meteor, direct, capsys):
    expected, _ = direct
    report = evaluate_captioning(PRED, GT)
    for key, value in expected.items():
        assert report[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert report["num_regions"] == 5 and report["num_images"] == 2
    assert report["unpredicted_images"] == 1 and report["unpredicted_regions"] == 0
    assert capsys.readouterr().out == ""  # nothing printed (the CLI's stdout is the JSON report)


@needs_java
def test_batch_meteor_equals_pycocoevalcap(meteor, direct):
    _, (refs, hyps, meteor_each) = direct
    aggregate, each = meteor.score_with_aggregate([(hyps[k][0], refs[k]) for k in refs])
    assert each == pytest.approx(meteor_each, abs=0)
    assert 100 * aggregate == pytest.approx(direct[0]["meteor"], abs=0)


@needs_java
def test_tokenizer_equals_pycocoevalcap():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    texts = {1: ["A man, riding a horse!", "Isn't it \"great\"?"], "x": ["(left) side -- of the road..."],
             7: ["e.g. U.S.A."]}
    expected = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in texts.items()})
    assert ptb_tokenize(texts) == expected
    # blank texts tokenize to "" wherever they are (pycocoevalcap would shift or drop lines)
    assert ptb_tokenize({1: ["", "A dog."], 2: ["  "], 3: ["x\ny"]}) == {1: ["", "a dog"], 2: [""], 3: ["x y"]}


@needs_java
def test_several_regions_per_image_and_batches(meteor):
    """Keyed by region: splitting the records into batches or reordering images changes nothing."""
    ev = CaptioningEvaluator(split="val")
    ev.process(PRED[:1], GT[:1])
    ev.process(PRED[1:], GT[1:])
    report = ev.evaluate()
    assert report["unpredicted_images"] == 0  # the train image is not in split "val"
    one_shot = evaluate_captioning(PRED, GT)
    for key in ("bleu_1", "bleu_4", "meteor", "rouge_l", "cider"):
        assert report[key] == pytest.approx(one_shot[key], rel=1e-12)


@needs_java
def test_perfect_captions(meteor):
    preds = [{"image": g["image"], "regions": [{"id": r["id"], "caption": r["captions"][0]} for r in g["regions"]]}
             for g in GT[:2]]
    report = evaluate_captioning(preds, GT)
    assert report["bleu_1"] == pytest.approx(100) and report["rouge_l"] == pytest.approx(100)


def test_missing_java_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(MissingJavaError) as info:
        evaluate_captioning(PRED, GT)
    message = str(info.value)
    assert "METEOR" in message and "PTB tokenizer" in message and "Java" in message
    assert "apt-get install openjdk-17-jre-headless" in message


@pytest.mark.parametrize("mutate, message", [
    (lambda p, g: p[0]["regions"][0].pop("caption"), r"image 'coco/1\.jpg', region 1: missing field 'caption'"),
    (lambda p, g: p[0]["regions"][0].__setitem__("caption", 3), "'caption' must be a string"),
    (lambda p, g: p[0]["regions"][1].__setitem__("id", 99), r"region 99: region id not in ground truth"),
    (lambda p, g: p[1].__setitem__("image", "coco/9.jpg"), r"image 'coco/9\.jpg': image not in ground truth"),
    (lambda p, g: g[0]["regions"][0].pop("captions"), r"ground truth: image 'coco/1\.jpg', region 1: missing field"),
    (lambda p, g: g[0]["regions"][0].__setitem__("captions", [3]), "'captions' must be a list of strings"),
    (lambda p, g: p[0]["regions"].append({"id": 1, "caption": "x"}), r"^predictions: .*region id appears twice"),
    (lambda p, g: g[0]["regions"].append({"id": 1, "captions": ["x"]}), "region id appears twice"),
    (lambda p, g: p.append({"image": "coco/1.jpg", "regions": [{"id": 1, "caption": "x"}]}),
     "the image has two records"),
])
def test_bad_input(mutate, message):
    import copy

    preds, gts = copy.deepcopy(PRED), copy.deepcopy(GT)
    mutate(preds, gts)
    with pytest.raises(InputError, match=message):
        evaluate_captioning(preds, gts)


def test_strict_requires_every_region():
    preds = [dict(PRED[0], regions=PRED[0]["regions"][:2])]
    with pytest.raises(InputError, match=r"no prediction for region 3"):
        evaluate_captioning(preds, GT, strict=True, split="val")
    with pytest.raises(InputError, match=r"image 'coco/2\.jpg': no predictions for this image"):
        evaluate_captioning(PRED[:1], GT, strict=True, split="val")


def test_a_region_without_reference_captions_is_left_out_and_counted(meteor):
    """prepare keeps a region whose captions all normalise to nothing with ``captions: []``: it is not scored
    (no reference), the rest is, as if the region were not there."""
    import copy

    gts = copy.deepcopy(GT)
    gts[0]["regions"][1]["captions"] = []
    report = evaluate_captioning(PRED, gts)
    without = [dict(PRED[0], regions=[r for r in PRED[0]["regions"] if r["id"] != 2]), PRED[1]]
    expected = evaluate_captioning(without, GT)
    assert report["regions_without_references"] == 1 and report["num_regions"] == 4
    for key in ("bleu_1", "bleu_4", "meteor", "rouge_l", "cider"):
        assert report[key] == pytest.approx(expected[key], rel=1e-12)
    alone = [dict(PRED[0], regions=[PRED[0]["regions"][1]])]
    with pytest.raises(InputError, match="no predicted region has a reference caption"):
        evaluate_captioning(alone, gts)


def test_an_image_listed_once_per_split(meteor):
    """RefCOCOg's Google split puts refs of one image in train and val, and prepare writes a record per image and
    split (and predict one per input record): the records of an image are merged; with --split only that
    split's regions are scored, the other split's predictions left out."""
    import copy

    gts = copy.deepcopy(GT)
    first = gts[0]
    gts[0] = dict(first, regions=first["regions"][:2])
    gts.append(dict(first, split="train", regions=first["regions"][2:]))
    preds = copy.deepcopy(PRED)
    preds[0] = dict(PRED[0], regions=PRED[0]["regions"][:2])
    preds.append(dict(PRED[0], regions=PRED[0]["regions"][2:]))
    merged = evaluate_captioning(preds, gts, split=None)
    whole = evaluate_captioning(PRED, GT, split=None)
    assert merged["num_regions"] == whole["num_regions"] == 5
    assert merged["cider"] == pytest.approx(whole["cider"], rel=1e-12)
    val = evaluate_captioning(preds, gts, split="val")
    assert val["num_regions"] == 4
    only_val = [dict(PRED[0], regions=PRED[0]["regions"][:2]), PRED[1]]
    assert val["cider"] == pytest.approx(evaluate_captioning(only_val, GT, split="val")["cider"], rel=1e-12)
