"""GLaMM's region-captioning protocol files: RefCOCOg val captions and the VG test file."""

from __future__ import annotations

import json

import pytest
from prepare_fixtures import dump, glamm_refcocog, glamm_vg, read_jsonl

from dynrefer.errors import InputError
from dynrefer.prepare import convert_glamm_refcocog, convert_glamm_vg

BOX = [103.0, 300.0, 342.0, 378.0]


def test_glamm_refcocog_records(tmp_path):
    src = dump(tmp_path / "mdetr_annotations" / "finetune_refcocog_val_captions.json", glamm_refcocog())
    out = tmp_path / "glamm_refcocog.jsonl"
    summary = convert_glamm_refcocog(src.parent, out, tagger="simple")  # the folder
    assert summary["images"] == {"val": 2, "total": 2} and summary["regions"] == {"val": 3, "total": 3}
    assert summary["dropped"] == {"samples_without_annotation": 1}
    assert read_jsonl(out) == [
        {
            "image": "COCO_train2014_000000581857.jpg",
            "width": 640,
            "height": 427,
            "split": "val",
            "regions": [
                {"id": 0, "box": BOX, "captions": ["the lady with the blue shirt"], "tags": ["lady", "blue", "shirt"]},
                {
                    "id": 1,
                    "box": BOX,
                    "captions": ["woman wearing blue smiling"],
                    "tags": ["woman", "wearing", "blue", "smiling"],
                },
            ],
        },
        {
            "image": "COCO_train2014_000000000009.jpg",
            "width": 640,
            "height": 480,
            "split": "val",
            "regions": [
                {
                    "id": 2,
                    "box": [0.5, 1.5, 30.5, 41.75],
                    "captions": ["a brown dog lying down"],
                    "tags": ["brown", "dog", "lying"],
                }
            ],
        },
    ]


def test_glamm_refcocog_captions_from_images(tmp_path):
    # annotations without 'caption': the sample's (image entry's) caption is the reference
    src = dump(tmp_path / "finetune_refcocog_val_captions.json", glamm_refcocog(ann_captions=False))
    out = tmp_path / "o.jsonl"
    convert_glamm_refcocog(src, out, tagger="simple", image_prefix="train2014/")
    records = read_jsonl(out)
    assert records[0]["image"] == "train2014/COCO_train2014_000000581857.jpg"
    assert [r["captions"] for rec in records for r in rec["regions"]] == [
        ["the lady with the blue shirt"],
        ["woman wearing blue smiling"],
        ["a brown dog lying down"],
    ]


def test_glamm_refcocog_box_of_the_sample_annotation(tmp_path):
    data = glamm_refcocog()
    extra = dict(data["annotations"][2], id=77, bbox=[1, 1, 2, 2], caption="another reference")
    data["annotations"].insert(2, extra)  # sample 2 now has two annotations; id 2 gives the box
    src = dump(tmp_path / "finetune_refcocog_val_captions.json", data)
    convert_glamm_refcocog(src, tmp_path / "o.jsonl", tagger="simple")
    region = read_jsonl(tmp_path / "o.jsonl")[1]["regions"][0]
    assert region["box"] == [0.5, 1.5, 30.5, 41.75]
    assert region["captions"] == ["another reference", "a brown dog lying down"]


def test_glamm_vg_records(tmp_path):
    src = dump(tmp_path / "test_caption.json", glamm_vg())
    out = tmp_path / "glamm_vg.jsonl"
    summary = convert_glamm_vg(tmp_path, out, tagger="simple")
    assert summary["images"] == {"test": 2, "total": 2} and summary["regions"] == {"test": 2, "total": 2}
    assert summary["dropped"] == {"images_without_annotation": 1}
    assert read_jsonl(out) == [
        {
            "image": "1.jpg",
            "width": 800,
            "height": 600,
            "split": "test",
            "regions": [
                {
                    "id": 1,
                    "box": [421.0, 57.0, 503.0, 196.0],
                    "captions": ["the clock is green in colour"],
                    "tags": ["clock", "green", "colour"],
                }
            ],
        },
        {
            "image": "107899.jpg",
            "width": 500,
            "height": 375,
            "split": "test",
            "regions": [
                {"id": 107899, "box": [10.5, 0.0, 10.5, 20.0], "captions": ["a thin pole"], "tags": ["thin", "pole"]}
            ],
        },
    ]
    assert src.is_file()


def _mut(fn):
    def make(data):
        fn(data)
        return data

    return make


BAD_REFCOCOG = {
    "no-annotations": (_mut(lambda d: d.pop("annotations")), r"the top level has no 'annotations' key"),
    "images-not-list": (_mut(lambda d: d.update(images={})), r"'images' must be a JSON array, got object"),
    "image-not-object": (_mut(lambda d: d["images"].append(3)), r"'images'\[4\] must be a JSON object, got number"),
    "image-without-size": (_mut(lambda d: d["images"][0].pop("height")), r"'images'\[0\] has no 'height' key"),
    "no-caption": (
        _mut(lambda d: [d["images"][2].pop("caption"), d["annotations"][2].pop("caption")]),
        r"image \(sample\) 2 has no 'caption'",
    ),
    "caption-not-str": (
        _mut(lambda d: d["annotations"][0].update(caption=5)),
        r"annotation 0 'caption' must be a JSON string",
    ),
    "nan-box": (
        _mut(lambda d: d["annotations"][1].update(bbox=[0, float("nan"), 1, 1])),
        r"annotation 1: box has a NaN",
    ),
    "short-box": (
        _mut(lambda d: d["annotations"][1].update(bbox=[0, 1, 1])),
        r"annotation 1: box must be \[x, y, width, height\]",
    ),
    "duplicate-image": (_mut(lambda d: d["images"].append(dict(d["images"][0]))), r"image id 0 appears twice"),
    "two-sizes": (_mut(lambda d: d["images"][1].update(width=641)), r"listed with two sizes"),
}


@pytest.mark.parametrize("case", list(BAD_REFCOCOG))
def test_glamm_refcocog_malformed(tmp_path, case):
    mutate, pattern = BAD_REFCOCOG[case]
    src = dump(tmp_path / "finetune_refcocog_val_captions.json", mutate(glamm_refcocog()))
    with pytest.raises(InputError, match=r"finetune_refcocog_val_captions\.json'.*" + pattern):
        convert_glamm_refcocog(src, tmp_path / "o.jsonl", tagger="simple")
    assert not (tmp_path / "o.jsonl").exists()


BAD_VG = {
    "no-caption": (_mut(lambda d: d["annotations"][0].pop("caption")), r"'annotations'\[0\] has no 'caption' key"),
    "negative-height": (
        _mut(lambda d: d["annotations"][1].update(bbox=[0, 0, 1, -1])),
        r"annotation 107899: box has a negative",
    ),
    "unknown-image": (_mut(lambda d: d["annotations"][1].update(image_id=5)), r"annotation 107899 refers to image 5"),
    "no-file-name": (_mut(lambda d: d["images"][0].pop("file_name")), r"'images'\[0\] has no 'file_name' key"),
    "duplicate-ann": (
        _mut(lambda d: d["annotations"].append(dict(d["annotations"][0]))),
        r"annotation id 1 appears twice",
    ),
}


@pytest.mark.parametrize("case", list(BAD_VG))
def test_glamm_vg_malformed(tmp_path, case):
    mutate, pattern = BAD_VG[case]
    src = dump(tmp_path / "test_caption.json", mutate(glamm_vg()))
    with pytest.raises(InputError, match=r"test_caption\.json'.*" + pattern):
        convert_glamm_vg(src, tmp_path / "o.jsonl", tagger="simple")


def test_glamm_bad_files(tmp_path):
    out = tmp_path / "o.jsonl"
    with pytest.raises(
        InputError, match=r"cannot read '.*test_caption\.json' \(GLaMM VG test captions\): no such file"
    ):
        convert_glamm_vg(tmp_path, out, tagger="simple")
    with pytest.raises(InputError, match=r"--src '.*nowhere': no such file or directory"):
        convert_glamm_vg(tmp_path / "nowhere", out, tagger="simple")
    path = tmp_path / "test_caption.json"
    path.write_text(json.dumps(glamm_vg())[:30])
    with pytest.raises(InputError, match=r"test_caption\.json' \(GLaMM VG test captions\): truncated JSON"):
        convert_glamm_vg(tmp_path, out, tagger="simple")
    path.write_text("")
    with pytest.raises(InputError, match=r"test_caption\.json' \(GLaMM VG test captions\): the file is empty"):
        convert_glamm_vg(tmp_path, out, tagger="simple")
    path.write_bytes(b'{"images": "\xff"}')
    with pytest.raises(InputError, match=r"test_caption\.json' \(GLaMM VG test captions\): not UTF-8"):
        convert_glamm_vg(tmp_path, out, tagger="simple")
    with pytest.raises(InputError, match=r"unknown split 'dev'"):
        convert_glamm_vg(dump(path, glamm_vg()), out, split="dev", tagger="simple")
    assert not out.exists()
