"""Visual Genome region descriptions → project JSONL (``vg``; ``vg-densecap`` for the
dense-captioning benchmark on the DenseCap split).

Source folder (as Visual Genome distributes v1.2, or v1.0):

* ``region_descriptions.json`` — a list with one entry per image: ``{"id": image id,
  "regions": [{"region_id" (v1.0: "id"), "image_id", "phrase", "x", "y", "width", "height"},
  ...]}``; boxes are pixel ``x, y, width, height``.
* ``image_data.json`` — a list of ``{"image_id" (v1.0: "id"), "width", "height", "url",
  "coco_id", "flickr_id"}``.
* ``densecap_splits.json`` (``vg-densecap``; optional for ``vg`` via ``splits``) — DenseCap's
  split, ``{"train": [image ids], "val": [...], "test": [...]}`` (77,398 / 5,000 / 5,000
  images of v1.2).

Kept: one record per image (``image`` = ``<image_id>.jpg``, the flat folder DenseCap, GLaMM
and DynRefer use; ``url_paths=True`` gives the distributed ``VG_100K/…`` / ``VG_100K_2/…``
path from the image's ``url``; ``image_prefix`` prepends a folder), ``width`` / ``height``
from ``image_data.json``; one region per description — ``id`` = ``region_id``, ``box`` =
float xyxy exactly as annotated (not clipped to the image), ``captions`` = ``[phrase]``
normalised (an empty one gives ``captions: []``, kept so it still counts as ground truth),
``tags``.

``vg``: every image; with a split file, records carry their split and images in no split
are kept without one (counted). ``vg-densecap``: the split file is required, images in no
split are dropped (counted), and regions whose phrase has more than ``max_words`` words
(15, DenseCap's rule, also applied by the official DynRefer data; punctuation removed
before counting; 0 disables) are dropped (counted). Images left without regions are
dropped (counted).
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError
from ..records import SPLITS
from .common import (
    Summary,
    caption_fields,
    expect_type,
    image_path,
    image_size,
    list_of_objects,
    load_json,
    progress,
    require,
    source_file,
    write_output,
    xywh_to_xyxy,
)

REGIONS = "region_descriptions.json"
IMAGE_DATA = "image_data.json"
DENSECAP_SPLITS = "densecap_splits.json"
DENSECAP_MAX_WORDS = 15
_PUNCT = str.maketrans("", "", string.punctuation)


def phrase_words(phrase: str) -> int:
    """Words of a phrase as DenseCap counts them: lower case, punctuation removed, split."""
    return len(phrase.lower().translate(_PUNCT).split())


def load_splits(path) -> dict:
    """``{image id key: split}`` (:func:`id_key`) from a DenseCap-style split file ``{"train": [ids], "val":
    [...], "test": [...]}`` (any subset of the three keys)."""
    data = expect_type(load_json(path, "split file"), dict, path, "the top level")
    if not data:
        raise InputError(f"'{path}': the split file names no split (expected keys {', '.join(SPLITS)})")
    out: dict = {}
    for split, ids in data.items():
        if split not in SPLITS:
            raise InputError(f"'{path}': unknown split {split!r} (expected keys {', '.join(SPLITS)})")
        for image_id in expect_type(ids, list, path, f"'{split}'"):
            if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
                raise InputError(f"'{path}': '{split}' must list image ids (numbers), got {image_id!r}")
            key = id_key(image_id)
            if key in out:
                raise InputError(f"'{path}': image {image_id!r} is in both '{out[key]}' and '{split}'")
            out[key] = split
    return out


def id_key(image_id) -> str:
    """The key an image id is matched by across the three files: ``1`` and ``"1"`` are one image (split files
    written by other tools list ids as strings; VG's own files use numbers)."""
    return str(image_id).strip()


def _image_id(entry: dict, path, where: str):
    for key in ("image_id", "id"):
        if key in entry:
            value = entry[key]
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise InputError(f"'{path}': {where} '{key}' must be a number or a string, got {value!r}")
            return value
    raise InputError(f"'{path}': {where} has no 'image_id' or 'id' key")


def _image_data(path) -> dict:
    data = list_of_objects(load_json(path, "VG image data"), None, path, "the top level")
    out = {}
    for i, entry in enumerate(data):
        image_id = _image_id(entry, path, f"entry [{i}]")
        if id_key(image_id) in out:
            raise InputError(f"'{path}': image {image_id!r} appears twice")
        out[id_key(image_id)] = entry
    return out


def _file_name(image_id, meta: dict, url_paths: bool, path) -> str:
    if not url_paths:
        return f"{image_id}.jpg"
    url = meta.get("url")
    if not isinstance(url, str) or url.count("/") < 1:
        raise InputError(f"'{path}': image {image_id!r} has no usable 'url' (needed by --url-paths), got {url!r}")
    return "/".join(url.rstrip("/").split("/")[-2:])


def convert_vg(
    src,
    out,
    *,
    splits: str | None = None,
    densecap: bool = False,
    max_words: int = 0,
    regions: str = REGIONS,
    image_data: str = IMAGE_DATA,
    image_prefix: str = "",
    url_paths: bool = False,
    tagger: str = "auto",
    name: str = "vg",
) -> dict:
    """Convert Visual Genome (the folder ``src``) into the JSONL ``out``; see the module doc.

    ``splits`` names a DenseCap-style split file (in ``src`` or a path); ``densecap=True``
    drops images in no split.
    """
    summary = Summary(name, out, tagger)
    if max_words < 0:
        raise InputError(f"--max-words must be 0 (no limit) or positive, got {max_words}")
    if not Path(src).is_dir():
        raise InputError(f"--src '{src}': not a directory ({name} needs the folder holding {regions} and {image_data})")
    regions_path = source_file(src, regions, what="VG region descriptions")
    meta_path = source_file(src, image_data, what="VG image data")
    split_of, split_path = {}, None
    if splits is not None:
        split_path = Path(splits) if Path(splits).is_file() else source_file(src, splits, what="split file")
        split_of = load_splits(split_path)
    metas = _image_data(meta_path)
    entries = list_of_objects(load_json(regions_path, "VG region descriptions"), None, regions_path, "the top level")
    image_ids = [_image_id(entry, regions_path, f"entry [{i}]") for i, entry in enumerate(entries)]
    if split_of and image_ids:  # before any work: a split file of another dataset would drop every image
        present = {id_key(image_id) for image_id in image_ids}
        if present.isdisjoint(split_of):
            raise InputError(f"'{split_path}': none of its {len(split_of)} image ids is in '{regions_path}' (e.g. "
                             f"{next(iter(split_of))!r} there, {next(iter(present))!r} here): another dataset's split?")

    def records() -> Iterator[dict]:
        seen = set()
        for entry, image_id in zip(progress(entries, f"{name} images"), image_ids):
            key = id_key(image_id)
            if key in seen:
                raise InputError(f"'{regions_path}': image {image_id!r} appears twice")
            seen.add(key)
            split = split_of.get(key)
            if split is None and split_of:
                if densecap:
                    summary.drop("images_not_in_split")
                    continue
                summary.drop("images_without_split")
            meta = metas.get(key)
            if meta is None:
                raise InputError(f"'{regions_path}': image {image_id!r} is not in '{meta_path}'")
            width, height = image_size(meta, meta_path, f"image {image_id!r}")
            require(entry, ("regions",), regions_path, f"image {image_id!r}")
            region_list = expect_type(entry["regions"], list, regions_path, f"image {image_id!r} 'regions'")
            out_regions, ids = [], set()
            for j, reg in enumerate(region_list):
                where = f"image {image_id!r} regions[{j}]"
                require(reg, ("phrase", "x", "y", "width", "height"), regions_path, where)
                reg_id = reg.get("region_id", reg.get("id"))
                if reg_id is None:
                    raise InputError(f"'{regions_path}': {where} has no 'region_id' key")
                if isinstance(reg_id, bool) or not isinstance(reg_id, (int, str)):
                    raise InputError(f"'{regions_path}': {where} 'region_id' must be a number, got {reg_id!r}")
                where = f"image {image_id!r} region {reg_id!r}"
                if reg_id in ids:
                    raise InputError(f"'{regions_path}': {where} appears twice")
                ids.add(reg_id)
                phrase = expect_type(reg["phrase"], str, regions_path, f"{where} 'phrase'")
                box = xywh_to_xyxy([reg["x"], reg["y"], reg["width"], reg["height"]], regions_path, where)
                if max_words and phrase_words(phrase) > max_words:
                    summary.drop(f"regions_over_{max_words}_words")
                    continue
                region = {"id": reg_id, "box": box}
                region.update(caption_fields([phrase]))
                out_regions.append(region)
            if not out_regions:
                summary.drop("images_without_regions")
                continue
            record = {
                "image": image_path(_file_name(image_id, meta, url_paths, meta_path), image_prefix),
                "width": width,
                "height": height,
            }
            if split is not None:
                record["split"] = split
            record["regions"] = out_regions
            yield record
        summary.drop("split_images_missing", sum(1 for k in split_of if k not in seen))

    return write_output(out, records(), summary)


def convert_vg_densecap(
    src, out, *, splits: str = DENSECAP_SPLITS, max_words: int = DENSECAP_MAX_WORDS, **kwargs
) -> dict:
    """Visual Genome v1.2 on the DenseCap split (dense-captioning benchmark); see the module doc."""
    return convert_vg(src, out, splits=splits, densecap=True, max_words=max_words, name="vg-densecap", **kwargs)
