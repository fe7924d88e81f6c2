"""Tag parsing (spaCy and the documented fallback) and the converters' shared helpers."""

from __future__ import annotations

import sys

import pytest

from dynrefer.errors import InputError
from dynrefer.prepare import tags as tags_mod
from dynrefer.prepare.common import sidecar_path, xywh_to_xyxy
from dynrefer.prepare.tags import STOP_WORDS, Tagger, parse_tags, simple_tags, spacy_available


@pytest.fixture
def no_spacy(monkeypatch):
    """Behave as if spaCy were not installed (None in sys.modules makes the import fail)."""
    monkeypatch.setitem(sys.modules, "spacy", None)
    monkeypatch.setattr(tags_mod, "_DEFAULT", None)


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("A red car parked on the street.", ["red", "car", "parked", "street"]),
        ("the man in the yellow coat", ["man", "yellow", "coat"]),
        ("Two dogs playing with a frisbee!", ["dogs", "playing", "frisbee"]),
        ("the woman's left hand; holding an umbrella", ["woman", "left", "hand", "holding", "umbrella"]),
        ("white clouds in blue sky, white clouds", ["white", "clouds", "blue", "sky"]),
        ("a t-shirt with a 3 on it", ["t-shirt"]),
        ("", []),
    ],
)
def test_simple_tags(caption, expected):
    assert simple_tags(caption) == expected


def test_stop_words_are_function_words():
    assert {"the", "a", "of", "is", "with", "two"} <= STOP_WORDS
    assert not {"red", "car", "man", "left", "white"} & STOP_WORDS


def test_fallback_when_spacy_is_missing(no_spacy):
    assert Tagger("auto").name == "simple"
    assert not spacy_available()
    assert parse_tags("A Red car") == ["red", "car"]
    with pytest.raises(InputError, match=r"pip install 'dynrefer\[nlp\]'.*--tagger simple"):
        Tagger("spacy")
    with pytest.raises(InputError, match=r"unknown tagger 'nltk'"):
        Tagger("nltk")


def test_tagger_union_in_order():
    tagger = Tagger("simple")
    assert tagger.tags_for(["red car", "a car on a red road", "blue sky"]) == ["red", "car", "road", "blue", "sky"]
    assert tagger("red car") == ["red", "car"]
    assert tagger.tags_for([]) == []


@pytest.mark.skipif(not spacy_available(), reason="spaCy and en_core_web_sm not installed (the 'nlp' extra)")
def test_spacy_tags_nouns_and_adjectives():
    tagger = Tagger("spacy")
    assert tagger.name == "spacy"
    assert tagger("Two dogs playing with a frisbee.") == ["dog", "frisbee"]  # lemma, no verb, no numeral
    tags = tagger("A red car parked on the street")
    assert {"red", "car", "street"} <= set(tags) and "parked" not in tags and "the" not in tags
    assert tagger.tags_for(["white clouds in blue sky", "clouds"]) == ["white", "cloud", "blue", "sky"]


def test_xywh_to_xyxy():
    assert xywh_to_xyxy([1, 2, 3, 4], "f", "a") == [1.0, 2.0, 4.0, 6.0]
    assert xywh_to_xyxy([0.5, 0, 0, 0], "f", "a") == [0.5, 0.0, 0.5, 0.0]  # zero size kept
    for bad, msg in [
        ([1, 2, 3], r"box must be \[x, y"),
        ([1, 2, float("nan"), 4], "NaN"),
        ([1, 2, -1, 4], "negative"),
        ([1e308, 2, 1e308, 4], "too large"),
        ([1, True, 1, 1], "must be a number"),
        (None, "box must be"),
    ]:
        with pytest.raises(InputError, match=r"'f': a: .*" + msg):
            xywh_to_xyxy(bad, "f", "a")


def test_sidecar_path(tmp_path):
    assert sidecar_path(tmp_path / "gt.jsonl", "attributes") == tmp_path / "gt.attributes.json"
    assert sidecar_path(tmp_path / "gt", "categories") == tmp_path / "gt.categories.json"


def test_converters_report_the_fallback_tagger(no_spacy, tmp_path, capsys):
    from prepare_fixtures import dump, glamm_vg, read_jsonl

    from dynrefer.cli import main
    from dynrefer.prepare import convert_glamm_vg

    src = dump(tmp_path / "test_caption.json", glamm_vg())
    assert convert_glamm_vg(src, tmp_path / "o.jsonl")["tagger"] == "simple"  # auto without spaCy
    assert read_jsonl(tmp_path / "o.jsonl")[0]["regions"][0]["tags"] == ["clock", "green", "colour"]
    code = main(["prepare", "glamm-vg", "--src", str(src), "--out", str(tmp_path / "p.jsonl"), "--tagger", "spacy"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'dynrefer[nlp]'" in err[0]


@pytest.mark.skipif(not spacy_available(), reason="spaCy and en_core_web_sm not installed (the 'nlp' extra)")
def test_converters_use_spacy_when_installed(tmp_path):
    from prepare_fixtures import dump, glamm_vg, read_jsonl

    from dynrefer.prepare import convert_glamm_vg

    data = glamm_vg()
    data["annotations"][0]["caption"] = "Two dogs playing with a frisbee."
    summary = convert_glamm_vg(dump(tmp_path / "test_caption.json", data), tmp_path / "o.jsonl")
    assert summary["tagger"] == "spacy"
    assert read_jsonl(tmp_path / "o.jsonl")[0]["regions"][0]["tags"] == ["dog", "frisbee"]


def test_segmentation_to_rle():
    import numpy as np
    from pycocotools import mask as mask_utils

    from dynrefer.prepare.masks import segmentation_to_rle

    m = np.zeros((7, 9), dtype=np.uint8, order="F")
    m[2:5, 3:8] = 1
    rle = mask_utils.encode(m)
    counts = rle["counts"].decode()
    assert segmentation_to_rle({"size": [7, 9], "counts": counts}, 9, 7, "f", "a") == {"size": [7, 9], "counts": counts}
    poly = segmentation_to_rle([[3, 2, 8, 2, 8, 5, 3, 5]], 9, 7, "f", "a")
    assert poly["size"] == [7, 9] and mask_utils.area({"size": [7, 9], "counts": poly["counts"].encode()}) > 0
    runs = segmentation_to_rle({"size": [7, 9], "counts": [20, 5, 38]}, 9, 7, "f", "a")
    assert runs["counts"] == mask_utils.frPyObjects({"size": [7, 9], "counts": [20, 5, 38]}, 7, 9)["counts"].decode()
    assert segmentation_to_rle([], 9, 7, "f", "a") is None
    for bad, msg in [
        ({"size": [7, 9], "counts": counts + "1"}, "add up to 7x9"),
        ({"size": [7, 9], "counts": "\x7f"}, "invalid character"),
        ({"size": [7, 9], "counts": [20, 5]}, "add up to 7x9"),
        ({"size": [7, 9], "counts": [70, -7]}, "non-negative"),
        ({"size": [9, 7], "counts": [63]}, "RLE size"),
        ([[0, 0, 1e12, 0, 5, 5]], "far outside"),
        ([[0, 0, 1, 0, float("nan"), 5]], "not a finite number"),
        ([[0, 0, 1, 0]], "at least 3"),
        ("polygon", "expected a polygon list"),
    ]:
        with pytest.raises(InputError, match=r"'f': a: malformed segmentation.*" + msg):
            segmentation_to_rle(bad, 9, 7, "f", "a")


def test_image_size_limits():
    from dynrefer.prepare.common import image_size

    assert image_size({"width": 640, "height": 480.0}, "f", "image 1") == (640, 480)
    for bad in [0, -3, 2.5, 10**20, "640", None, True]:
        with pytest.raises(InputError, match=r"'f': image 1 'width' must be"):
            image_size({"width": bad, "height": 480}, "f", "image 1")
