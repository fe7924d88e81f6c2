"""Shared machinery of the converters: reading source files with errors that name them,
box conversion, grouping regions into project records (SPEC §5), tagging, writing the
output and counting what was written (masks: :mod:`dynrefer.prepare.masks`).

Every problem with a source file raises :class:`~dynrefer.errors.InputError` whose message
names the file and says what is wrong (missing, not JSON, truncated, wrong structure,
missing key, bad box).
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..records import SPLITS, normalize_caption, write_json, write_jsonl

UNSPLIT = "unsplit"  # summary key of records without a split


def progress(iterable: Iterable, desc: str, total: int | None = None) -> Iterable:
    """A tqdm progress bar on stderr, off when stderr is not a terminal (``disable=None``)."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=None, leave=False, unit="it")


def source_file(src, name: str, *, what: str) -> Path:
    """The file ``name`` inside the source folder ``src`` (or ``src`` itself when it is a file
    and ``name`` is a default that the user may bypass by pointing at the file)."""
    src = Path(src)
    if src.is_file():
        return src
    if not src.exists():
        raise InputError(f"--src '{src}': no such file or directory")
    path = src / name
    if not path.is_file():
        found = "is a directory" if path.is_dir() else "no such file"
        raise InputError(f"cannot read '{path}' ({what}): {found}")
    return path


def load_json(path, what: str = "JSON file") -> Any:
    """Parse a JSON file; InputError naming the file when it is missing, empty, not UTF-8,
    truncated or otherwise not valid JSON."""
    path = Path(path)
    if not path.is_file():
        found = "is a directory" if path.is_dir() else "no such file"
        raise InputError(f"cannot read '{path}' ({what}): {found}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot read '{path}' ({what}): not UTF-8 text ({exc.reason})") from None
    if not text.strip():
        raise InputError(f"cannot read '{path}' ({what}): the file is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
            raise InputError(f"cannot read '{path}' ({what}): truncated JSON (the file ends early: {where})") from None
        raise InputError(f"cannot read '{path}' ({what}): not valid JSON ({where})") from None


def expect_type(value, kind, path, where: str):
    """``value`` if it is a ``kind`` (type or tuple of types; booleans are not numbers),
    else InputError."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = "/".join(
            {dict: "object", list: "array", str: "string", int: "number", float: "number"}.get(k, k.__name__)
            for k in kinds
        )
        raise InputError(f"'{path}': {where} must be a JSON {names}, got {_json_type(value)}")
    return value


def _json_type(value) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
        tuple: "array",
    }.get(type(value), type(value).__name__)


def require(entry, keys: Iterable[str], path, where: str) -> None:
    """InputError when the JSON object ``entry`` is not an object or lacks one of ``keys``."""
    expect_type(entry, dict, path, where)
    for key in keys:
        if key not in entry:
            raise InputError(f"'{path}': {where} has no '{key}' key")


def list_of_objects(data, key: str | None, path, where: str) -> list:
    """``data[key]`` (or ``data`` itself) checked to be a list of JSON objects."""
    if key is not None:
        require(data, [key], path, "the top level")
        data = data[key]
        where = f"'{key}'"
    expect_type(data, list, path, where)
    for i, item in enumerate(data):
        expect_type(item, dict, path, f"{where}[{i}]")
    return data


def as_number(value, path, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"'{path}': {where} must be a number, got {_json_type(value)} {value!r}")
    return float(value)


MAX_IMAGE_SIDE = 1 << 16  # larger sides are taken for corrupt data


def image_size(entry: Mapping, path, where: str) -> tuple[int, int]:
    """``(width, height)`` of an image entry: whole numbers in 1 … 65536."""
    out = []
    for key in ("width", "height"):
        if key not in entry:
            raise InputError(f"'{path}': {where} has no '{key}' key")
        value = as_number(entry[key], path, f"{where} '{key}'")
        if not math.isfinite(value) or value <= 0 or value != int(value) or value > MAX_IMAGE_SIDE:
            raise InputError(
                f"'{path}': {where} '{key}' must be a positive whole number up to {MAX_IMAGE_SIDE}, got {entry[key]!r}"
            )
        out.append(int(value))
    return out[0], out[1]


def xywh_to_xyxy(bbox, path, where: str) -> list[float]:
    """COCO ``[x, y, w, h]`` → float ``[x1, y1, x2, y2]``. Zero width/height is kept (the
    downstream minimum-size rule widens it); NaN/inf or a negative size is an error."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise InputError(f"'{path}': {where}: box must be [x, y, width, height], got {bbox!r}")
    x, y, w, h = (as_number(v, path, f"{where}: box") for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise InputError(f"'{path}': {where}: box has a NaN or infinite value: {list(bbox)!r}")
    if w < 0 or h < 0:
        raise InputError(f"'{path}': {where}: box has a negative width or height: {list(bbox)!r}")
    box = [x, y, x + w, y + h]
    if not all(math.isfinite(v) for v in box):
        raise InputError(f"'{path}': {where}: box is too large to represent: {list(bbox)!r}")
    return box


def image_path(name: str, prefix: str) -> str:
    """The record's image path: the source's file name, with ``--image-prefix`` prepended."""
    return posixpath.join(prefix, name) if prefix else name


def check_split(split, path, where: str) -> str:
    if split not in SPLITS:
        raise InputError(f"'{path}': {where}: unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    return split


def caption_fields(raw_captions: Iterable[str]) -> dict:
    """``captions`` (normalised, SPEC §1.5; empty ones dropped) and ``tags`` of a region; the
    tags (nouns and adjectives of the captions) are filled in by :func:`write_output`, which
    tags many records in one batch."""
    return {"captions": [c for c in (normalize_caption(r) for r in raw_captions) if c], "tags": []}


def _tag_records(records: Iterable[dict], tagger, chunk: int = 256) -> Iterator[dict]:
    """Fill each region's ``tags`` from its ``captions``, tagging ``chunk`` records at a time
    (spaCy is several times faster on batches than one caption at a time)."""
    if isinstance(records, list):
        records = progress(records, "tagging", total=len(records))
    batch: list[dict] = []
    for record in records:
        batch.append(record)
        if len(batch) >= chunk:
            yield from _tag_batch(batch, tagger)
            batch = []
    yield from _tag_batch(batch, tagger)


def _tag_batch(batch: list[dict], tagger) -> Iterator[dict]:
    tagger.prefetch(c for r in batch for g in r["regions"] if "tags" in g for c in g["captions"])
    for record in batch:
        for region in record["regions"]:
            if "tags" in region:
                region["tags"] = tagger.tags_for(region["captions"])
        yield record


class RecordSet:
    """Regions grouped into one record per ``(image, split)``, in order of first appearance.

    Region ids must be unique within an image (SPEC §5); an image listed twice must have
    the same size both times.
    """

    def __init__(self, path_label):
        self.path_label = path_label
        self._records: dict[tuple, dict] = {}
        self._sizes: dict[str, tuple[int, int]] = {}
        self._ids: dict[str, set] = {}

    def add_image(self, image: str, width: int, height: int, split: str | None) -> dict:
        known = self._sizes.setdefault(image, (width, height))
        if known != (width, height):
            raise InputError(
                f"'{self.path_label}': image '{image}' is listed with two sizes, "
                f"{known[0]}x{known[1]} and {width}x{height}"
            )
        key = (image, split)
        record = self._records.get(key)
        if record is None:
            record = {"image": image, "width": width, "height": height}
            if split is not None:
                record["split"] = split
            record["regions"] = []
            self._records[key] = record
        return record

    def add_region(self, record: dict, region: dict, where: str) -> None:
        ids = self._ids.setdefault(record["image"], set())
        if region["id"] in ids:
            raise InputError(
                f"'{self.path_label}': {where}: region id {region['id']!r} appears twice in image '{record['image']}'"
            )
        ids.add(region["id"])
        record["regions"].append(region)

    def records(self) -> list[dict]:
        return [r for r in self._records.values() if r["regions"]]

    def empty_images(self) -> int:
        return sum(1 for r in self._records.values() if not r["regions"])


class Summary:
    """Counts images and regions per split as records are written.

    Made first thing by a converter, so that a bad ``out`` path or a tagger that cannot run
    fails before any large file is read; ``tagger`` is a :data:`~dynrefer.prepare.tags.TAGGERS`
    name (``None`` for converters without captions).
    """

    def __init__(self, converter: str, out, tagger: str | None = None):
        from .tags import Tagger

        out = Path(out)
        if out.is_dir():
            raise InputError(f"--out '{out}' is a directory; give a .jsonl file name")
        if any(p.exists() and not p.is_dir() for p in out.parents):
            raise InputError(f"--out '{out}': a parent folder of it is a file")
        self.converter = converter
        self.out = str(out)
        self.tagger = None if tagger is None else Tagger(tagger)
        self.images: dict[str, int] = {}
        self.regions: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.files: list[str] = []

    def count(self, records: Iterable[dict]) -> Iterator[dict]:
        for record in records:
            split = record.get("split", UNSPLIT)
            self.images[split] = self.images.get(split, 0) + 1
            self.regions[split] = self.regions.get(split, 0) + len(record["regions"])
            yield record

    def drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def as_dict(self) -> dict:
        order = {s: i for i, s in enumerate((*SPLITS, UNSPLIT))}

        def totals(counts):
            out = {k: counts[k] for k in sorted(counts, key=lambda s: order.get(s, 99))}
            out["total"] = sum(counts.values())
            return out

        out = {
            "converter": self.converter,
            "out": self.out,
            "images": totals(self.images),
            "regions": totals(self.regions),
            "dropped": dict(sorted(self.dropped.items())),
        }
        if self.tagger is not None:
            out["tagger"] = self.tagger.name
        if self.files:
            out["files"] = self.files
        return out


def _describable(records: Iterable[dict], summary: Summary) -> Iterator[dict]:
    """Regions ``dynrefer predict`` can describe: a box entirely outside its image is dropped (counted),
    and so is a record left with no region."""
    from ..regions import box_outside_image

    for record in records:
        size = (record["width"], record["height"])
        kept = [r for r in record["regions"] if r.get("box") is None or not box_outside_image(r["box"], size)]
        summary.drop("boxes_outside_image", len(record["regions"]) - len(kept))
        if kept:
            yield record if len(kept) == len(record["regions"]) else dict(record, regions=kept)
        else:
            summary.drop("images_without_regions")


def write_output(out, records: Iterable[dict], summary: Summary) -> dict:
    """Tag the regions (when the summary has a tagger), write the JSONL atomically and return
    the summary dict."""
    out = Path(out)
    if out.is_dir():
        raise InputError(f"--out '{out}' is a directory; give a .jsonl file name")
    records = _describable(records, summary)
    if summary.tagger is not None:
        records = _tag_records(records, summary.tagger)
    write_jsonl(out, summary.count(records))
    return summary.as_dict()


def sidecar_path(out, suffix: str) -> Path:
    """``OUT.jsonl`` → ``OUT.<suffix>.json`` beside it."""
    out = Path(out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(f"{stem}.{suffix}.json")


def write_json_atomic(path, data) -> None:
    """:func:`dynrefer.records.write_json` with one-space indents."""
    write_json(path, data, indent=1)
