"""Small COCO ``instances_<set>.json`` and OVAD ``ovad2000.json`` files in their public formats,
for the converter tests (see ``prepare_fixtures.py``)."""

from __future__ import annotations

from pathlib import Path

from prepare_fixtures import dump

# --------------------------------------------------------------------------- COCO
COCO_CATEGORIES = [
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "vehicle", "id": 3, "name": "car"},
    {"supercategory": "animal", "id": 18, "name": "dog"},
]


def coco_instances(split: str) -> dict:
    if split == "val":
        images = [
            {
                "license": 4,
                "file_name": "000000397133.jpg",
                "coco_url": "http://x",
                "height": 427,
                "width": 640,
                "date_captured": "2013-11-14 17:02:52",
                "flickr_url": "http://f",
                "id": 397133,
            },
            {"license": 1, "file_name": "000000037777.jpg", "height": 230, "width": 352, "id": 37777},
            {"license": 1, "file_name": "000000000139.jpg", "height": 426, "width": 640, "id": 139},
        ]
        anns = [
            {
                "segmentation": [[10.0, 10.0, 50.0, 10.0, 50.0, 30.0, 10.0, 30.0]],
                "area": 800.0,
                "iscrowd": 0,
                "image_id": 397133,
                "bbox": [10.0, 10.0, 40.0, 20.0],
                "category_id": 1,
                "id": 2001,
            },
            {
                "segmentation": {"counts": [100, 20, 300, 20, 272840], "size": [427, 640]},
                "area": 40.0,
                "iscrowd": 1,
                "image_id": 397133,
                "bbox": [0.0, 100.0, 2.0, 20.0],
                "category_id": 1,
                "id": 900100,
            },
            {
                "segmentation": [[1.5, 2.5, 11.5, 2.5, 11.5, 22.5]],
                "area": 100.0,
                "iscrowd": 0,
                "image_id": 37777,
                "bbox": [1.5, 2.5, 10.0, 20.0],
                "category_id": 3,
                "id": 2002,
            },
            {
                "segmentation": {"counts": [5, 10, 272625], "size": [426, 640]},
                "area": 10.0,
                "iscrowd": 1,
                "image_id": 139,
                "bbox": [0.0, 5.0, 1.0, 10.0],
                "category_id": 18,
                "id": 900101,
            },
        ]
    else:
        images = [{"license": 3, "file_name": "000000000009.jpg", "height": 480, "width": 640, "id": 9}]
        anns = [
            {
                "segmentation": [[0, 0, 64, 0, 64, 48]],
                "area": 1536.0,
                "iscrowd": 0,
                "image_id": 9,
                "bbox": [0.0, 0.0, 64.0, 48.0],
                "category_id": 18,
                "id": 1,
            }
        ]
    return {
        "info": {"description": "COCO 2017 Dataset"},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": [dict(c) for c in COCO_CATEGORIES],
    }


def write_coco(folder: Path) -> Path:
    dump(folder / "instances_val2017.json", coco_instances("val"))
    dump(folder / "instances_train2017.json", coco_instances("train"))
    return folder


# --------------------------------------------------------------------------- OVAD
OVAD_ATTRIBUTES = [
    {
        "id": 0,
        "name": "cleanliness:clean/neat",
        "type": "cleanliness",
        "parent_type": "cleanliness",
        "is_has_att": "is",
        "freq_set": "head",
    },
    {
        "id": 1,
        "name": "color:blue/navy",
        "type": "color",
        "parent_type": "color",
        "is_has_att": "is",
        "freq_set": "head",
    },
    {
        "id": 2,
        "name": "pattern:striped",
        "type": "pattern",
        "parent_type": "pattern",
        "is_has_att": "is",
        "freq_set": "medium",
    },
    {
        "id": 3,
        "name": "hair color:blond",
        "type": "hair color",
        "parent_type": "color",
        "is_has_att": "has",
        "freq_set": "tail",
    },
]


def ovad() -> dict:
    return {
        "info": {"description": "OVAD 2022 Dataset ovad", "version": "1.0"},
        "images": [
            {
                "id": 69356,
                "width": 640,
                "height": 505,
                "file_name": "000000069356.jpg",
                "set": "train300",
                "license": 1,
                "date_captured": "2013-11-19 18:11:52",
            },
            {"id": 1000, "width": 480, "height": 640, "file_name": "000000001000.jpg", "set": "val1700", "license": 1},
        ],
        "categories": [
            {"supercategory": "person", "isthing": 1, "id": 1, "name": "person", "ov_set": "base"},
            {"supercategory": "vehicle", "isthing": 1, "id": 3, "name": "car", "ov_set": "novel"},
        ],
        "attributes": [dict(a) for a in OVAD_ATTRIBUTES],
        "licenses": [],
        "annotations": [
            {
                "id": 2309,
                "image_id": 69356,
                "bbox": [556.67, 159.5, 20.53, 41.09],
                "area": 843.578857421875,
                "iscrowd": 0,
                "category_id": 1,
                "att_vec": [1, -1, 0, 1],
            },
            {
                "id": 2310,
                "image_id": 69356,
                "bbox": [0, 0, 100, 50],
                "area": 5000.0,
                "iscrowd": 0,
                "category_id": 3,
                "att_vec": [0, 1, -1, -1],
            },
            {
                "id": 2311,
                "image_id": 1000,
                "bbox": [10, 20, 30, 40],
                "area": 1200.0,
                "iscrowd": 0,
                "category_id": 1,
                "att_vec": [-1, -1, -1, -1],
            },
        ],
    }
