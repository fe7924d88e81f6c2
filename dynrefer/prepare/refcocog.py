"""RefCOCOg (refer toolkit files) → project JSONL, every split in one file.

Source folder (as the refer toolkit distributes ``refcocog.zip``):

* ``refs(umd).p`` — a pickle: a list of refs, each a dict with ``ref_id``, ``ann_id``,
  ``image_id``, ``split`` (``train`` / ``val`` / ``test`` for the umd split; ``refs(google).p``
  has ``train`` / ``val``), ``sentences`` (a list of dicts with ``sent`` — the cleaned, lower
  case sentence — ``raw``, ``tokens``, ``sent_id``), ``category_id``, ``sent_ids``,
  ``file_name``. Read with :class:`~dynrefer.prepare.safe_pickle.PlainUnpickler`: a pickle
  that references any class or function is refused.
* ``instances.json`` — COCO-style: ``images`` (``id``, ``file_name`` like
  ``COCO_train2014_000000581857.jpg``, ``width``, ``height``), ``annotations`` (``id``,
  ``image_id``, ``bbox`` xywh, ``segmentation`` polygons, ``category_id``), ``categories``.

Kept: one region per ref — ``id`` = ``ref_id``, ``box`` = its annotation's bbox as float
xyxy, ``captions`` = the ref's sentences (``sent``, else ``raw``) normalised, ``tags``,
``category`` (COCO name) and ``mask`` (the annotation's polygons as compressed RLE; off with
``masks=False``). One record per image and split; ``image`` = the COCO ``file_name`` (all in
``train2014/``; prepend it with ``image_prefix``).
"""

from __future__ import annotations

from pathlib import Path

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
    require,
    source_file,
    write_output,
    xywh_to_xyxy,
)
from .masks import segmentation_to_rle
from .safe_pickle import load_plain_pickle

REFS = "refs(umd).p"
INSTANCES = "instances.json"


def convert_refcocog(
    src,
    out,
    *,
    refs: str = REFS,
    instances: str = INSTANCES,
    image_prefix: str = "",
    tagger: str = "auto",
    masks: bool = True,
) -> dict:
    """Convert RefCOCOg (``refs`` pickle + ``instances`` JSON in the folder ``src``) into the
    JSONL ``out``; returns the summary (image and region counts per split)."""
    summary = Summary("refcocog", out, tagger)
    if not Path(src).is_dir():
        raise InputError(f"--src '{src}': not a directory (refcocog needs the folder holding {refs} and {instances})")
    refs_path = source_file(src, refs, what="RefCOCOg refs pickle")
    coco = CocoFile(source_file(src, instances, what="RefCOCOg instances"), "RefCOCOg instances")
    data = load_plain_pickle(refs_path, "RefCOCOg refs pickle")
    if not isinstance(data, list):
        raise InputError(f"'{refs_path}': expected a list of refs, got a {type(data).__name__}")
    ann_index = {ann["id"]: ann for anns in coco.anns.values() for ann in anns}
    recs = RecordSet(refs_path)
    for i, ref in enumerate(progress(data, "refcocog refs")):
        where = f"refs[{i}]"
        require(ref, ("ref_id", "ann_id", "image_id", "split", "sentences"), refs_path, where)
        for key in ("ref_id", "ann_id"):
            if isinstance(ref[key], bool) or not isinstance(ref[key], (int, str)):
                raise InputError(f"'{refs_path}': {where} '{key}' must be a number or a string, got {ref[key]!r}")
        where = f"ref {ref['ref_id']!r}"
        split = check_split(ref["split"], refs_path, where)
        ann = ann_index.get(ref["ann_id"])
        if ann is None:
            raise InputError(
                f"'{refs_path}': {where} refers to annotation {ref['ann_id']!r}, which is not in '{coco.path}'"
            )
        if ann["image_id"] != ref["image_id"]:
            raise InputError(
                f"'{refs_path}': {where} is on image {ref['image_id']!r} but its annotation {ann['id']!r} "
                f"is on image {ann['image_id']!r} in '{coco.path}'"
            )
        img = coco.images[ann["image_id"]]
        width, height = image_size(img, coco.path, f"image {img['id']!r}")
        sentences = expect_type(ref["sentences"], list, refs_path, f"{where} 'sentences'")
        raw = []
        for j, sent in enumerate(sentences):
            text = sent.get("sent", sent.get("raw")) if isinstance(sent, dict) else None
            if not isinstance(text, str):
                raise InputError(f"'{refs_path}': {where} sentences[{j}] has no 'sent' or 'raw' string")
            raw.append(text)
        region = {"id": ref["ref_id"], "box": xywh_to_xyxy(ann["bbox"], coco.path, f"annotation {ann['id']!r}")}
        region.update(caption_fields(raw))
        if coco.categories:
            region["category"] = coco.category(ann)
        if masks:
            rle = segmentation_to_rle(ann.get("segmentation"), width, height, coco.path, f"annotation {ann['id']!r}")
            if rle is not None:
                region["mask"] = rle
        record = recs.add_image(image_path(coco.file_name(img), image_prefix), width, height, split)
        recs.add_region(record, region, where)
    return write_output(out, recs.records(), summary)
