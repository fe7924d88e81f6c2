"""COCO instances (region recognition) and OVAD (open-vocabulary attributes) → project JSONL.

``coco`` — COCO ``instances_<set>.json`` files (e.g. ``instances_val2017.json``): ``images``
(``id``, ``file_name``, ``width``, ``height``), ``annotations`` (``id``, ``image_id``, ``bbox``
xywh, ``category_id``, ``segmentation`` polygons or RLE, ``iscrowd``), ``categories`` (``id``,
``name``, ``supercategory``). ``src`` is the file or a folder whose ``instances_*.json`` are
all converted. Split: from the file name (``instances_train2017`` → ``train``,
``instances_val2014`` → ``val``) or ``split``. Kept: one record per image with at least one
kept annotation (``image`` = ``<set>/<file_name>``, e.g. ``val2017/000000397133.jpg``, the
layout of COCO's archives); one region per annotation — ``id`` = annotation id, ``box`` float
xyxy, ``category`` = name, ``mask`` (compressed RLE; off with ``masks=False``). Crowd
annotations (``iscrowd`` = 1) are excluded and counted, or kept with ``"iscrowd": true``
when ``keep_crowd``. No captions or tags. Also writes ``OUT.categories.json``: the
``categories`` list (``id``, ``name``, ``supercategory``), the class vocabulary.

``ovad`` — the OVAD annotation JSON (``ovad2000.json``; COCO val2017 images): COCO-style
``images`` / ``annotations`` / ``categories`` plus ``attributes``, a list of ``{"id", "name"
(e.g. ``color:blue/navy``), "type", "parent_type", "is_has_att", "freq_set"}``; each
annotation has ``att_vec``, one label per attribute indexed by attribute ``id`` (1 positive,
0 negative, −1 unannotated). Kept: one record per image (``image`` = ``file_name``, split
``test``), one region per annotation — ``id``, ``box`` float xyxy, ``category``,
``attributes`` (positive names, in attribute order), ``negative_attributes`` (negative
names), ``mask`` when the annotation has a segmentation. Also writes
``OUT.attributes.json``: the ``attributes`` list verbatim, the metadata the evaluator needs.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError
from .cocofmt import CocoFile
from .common import (
    RecordSet,
    Summary,
    check_split,
    expect_type,
    image_path,
    image_size,
    list_of_objects,
    progress,
    require,
    sidecar_path,
    source_file,
    write_json_atomic,
    write_output,
    xywh_to_xyxy,
)
from .masks import segmentation_to_rle

OVAD = "ovad2000.json"
ATTRIBUTE_KEYS = ("name", "type", "parent_type", "is_has_att", "freq_set")
_INSTANCES = re.compile(r"^instances_((train|val|test)\d*)\.json$")


def _coco_files(src) -> list[Path]:
    src = Path(src)
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise InputError(f"--src '{src}': no such file or directory")
    # not the sidecars a converter writes beside its output (OUT.categories.json, OUT.attributes.json)
    files = sorted(f for f in src.glob("instances_*.json")
                   if not f.name.endswith((".categories.json", ".attributes.json")))
    if not files:
        raise InputError(f"--src '{src}': no instances_*.json file in this folder")
    return files


def _add_mask(region: dict, ann: dict, size: tuple[int, int], path, where: str) -> None:
    rle = segmentation_to_rle(ann.get("segmentation"), size[0], size[1], path, where)
    if rle is not None:
        region["mask"] = rle


def convert_coco(
    src, out, *, split: str | None = None, image_prefix: str = "", keep_crowd: bool = False, masks: bool = True
) -> dict:
    """Convert COCO instances files (region recognition ground truth); see the module doc."""
    summary = Summary("coco", out)
    if split is not None:
        check_split(split, "--split", "the split")
    categories: dict = {}
    all_records: list[dict] = []
    for path in _coco_files(src):
        match = _INSTANCES.match(path.name)
        file_split = split or (match.group(2) if match else None)
        if file_split is None:
            raise InputError(
                f"cannot tell the split of '{path}' from its name "
                "(expected instances_<train|val|test>*.json); give --split"
            )
        folder = match.group(1) if match else ""
        coco = CocoFile(path, "COCO instances", image_keys=("id", "file_name", "width", "height"), need_categories=True)
        for cat in coco.data["categories"]:
            categories.setdefault(cat["id"], {k: cat[k] for k in ("id", "name", "supercategory") if k in cat})
        recs = RecordSet(path)
        for image_id, img in progress(coco.images.items(), f"coco {path.name}", total=len(coco.images)):
            size = image_size(img, path, f"image {image_id!r}")
            name = image_path(coco.file_name(img), folder)
            record = recs.add_image(image_path(name, image_prefix), size[0], size[1], file_split)
            for ann in coco.anns.get(image_id, []):
                where = f"annotation {ann['id']!r}"
                crowd = bool(ann.get("iscrowd", 0))
                if crowd and not keep_crowd:
                    summary.drop("crowd_annotations")
                    continue
                region = {
                    "id": ann["id"],
                    "box": xywh_to_xyxy(ann["bbox"], path, where),
                    "category": coco.category(ann),
                }
                if crowd:
                    region["iscrowd"] = True
                if masks:
                    _add_mask(region, ann, size, path, where)
                recs.add_region(record, region, where)
        summary.drop("images_without_regions", recs.empty_images())
        all_records.extend(recs.records())
    cat_path = sidecar_path(out, "categories")
    summary.files.append(str(cat_path))
    result = write_output(out, all_records, summary)
    write_json_atomic(cat_path, list(categories.values()))
    return result


def _attributes(coco: CocoFile) -> list[dict]:
    path = coco.path
    atts = list_of_objects(coco.data, "attributes", path, "'attributes'")
    if not atts:
        raise InputError(f"'{path}': 'attributes' is empty")
    for i, att in enumerate(atts):
        require(att, ATTRIBUTE_KEYS, path, f"'attributes'[{i}]")
        expect_type(att["name"], str, path, f"'attributes'[{i}] 'name'")
    if all("id" in a for a in atts):
        ids = [a["id"] for a in atts]
        if any(isinstance(v, bool) or not isinstance(v, int) for v in ids) or sorted(ids) != list(range(len(atts))):
            raise InputError(f"'{path}': the attribute ids must be 0 … {len(atts) - 1}, each once")
        return sorted(atts, key=lambda a: a["id"])
    return atts


def convert_ovad(
    src, out, *, file: str = OVAD, split: str = "test", image_prefix: str = "", masks: bool = True
) -> dict:
    """Convert the OVAD annotation JSON (``src`` = the file or its folder); see the module doc."""
    summary = Summary("ovad", out)
    check_split(split, "--split", "the split")
    path = source_file(src, file, what="OVAD annotations")
    coco = CocoFile(
        path,
        "OVAD annotations",
        ann_keys=("id", "image_id", "bbox", "category_id", "att_vec"),
        image_keys=("id", "file_name", "width", "height"),
        need_categories=True,
    )
    atts = _attributes(coco)
    names = [a["name"] for a in atts]
    recs = RecordSet(path)
    for image_id, img in progress(coco.images.items(), "ovad images", total=len(coco.images)):
        size = image_size(img, path, f"image {image_id!r}")
        record = recs.add_image(image_path(coco.file_name(img), image_prefix), size[0], size[1], split)
        for ann in coco.anns.get(image_id, []):
            where = f"annotation {ann['id']!r}"
            vec = ann["att_vec"]
            if not isinstance(vec, list) or len(vec) != len(names):
                n = len(vec) if isinstance(vec, list) else type(vec).__name__
                raise InputError(
                    f"'{path}': {where}: 'att_vec' must list {len(names)} labels (one per attribute), got {n}"
                )
            if any(v not in (1, 0, -1) or isinstance(v, bool) for v in vec):
                raise InputError(f"'{path}': {where}: 'att_vec' labels must be 1, 0 or -1")
            region = {
                "id": ann["id"],
                "box": xywh_to_xyxy(ann["bbox"], path, where),
                "category": coco.category(ann),
                "attributes": [n for n, v in zip(names, vec, strict=True) if v == 1],
                "negative_attributes": [n for n, v in zip(names, vec, strict=True) if v == 0],
            }
            if masks:
                _add_mask(region, ann, size, path, where)
            recs.add_region(record, region, where)
    summary.drop("images_without_regions", recs.empty_images())
    att_path = sidecar_path(out, "attributes")
    summary.files.append(str(att_path))
    result = write_output(out, recs.records(), summary)
    write_json_atomic(att_path, coco.data["attributes"])
    return result
