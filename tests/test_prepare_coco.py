"""COCO instances (region recognition) and OVAD (attributes) converters."""

from __future__ import annotations

import json

import pytest
from prepare_fixtures import dump, read_jsonl
from prepare_fixtures_coco import COCO_CATEGORIES, OVAD_ATTRIBUTES, coco_instances, ovad, write_coco
from pycocotools import mask as mask_utils

from dynrefer.errors import InputError
from dynrefer.prepare import convert_coco, convert_ovad


def _box_of(rle):
    return [float(v) for v in mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode()})]


def test_coco_records(tmp_path):
    src = write_coco(tmp_path / "annotations")
    out = tmp_path / "coco.jsonl"
    summary = convert_coco(src, out)
    assert summary["images"] == {"train": 1, "val": 2, "total": 3}
    assert summary["regions"] == {"train": 1, "val": 2, "total": 3}
    assert summary["dropped"] == {"crowd_annotations": 2, "images_without_regions": 1}
    assert summary["files"] == [str(tmp_path / "coco.categories.json")]
    assert json.loads((tmp_path / "coco.categories.json").read_text()) == COCO_CATEGORIES
    records = read_jsonl(out)
    assert [(r["image"], r["split"], r["width"], r["height"]) for r in records] == [
        ("train2017/000000000009.jpg", "train", 640, 480),
        ("val2017/000000397133.jpg", "val", 640, 427),
        ("val2017/000000037777.jpg", "val", 352, 230),
    ]
    regions = [reg for r in records for reg in r["regions"]]
    assert [(g["id"], g["box"], g["category"]) for g in regions] == [
        (1, [0.0, 0.0, 64.0, 48.0], "dog"),
        (2001, [10.0, 10.0, 50.0, 30.0], "person"),
        (2002, [1.5, 2.5, 11.5, 22.5], "car"),
    ]
    assert all(set(g) == {"id", "box", "category", "mask"} for g in regions)  # no captions / tags
    assert regions[1]["mask"]["size"] == [427, 640] and _box_of(regions[1]["mask"]) == [10.0, 10.0, 40.0, 20.0]


def test_coco_boxes_outside_the_image_and_masks_of_no_pixel(tmp_path):
    """What `dynrefer predict` would reject is not written: a box entirely outside its image is dropped
    (counted), a polygon that covers no pixel leaves the region with its box alone."""
    src = write_coco(tmp_path / "annotations")
    data = json.loads((src / "instances_val2017.json").read_text())
    image = data["images"][0]  # 640 x 427
    base = dict(data["annotations"][0], iscrowd=0)
    data["annotations"] += [
        dict(base, id=7001, image_id=image["id"], bbox=[700, 10, 20, 20],
             segmentation=[[700, 10, 720, 10, 720, 30]], area=200),
        dict(base, id=7002, image_id=image["id"], bbox=[10, 10, 0, 5], segmentation=[[10, 10, 10, 15, 10, 12]],
             area=0),
    ]
    (src / "instances_val2017.json").write_text(json.dumps(data))
    summary = convert_coco(src / "instances_val2017.json", tmp_path / "o.jsonl")
    assert summary["dropped"]["boxes_outside_image"] == 1
    regions = {g["id"]: g for r in read_jsonl(tmp_path / "o.jsonl") for g in r["regions"]}
    assert 7001 not in regions and regions[7002]["box"] == [10.0, 10.0, 10.0, 15.0] and "mask" not in regions[7002]


def test_coco_keep_crowd_split_prefix_single_file(tmp_path):
    src = write_coco(tmp_path / "annotations")
    out = tmp_path / "o.jsonl"
    summary = convert_coco(
        src / "instances_val2017.json", out, keep_crowd=True, masks=False, image_prefix="coco", split="test"
    )
    assert summary["images"] == {"test": 3, "total": 3} and summary["regions"] == {"test": 4, "total": 4}
    records = read_jsonl(out)
    assert records[0]["image"] == "coco/val2017/000000397133.jpg"
    crowd = records[0]["regions"][1]
    assert crowd == {"id": 900100, "box": [0.0, 100.0, 2.0, 120.0], "category": "person", "iscrowd": True}
    assert records[2]["regions"][0]["iscrowd"] is True


def test_coco_crowd_rle_mask(tmp_path):
    src = write_coco(tmp_path / "a")
    convert_coco(src / "instances_val2017.json", tmp_path / "o.jsonl", keep_crowd=True)
    crowd = read_jsonl(tmp_path / "o.jsonl")[0]["regions"][1]
    expected = mask_utils.frPyObjects(coco_instances("val")["annotations"][1]["segmentation"], 427, 640)
    assert crowd["mask"] == {"size": [427, 640], "counts": expected["counts"].decode()}


def test_ovad_records(tmp_path):
    src = dump(tmp_path / "ovad" / "ovad2000.json", ovad())
    out = tmp_path / "ovad.jsonl"
    summary = convert_ovad(src.parent, out, image_prefix="val2017")
    assert summary["images"] == {"test": 2, "total": 2} and summary["regions"] == {"test": 3, "total": 3}
    assert summary["files"] == [str(tmp_path / "ovad.attributes.json")]
    assert json.loads((tmp_path / "ovad.attributes.json").read_text()) == OVAD_ATTRIBUTES
    assert read_jsonl(out) == [
        {
            "image": "val2017/000000069356.jpg",
            "width": 640,
            "height": 505,
            "split": "test",
            "regions": [
                {
                    "id": 2309,
                    "box": [556.67, 159.5, 556.67 + 20.53, 159.5 + 41.09],
                    "category": "person",
                    "attributes": ["cleanliness:clean/neat", "hair color:blond"],
                    "negative_attributes": ["pattern:striped"],
                },
                {
                    "id": 2310,
                    "box": [0.0, 0.0, 100.0, 50.0],
                    "category": "car",
                    "attributes": ["color:blue/navy"],
                    "negative_attributes": ["cleanliness:clean/neat"],
                },
            ],
        },
        {
            "image": "val2017/000000001000.jpg",
            "width": 480,
            "height": 640,
            "split": "test",
            "regions": [
                {
                    "id": 2311,
                    "box": [10.0, 20.0, 40.0, 60.0],
                    "category": "person",
                    "attributes": [],
                    "negative_attributes": [],
                }
            ],
        },
    ]


def test_ovad_att_vec_indexed_by_attribute_id(tmp_path):
    data = ovad()
    data["attributes"] = list(reversed(data["attributes"]))  # file order is not id order
    convert_ovad(dump(tmp_path / "ovad2000.json", data), tmp_path / "o.jsonl")
    region = read_jsonl(tmp_path / "o.jsonl")[0]["regions"][0]
    assert region["attributes"] == ["cleanliness:clean/neat", "hair color:blond"]


def _ovad(fn):
    data = ovad()
    fn(data)
    return data


BAD_OVAD = {
    "short-att-vec": (
        lambda d: d["annotations"][1].update(att_vec=[1, 0]),
        r"annotation 2310: 'att_vec' must list 4 labels",
    ),
    "bad-label": (
        lambda d: d["annotations"][0].update(att_vec=[1, 2, 0, 0]),
        r"annotation 2309: 'att_vec' labels must be 1, 0 or -1",
    ),
    "no-att-vec": (lambda d: d["annotations"][0].pop("att_vec"), r"'annotations'\[0\] has no 'att_vec' key"),
    "no-attributes": (lambda d: d.pop("attributes"), r"the top level has no 'attributes' key"),
    "attribute-without-freq": (
        lambda d: d["attributes"][2].pop("freq_set"),
        r"'attributes'\[2\] has no 'freq_set' key",
    ),
    "attribute-ids": (lambda d: d["attributes"][0].update(id=7), r"the attribute ids must be 0 … 3"),
    "unknown-category": (lambda d: d["annotations"][2].update(category_id=0), r"annotation 2311 has category_id 0"),
    "nan-box": (
        lambda d: d["annotations"][2].update(bbox=[1, 2, 3, float("inf")]),
        r"annotation 2311: box has a NaN or infinite",
    ),
}


@pytest.mark.parametrize("case", list(BAD_OVAD))
def test_ovad_malformed(tmp_path, case):
    mutate, pattern = BAD_OVAD[case]
    src = dump(tmp_path / "ovad2000.json", _ovad(mutate))
    with pytest.raises(InputError, match=r"ovad2000\.json'.*" + pattern):
        convert_ovad(src, tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.attributes.json").exists()


BAD_COCO = {
    "unknown-category": (lambda d: d["annotations"][0].update(category_id=2), r"annotation 2001 has category_id 2"),
    "list-category": (
        lambda d: d["annotations"][0].update(category_id=[1]),
        r"annotation 2001 'category_id' must be a number or a string",
    ),
    "list-image-id": (
        lambda d: d["annotations"][1].update(image_id=[1]),
        r"annotation 900100 'image_id' must be a number or a string",
    ),
    "no-categories": (lambda d: d.pop("categories"), r"the top level has no 'categories' key"),
    "negative-box": (
        lambda d: d["annotations"][2].update(bbox=[1, 1, -0.5, 3]),
        r"annotation 2002: box has a negative width",
    ),
    "bad-rle": (
        lambda d: d["annotations"][0].update(segmentation={"counts": 5, "size": [427, 640]}),
        r"annotation 2001: malformed segmentation",
    ),
    "rle-size": (
        lambda d: d["annotations"][0].update(segmentation={"counts": "abc", "size": [10, 10]}),
        r"annotation 2001: malformed segmentation \(RLE size",
    ),
    "annotations-not-list": (lambda d: d.update(annotations=None), r"'annotations' must be a JSON array, got null"),
}


@pytest.mark.parametrize("case", list(BAD_COCO))
def test_coco_malformed(tmp_path, case):
    mutate, pattern = BAD_COCO[case]
    data = coco_instances("val")
    mutate(data)
    src = dump(tmp_path / "instances_val2017.json", data)
    with pytest.raises(InputError, match=r"instances_val2017\.json'.*" + pattern):
        convert_coco(src, tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()


def test_coco_bad_sources(tmp_path):
    out = tmp_path / "o.jsonl"
    with pytest.raises(InputError, match=r"no instances_\*\.json file in this folder"):
        convert_coco(tmp_path, out)
    odd = dump(tmp_path / "my_annotations.json", coco_instances("val"))
    with pytest.raises(InputError, match=r"cannot tell the split of '.*my_annotations\.json'.*give --split"):
        convert_coco(odd, out)
    assert convert_coco(odd, out, split="val")["regions"]["total"] == 2
    assert read_jsonl(out)[0]["image"] == "000000397133.jpg"  # no <set> folder known
    with pytest.raises(InputError, match=r"--out '.*' is a directory"):
        convert_coco(odd, tmp_path, split="val")
    (tmp_path / "instances_val2017.json").write_text('{"images": [], "annotations": [')
    with pytest.raises(InputError, match=r"instances_val2017\.json' \(COCO instances\): truncated JSON"):
        convert_coco(tmp_path / "instances_val2017.json", out)
