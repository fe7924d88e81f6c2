"""The files that define the reported region-captioning protocols (GLaMM's evaluation files)
→ project JSONL. Reported CIDEr / METEOR are only comparable on these.

``glamm-refcocog`` — ``finetune_refcocog_val_captions.json`` (GLaMM's
``RefCoco_Reg/mdetr_annotations``; the MDETR RefCOCOg val split with captions added). COCO
style, one *sample* per ``images`` entry: ``id`` (the sample id, which GLaMM's evaluator keys
predictions by), ``file_name`` (the COCO train2014 image, ``COCO_train2014_….jpg``),
``width``, ``height``, ``caption`` (the referring expression), ``original_id`` (the COCO image
id) and MDETR token fields; ``annotations`` with ``id``, ``image_id`` (= the sample id),
``bbox`` xywh, ``caption`` (references for pycocoevalcap), ``category_id``, ``area``.
Kept: samples grouped by ``file_name`` into one record per image (split ``val``); one region
per sample — ``id`` = the sample id, ``box`` = the bbox of the sample's annotation (the one
whose id equals the sample id, as GLaMM's inference reads it, else the first), float xyxy;
``captions`` = the captions of the sample's annotations (the sample's ``caption`` when they
have none), normalised — exactly the references GLaMM's pycocoevalcap call uses. Several
samples describe the same object with different expressions: they stay separate regions
with the same box, one reference each, as in the protocol. Samples without an annotation
are dropped (counted).

``glamm-vg`` — ``test_caption.json`` (GLaMM's Visual Genome region-captioning test file,
one region per image). COCO style: ``images`` (``id``, ``file_name`` = ``<VG id>.jpg``,
``width``, ``height``), ``annotations`` (``id``, ``image_id``, ``bbox`` xywh, ``caption``,
``area``). Kept: one record per image (split ``test``), one region per annotation — ``id`` =
annotation id, ``box`` float xyxy, ``captions`` = ``[caption]`` normalised. Images without
annotations are dropped (counted).
"""

from __future__ import annotations

from ..errors import InputError
from .cocofmt import CocoFile
from .common import (
    RecordSet,
    Summary,
    caption_fields,
    check_split,
    expect_type,
    image_path,
    image_size,
    progress,
    source_file,
    write_output,
    xywh_to_xyxy,
)

GLAMM_REFCOCOG = "finetune_refcocog_val_captions.json"
GLAMM_VG = "test_caption.json"


def _caption(entry: dict, path, where: str) -> str:
    return expect_type(entry["caption"], str, path, f"{where} 'caption'")


def convert_glamm_refcocog(
    src, out, *, file: str = GLAMM_REFCOCOG, split: str = "val", image_prefix: str = "", tagger: str = "auto"
) -> dict:
    """Convert GLaMM's RefCOCOg validation captions (``src`` = the file or its folder)."""
    summary = Summary("glamm-refcocog", out, tagger)
    path = source_file(src, file, what="GLaMM RefCOCOg captions")
    coco = CocoFile(path, "GLaMM RefCOCOg captions", image_keys=("id", "file_name", "width", "height"))
    check_split(split, "--split", "the split")
    recs = RecordSet(path)
    for sample_id, img in progress(coco.images.items(), "glamm-refcocog samples", total=len(coco.images)):
        where = f"image (sample) {sample_id!r}"
        anns = coco.anns.get(sample_id, [])
        if not anns:
            summary.drop("samples_without_annotation")
            continue
        box_ann = next((a for a in anns if a["id"] == sample_id), anns[0])
        refs = [_caption(a, path, f"annotation {a['id']!r}") for a in anns if "caption" in a]
        if not refs:
            if "caption" not in img:
                raise InputError(f"'{path}': {where} has no 'caption', nor have its annotations")
            refs = [_caption(img, path, where)]
        width, height = image_size(img, path, where)
        region = {"id": sample_id, "box": xywh_to_xyxy(box_ann["bbox"], path, f"annotation {box_ann['id']!r}")}
        region.update(caption_fields(refs))
        record = recs.add_image(image_path(coco.file_name(img), image_prefix), width, height, split)
        recs.add_region(record, region, where)
    return write_output(out, recs.records(), summary)


def convert_glamm_vg(
    src, out, *, file: str = GLAMM_VG, split: str = "test", image_prefix: str = "", tagger: str = "auto"
) -> dict:
    """Convert GLaMM's Visual Genome region-captioning test file (``src`` = the file or its folder)."""
    summary = Summary("glamm-vg", out, tagger)
    path = source_file(src, file, what="GLaMM VG test captions")
    coco = CocoFile(
        path,
        "GLaMM VG test captions",
        ann_keys=("id", "image_id", "bbox", "caption"),
        image_keys=("id", "file_name", "width", "height"),
    )
    check_split(split, "--split", "the split")
    recs = RecordSet(path)
    for image_id, img in progress(coco.images.items(), "glamm-vg images", total=len(coco.images)):
        anns = coco.anns.get(image_id, [])
        if not anns:
            summary.drop("images_without_annotation")
            continue
        width, height = image_size(img, path, f"image {image_id!r}")
        record = recs.add_image(image_path(coco.file_name(img), image_prefix), width, height, split)
        for ann in anns:
            where = f"annotation {ann['id']!r}"
            region = {"id": ann["id"], "box": xywh_to_xyxy(ann["bbox"], path, where)}
            region.update(caption_fields([_caption(ann, path, where)]))
            recs.add_region(record, region, where)
    return write_output(out, recs.records(), summary)
