"""Visual Genome converters: ``vg`` (all images, optional split file) and ``vg-densecap``."""

from __future__ import annotations

import pytest
from prepare_fixtures import densecap_splits, dump, read_jsonl, vg_image_data, vg_region_descriptions, write_vg

from dynrefer.errors import InputError
from dynrefer.prepare import convert_vg, convert_vg_densecap
from dynrefer.prepare.vg import phrase_words

CLOCK = {
    "id": 1382,
    "box": [421.0, 57.0, 503.0, 196.0],
    "captions": ["the clock is green in colour"],
    "tags": ["clock", "green", "colour"],
}
SHADE = {
    "id": 1383,
    "box": [0.0, 400.0, 800.0, 600.0],
    "captions": ["shade is along the street"],
    "tags": ["shade", "street"],
}
CLOUDS = {
    "id": 5000,
    "box": [0.0, 0.0, 799.0, 100.0],
    "captions": ["white clouds in blue sky"],
    "tags": ["white", "clouds", "blue", "sky"],
}
EMPTY = {"id": 7000, "box": [3.0, 4.0, 3.0, 9.0], "captions": [], "tags": []}  # empty phrase, zero width: kept
CAR = {"id": 8000, "box": [10.0, 10.0, 60.0, 30.0], "captions": ["a red car"], "tags": ["red", "car"]}


def test_vg_densecap_records(tmp_path):
    src = write_vg(tmp_path / "vg")
    out = tmp_path / "vg_densecap.jsonl"
    summary = convert_vg_densecap(src, out, tagger="simple")
    assert summary["images"] == {"train": 2, "val": 1, "test": 1, "total": 4}
    assert summary["regions"] == {"train": 3, "val": 1, "test": 1, "total": 5}
    assert summary["dropped"] == {"images_not_in_split": 1, "regions_over_15_words": 1, "split_images_missing": 1}
    assert read_jsonl(out) == [
        {"image": "1.jpg", "width": 800, "height": 600, "split": "train", "regions": [CLOCK, SHADE]},
        {"image": "2.jpg", "width": 800, "height": 600, "split": "val", "regions": [CLOUDS]},
        {"image": "3.jpg", "width": 640, "height": 480, "split": "train", "regions": [EMPTY]},
        {"image": "4.jpg", "width": 500, "height": 333, "split": "test", "regions": [CAR]},
    ]


def test_vg_all_images_and_options(tmp_path):
    src = write_vg(tmp_path / "vg")
    out = tmp_path / "vg.jsonl"
    summary = convert_vg(src, out, tagger="simple", url_paths=True, image_prefix="images")
    assert summary["images"] == {"unsplit": 5, "total": 5} and summary["regions"] == {"unsplit": 7, "total": 7}
    assert summary["dropped"] == {}
    records = read_jsonl(out)
    assert [r["image"] for r in records] == [
        "images/VG_100K_2/1.jpg",
        "images/VG_100K_2/2.jpg",
        "images/VG_100K/3.jpg",
        "images/VG_100K/4.jpg",
        "images/VG_100K_2/5.jpg",
    ]
    assert all("split" not in r for r in records)
    assert len(records[1]["regions"]) == 2  # no word limit by default
    # with a split file: records get their split, images in none stay without one
    summary = convert_vg(src, out, splits="densecap_splits.json", tagger="simple")
    assert summary["images"] == {"train": 2, "val": 1, "test": 1, "unsplit": 1, "total": 5}
    assert summary["dropped"] == {"images_without_split": 1, "split_images_missing": 1}
    assert read_jsonl(out)[4] == {
        "image": "5.jpg",
        "width": 100,
        "height": 100,
        "regions": [{"id": 9000, "box": [1.0, 1.0, 6.0, 6.0], "captions": ["a tree"], "tags": ["tree"]}],
    }
    # DenseCap split without the word limit
    summary = convert_vg_densecap(src, out, max_words=0, tagger="simple")
    assert summary["regions"]["val"] == 2 and "regions_over_15_words" not in summary["dropped"]


def test_vg_v1_0_keys_and_split_path(tmp_path):
    regions = vg_region_descriptions()[:1]
    for reg in regions[0]["regions"]:
        reg["id"] = reg.pop("region_id")
    meta = [dict(m, id=m.pop("image_id")) for m in vg_image_data()[:1]]
    dump(tmp_path / "vg" / "region_descriptions.json", regions)
    dump(tmp_path / "vg" / "image_data.json", meta)
    splits = dump(tmp_path / "elsewhere" / "splits.json", {"test": [1]})
    summary = convert_vg_densecap(tmp_path / "vg", tmp_path / "o.jsonl", splits=str(splits), tagger="simple")
    assert summary["regions"] == {"test": 2, "total": 2}
    assert read_jsonl(tmp_path / "o.jsonl")[0]["regions"] == [CLOCK, SHADE]


def test_phrase_words_counts_like_densecap():
    assert phrase_words("The man's hat, (red)!") == 4  # the mans hat red
    assert phrase_words("") == 0


def _mut(fn):
    def make():
        data = {"regions": vg_region_descriptions(), "meta": vg_image_data(), "splits": densecap_splits()}
        fn(data)
        return data

    return make


BAD = {
    "region-without-phrase": (
        _mut(lambda d: d["regions"][0]["regions"][1].pop("phrase")),
        r"region_descriptions\.json': image 1 regions\[1\] has no 'phrase' key",
    ),
    "region-without-id": (
        _mut(lambda d: d["regions"][0]["regions"][1].pop("region_id")),
        r"region_descriptions\.json': image 1 regions\[1\] has no 'region_id' key",
    ),
    "dict-region-id": (
        _mut(lambda d: d["regions"][0]["regions"][1].update(region_id={"a": 1})),
        r"image 1 regions\[1\] 'region_id' must be a number",
    ),
    "nan-box": (
        _mut(lambda d: d["regions"][1]["regions"][0].update(width=float("nan"))),
        r"region_descriptions\.json': image 2 region 5000: box has a NaN",
    ),
    "negative-box": (
        _mut(lambda d: d["regions"][1]["regions"][0].update(height=-2)),
        r"region_descriptions\.json': image 2 region 5000: box has a negative",
    ),
    "string-box": (
        _mut(lambda d: d["regions"][1]["regions"][0].update(x="3")),
        r"image 2 region 5000: box must be a number, got string",
    ),
    "phrase-not-str": (
        _mut(lambda d: d["regions"][0]["regions"][0].update(phrase=None)),
        r"image 1 region 1382 'phrase' must be a JSON string, got null",
    ),
    "duplicate-region": (
        _mut(lambda d: d["regions"][0]["regions"].append(dict(d["regions"][0]["regions"][0]))),
        r"image 1 region 1382 appears twice",
    ),
    "no-regions-key": (_mut(lambda d: d["regions"][0].pop("regions")), r"image 1 has no 'regions' key"),
    "image-not-in-meta": (_mut(lambda d: d["meta"].pop(0)), r"image 1 is not in '.*image_data\.json'"),
    "meta-without-size": (
        _mut(lambda d: d["meta"][0].pop("height")),
        r"image_data\.json': image 1 has no 'height' key",
    ),
    "meta-without-id": (
        _mut(lambda d: d["meta"][0].pop("image_id")),
        r"image_data\.json': entry \[0\] has no 'image_id' or 'id'",
    ),
    "regions-not-list": (
        _mut(lambda d: d.update(regions={"id": 1})),
        r"region_descriptions\.json': the top level must be a JSON array",
    ),
    "split-twice": (
        _mut(lambda d: d["splits"]["val"].append(1)),
        r"densecap_splits\.json': image 1 is in both 'train' and 'val'",
    ),
    "split-unknown": (
        _mut(lambda d: d["splits"].update(minival=[2])),
        r"densecap_splits\.json': unknown split 'minival'",
    ),
    "split-not-list": (
        _mut(lambda d: d["splits"].update(test=4)),
        r"densecap_splits\.json': 'test' must be a JSON array",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_vg_malformed(tmp_path, case):
    make, pattern = BAD[case]
    data = make()
    src = tmp_path / "vg"
    dump(src / "region_descriptions.json", data["regions"])
    dump(src / "image_data.json", data["meta"])
    dump(src / "densecap_splits.json", data["splits"])
    with pytest.raises(InputError, match=pattern):
        convert_vg_densecap(src, tmp_path / "o.jsonl", tagger="simple")
    assert not (tmp_path / "o.jsonl").exists()


def test_vg_bad_files(tmp_path):
    src = write_vg(tmp_path / "vg", splits=False)
    out = tmp_path / "o.jsonl"
    with pytest.raises(InputError, match=r"cannot read '.*densecap_splits\.json' \(split file\): no such file"):
        convert_vg_densecap(src, out, tagger="simple")
    (src / "region_descriptions.json").write_text('[{"regions": [{"region_id": 1, "phrase": "a')
    with pytest.raises(InputError, match=r"region_descriptions\.json' \(VG region descriptions\): truncated JSON"):
        convert_vg(src, out, tagger="simple")
    (src / "image_data.json").unlink()
    with pytest.raises(InputError, match=r"image_data\.json' \(VG image data\): no such file"):
        convert_vg(src, out, tagger="simple")
    with pytest.raises(InputError, match=r"not a directory"):
        convert_vg(src / "region_descriptions.json", out, tagger="simple")
    with pytest.raises(InputError, match=r"--max-words must be 0"):
        convert_vg(write_vg(tmp_path / "vg2"), out, max_words=-1, tagger="simple")
    with pytest.raises(InputError, match=r"image 1 has no usable 'url'"):
        meta = vg_image_data()
        meta[0].pop("url")
        dump(tmp_path / "vg2" / "image_data.json", meta)
        convert_vg(tmp_path / "vg2", out, url_paths=True, tagger="simple")
    assert not out.exists()


def test_split_file_with_string_ids_matches_numeric_ids(tmp_path):
    """Split files written by other tools list ids as strings ("1"); VG's files use numbers: the same images."""
    src = write_vg(tmp_path / "vg")
    dump(src / "densecap_splits.json", {k: [str(i) for i in v] for k, v in densecap_splits().items()})
    summary = convert_vg_densecap(src, tmp_path / "s.jsonl", tagger="simple")
    assert summary["images"] == {"train": 2, "val": 1, "test": 1, "total": 4}
    want = convert_vg_densecap(write_vg(tmp_path / "vg2"), tmp_path / "n.jsonl", tagger="simple")
    assert summary["dropped"] == want["dropped"]
    assert read_jsonl(tmp_path / "s.jsonl") == read_jsonl(tmp_path / "n.jsonl")


def test_split_file_of_another_dataset_is_an_error(tmp_path):
    src = write_vg(tmp_path / "vg")
    dump(src / "densecap_splits.json", {"train": [900001, 900002], "test": [900003]})
    with pytest.raises(InputError, match=r"none of its 3 image ids is in .*region_descriptions\.json.*another dataset"):
        convert_vg_densecap(src, tmp_path / "o.jsonl", tagger="simple")
    assert not (tmp_path / "o.jsonl").exists()
