"""``predict --proposals``: the records of a dataset that list no region get their regions from a proposal
source, before anything else runs (so the run's resume logic, keyed by record and region, sees ordinary
regions)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError


def check_limits(max_regions: int, nms_iou: float) -> None:
    """How many proposals an image keeps (at least 1) and the IoU above which duplicates go (in (0, 1])."""
    if not 0.0 < nms_iou <= 1.0:
        raise InputError(f"--nms-iou must lie in (0, 1], got {nms_iou}")
    if max_regions < 1:
        raise InputError(f"--max-regions must be at least 1, got {max_regions}")


def fill_regions(records: list[dict], root, spec: str, *, max_regions: int = 100, nms_iou: float = 0.5,
                 progress: bool | None = None, device=None, cache=None, write_cache: bool = True) -> int:
    """Give every record of ``records`` without regions (none listed, or ``[]``) the proposals of ``spec``
    (:func:`~dynrefer.proposals.proposal_source`) for its image: ``{"id", "box", "objectness"}`` (objectness where
    the source has it), at most ``max_regions`` after class-agnostic NMS at ``nms_iou``. Records that list
    regions are left as they are. Changes ``records`` in place; returns how many records were filled.

    ``cache``: a JSONL file that keeps each image's proposals as they are found (its first line the settings):
    a rerun with the same settings reads them back instead of computing them again (an image is known by its
    path, its place among the records of that path, and its file's size and modification time). With
    ``write_cache`` False the cache is only read (the other processes of a multi-GPU run, started after the
    first one filled it), and the source is made only if an image is not in it."""
    from tqdm import tqdm

    from ..images import image_file_size
    from . import proposal_source

    check_limits(max_regions, nms_iou)
    # the source checks the spec (a missing file or checkpoint is an error here); a reader of the cache was started
    # by a process that did that already, and needs no model unless an image is missing from it
    source = proposal_source(spec, device=device) if write_cache or cache is None else None
    settings = {"proposals": _resolved(spec), "max_regions": int(max_regions), "nms_iou": float(nms_iou)}
    matches = cache is not None and _cache_matches(cache, settings)
    known = _read_cache(cache) if matches else {}
    out = _open_cache(cache, settings, fresh=not matches) if cache is not None and write_cache else None
    seen: dict[str, int] = {}
    todo = []
    for i, rec in enumerate(records):
        occurrence = seen.get(rec["image"], 0)
        seen[rec["image"]] = occurrence + 1
        if not rec.get("regions"):
            todo.append((i, occurrence))
    try:
        for i, occurrence in tqdm(todo, desc="proposals", unit="img",
                                  disable=None if progress is None else not progress):
            rec = records[i]
            path = Path(root) / rec["image"]
            try:
                stat = path.stat()
                key = f"{rec['image']}#{occurrence}#{stat.st_size}#{stat.st_mtime_ns}"
            except OSError:
                key = None  # image_file_size names the problem
            if key in known:
                rec["regions"] = known[key]
                continue
            try:
                size = image_file_size(path)
                source = source or proposal_source(spec, device=device)
                found = source(path).select(max_regions, nms_iou, size)
            except InputError as err:
                raise InputError(f"record {i + 1} ({rec['image']}): {err}") from None
            regions = found.regions()
            for region in regions:
                region.pop("box_format", None)  # xyxy, the records' own format
            rec["regions"] = regions
            if out is not None:
                out.write(json.dumps({"key": key, "regions": regions}) + "\n")
                out.flush()
    finally:
        if out is not None:
            out.close()
    return len(todo)


def _resolved(spec: str) -> str:
    """The source as the cache knows it: a proposal file by its path and a hash of its content (an edited file
    gives other proposals), a SAM checkpoint by its path, size and modification time (gigabytes: not hashed)."""
    import hashlib

    from . import resolved_source

    spec = resolved_source(spec)
    kind, _, arg = spec.partition(":")
    if kind not in ("file", "sam") or not arg:
        return spec
    path = Path(arg)  # (the source itself was opened above: it exists)
    if kind == "sam":
        stat = path.stat()
        return f"sam:{path}#{stat.st_size}#{stat.st_mtime_ns}"
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"file:{path}#{digest.hexdigest()[:16]}"


def _cache_matches(cache, settings: dict) -> bool:
    try:
        with open(cache, encoding="utf-8") as fh:
            return json.loads(fh.readline()) == {"settings": settings}
    except (OSError, ValueError):
        return False


def _read_cache(cache) -> dict:
    """``{key: regions}`` from a cache whose settings line matched (a line cut short by an interruption is
    skipped)."""
    known = {}
    with open(cache, encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and isinstance(item.get("regions"), list):
                known[item.get("key")] = item["regions"]
    return known


def _open_cache(cache, settings: dict, *, fresh: bool):
    cache = Path(cache)
    if fresh:  # other settings, or none yet: start the file over
        cache.write_text(json.dumps({"settings": settings}) + "\n", encoding="utf-8")
    out = cache.open("a+", encoding="utf-8")
    out.seek(0, 2)
    if out.tell():  # an interrupted line: end it, so that the next entry starts a line of its own
        out.seek(out.tell() - 1)
        last = out.read(1)
        out.seek(0, 2)
        if last != "\n":
            out.write("\n")
    return out
