"""Small datasets written in the real public formats, for the converter tests.

Each ``write_*`` function writes the files of one dataset, laid out as distributed, into a
folder and returns the folder. Field names and nesting follow the public files: the refer
toolkit's ``refs(umd).p`` / ``instances.json``, MDETR / GLaMM's
``finetune_refcocog_val_captions.json``, GLaMM's VG ``test_caption.json``, Visual Genome
v1.2 ``region_descriptions.json`` / ``image_data.json`` and DenseCap's ``densecap_splits.json``
(COCO and OVAD: ``prepare_fixtures_coco.py``).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path


def dump(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- RefCOCOg
def refcocog_instances() -> dict:
    return {
        "info": {"description": "This is stable 1.0 version of the 2014 MS COCO dataset."},
        "images": [
            {
                "license": 1,
                "file_name": "COCO_train2014_000000581857.jpg",
                "coco_url": "http://x/581857.jpg",
                "height": 427,
                "width": 640,
                "date_captured": "2013-11-16 18:01:33",
                "flickr_url": "http://f",
                "id": 581857,
            },
            {"license": 3, "file_name": "COCO_train2014_000000000009.jpg", "height": 480, "width": 640, "id": 9},
            {"license": 3, "file_name": "COCO_train2014_000000000025.jpg", "height": 426, "width": 640, "id": 25},
        ],
        "annotations": [
            {
                "segmentation": [[103.0, 300.0, 342.0, 300.0, 342.0, 378.0, 103.0, 378.0]],
                "area": 18564.0,
                "iscrowd": 0,
                "image_id": 581857,
                "bbox": [103.0, 300.0, 239.0, 78.0],
                "category_id": 1,
                "id": 1719310,
            },
            {
                "segmentation": [[10.5, 20.0, 60.5, 20.0, 60.5, 100.0]],
                "area": 2000.0,
                "iscrowd": 0,
                "image_id": 581857,
                "bbox": [10.5, 20.0, 50.0, 80.0],
                "category_id": 1,
                "id": 1719311,
            },
            {
                "segmentation": [[0, 0, 30, 0, 30, 40, 0, 40]],
                "area": 1200.0,
                "iscrowd": 0,
                "image_id": 9,
                "bbox": [0.0, 0.0, 30.0, 40.0],
                "category_id": 18,
                "id": 7,
            },
            {
                "segmentation": [[5, 5, 25, 5, 25, 15]],
                "area": 100.0,
                "iscrowd": 0,
                "image_id": 25,
                "bbox": [5.25, 5.0, 0.0, 10.0],
                "category_id": 18,
                "id": 8,
            },
        ],
        "categories": [
            {"supercategory": "person", "id": 1, "name": "person"},
            {"supercategory": "animal", "id": 18, "name": "dog"},
        ],
    }


def _sent(sent_id: int, raw: str, sent: str | None = None) -> dict:
    out = {"tokens": raw.lower().split(), "raw": raw, "sent_id": sent_id}
    if sent is not None:
        out["sent"] = sent
    return out


def refcocog_refs() -> list:
    return [
        {
            "image_id": 581857,
            "split": "train",
            "file_name": "COCO_train2014_000000581857_16.jpg",
            "category_id": 1,
            "ann_id": 1719310,
            "sent_ids": [0, 1],
            "ref_id": 0,
            "sentences": [
                _sent(0, "The lady with the blue shirt.", "the lady with the blue shirt"),
                _sent(1, "A woman in BLUE; smiling", "a woman in blue smiling"),
            ],
        },
        {
            "image_id": 581857,
            "split": "train",
            "file_name": "COCO_train2014_000000581857_17.jpg",
            "category_id": 1,
            "ann_id": 1719311,
            "sent_ids": [2],
            "ref_id": 1,
            "sentences": [_sent(2, "Man (left) wearing a hat!")],
        },  # no 'sent': falls back to 'raw'
        {
            "image_id": 9,
            "split": "val",
            "file_name": "COCO_train2014_000000000009_7.jpg",
            "category_id": 18,
            "ann_id": 7,
            "sent_ids": [3],
            "ref_id": 5,
            "sentences": [_sent(3, "the brown dog", "the brown dog")],
        },
        {
            "image_id": 25,
            "split": "test",
            "file_name": "COCO_train2014_000000000025_8.jpg",
            "category_id": 18,
            "ann_id": 8,
            "sent_ids": [4],
            "ref_id": 6,
            "sentences": [_sent(4, "a small dog", "a small dog")],
        },
    ]


def write_refcocog(folder: Path, refs=None, instances=None, protocol: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "refs(umd).p", "wb") as fh:
        pickle.dump(refcocog_refs() if refs is None else refs, fh, protocol=protocol)
    dump(folder / "instances.json", refcocog_instances() if instances is None else instances)
    return folder


# --------------------------------------------------------------------------- GLaMM RefCOCOg
def glamm_refcocog(ann_captions: bool = True) -> dict:
    def img(i, coco_id, caption, w=640, h=427):
        return {
            "file_name": f"COCO_train2014_{coco_id:012d}.jpg",
            "height": h,
            "width": w,
            "id": i,
            "original_id": coco_id,
            "caption": caption,
            "dataset_name": "refcocog",
            "tokens_negative": [[0, len(caption)]],
            "sent_id": 100 + i,
            "tokens_positive_eval": [[[0, 3]]],
        }

    def ann(i, bbox, caption):
        out = {
            "area": bbox[2] * bbox[3],
            "iscrowd": 0,
            "image_id": i,
            "category_id": 1,
            "id": i,
            "bbox": bbox,
            "tokens_positive": [[0, 3]],
        }
        if ann_captions:
            out["caption"] = caption
        return out

    caps = ["The lady with the blue shirt.", "woman wearing blue: smiling", "A brown dog lying down", "orphan"]
    return {
        "info": {"description": "RefCOCOg val, MDETR format"},
        "licenses": [],
        "images": [img(0, 581857, caps[0]), img(1, 581857, caps[1]), img(2, 9, caps[2], 640, 480), img(3, 25, caps[3])],
        "annotations": [
            ann(0, [103.0, 300.0, 239.0, 78.0], caps[0]),
            ann(1, [103.0, 300.0, 239.0, 78.0], caps[1]),
            ann(2, [0.5, 1.5, 30.0, 40.25], caps[2]),
        ],
        "categories": [{"supercategory": "person", "id": 1, "name": "person"}],
    }


# --------------------------------------------------------------------------- GLaMM VG
def glamm_vg() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "1.jpg", "height": 600, "width": 800},
            {"id": 107899, "file_name": "107899.jpg", "height": 375, "width": 500},
            {"id": 3, "file_name": "3.jpg", "height": 100, "width": 100},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "bbox": [421, 57, 82, 139],
                "caption": "The clock is green in colour.",
                "area": 11398,
            },
            {"id": 107899, "image_id": 107899, "bbox": [10.5, 0, 0, 20], "caption": "A thin pole", "area": 0},
        ],
        "categories": [{"id": 1, "name": "object"}],
    }


# --------------------------------------------------------------------------- Visual Genome
def vg_region(region_id, image_id, phrase, x, y, w, h) -> dict:
    return {"region_id": region_id, "width": w, "height": h, "image_id": image_id, "phrase": phrase, "y": y, "x": x}


def vg_region_descriptions() -> list:
    long_phrase = "a very long phrase that goes on and on with many words about the white fluffy clouds up there"
    return [
        {
            "regions": [
                vg_region(1382, 1, "the clock is green in colour", 421, 57, 82, 139),
                vg_region(1383, 1, "Shade is along the street.", 0, 400, 800, 200),
            ],
            "id": 1,
        },
        {
            "regions": [
                vg_region(5000, 2, "white clouds in blue sky", 0, 0, 799, 100),
                vg_region(5001, 2, long_phrase, 5, 5, 10, 10),
            ],
            "id": 2,
        },
        {"regions": [vg_region(7000, 3, "", 3, 4, 0, 5)], "id": 3},
        {"regions": [vg_region(8000, 4, "a red car", 10, 10, 50, 20)], "id": 4},
        {"regions": [vg_region(9000, 5, "a tree", 1, 1, 5, 5)], "id": 5},
    ]


def vg_image_data() -> list:
    def meta(i, w, h, folder="VG_100K_2"):
        return {
            "width": w,
            "url": f"https://cs.stanford.edu/people/rak248/{folder}/{i}.jpg",
            "height": h,
            "image_id": i,
            "coco_id": None,
            "flickr_id": None,
        }

    return [
        meta(1, 800, 600),
        meta(2, 800, 600),
        meta(3, 640, 480, "VG_100K"),
        meta(4, 500, 333, "VG_100K"),
        meta(5, 100, 100),
    ]


def densecap_splits() -> dict:
    return {"train": [1, 3], "val": [2], "test": [4, 99]}  # 5 is in no split, 99 has no regions


def write_vg(folder: Path, splits: bool = True) -> Path:
    dump(folder / "region_descriptions.json", vg_region_descriptions())
    dump(folder / "image_data.json", vg_image_data())
    if splits:
        dump(folder / "densecap_splits.json", densecap_splits())
    return folder


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
