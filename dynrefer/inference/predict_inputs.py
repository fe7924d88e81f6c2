"""What ``dynrefer predict`` checks and holds around a run (:mod:`dynrefer.inference.predict`): the input records and
what each region's prediction depends on, every image and region checked before the model loads, one run per
output (``OUT.lock``), DataLoader workers that die with their process."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError
from ..images import image_file_size
from ..regions import parse_regions

REGION_INPUT_KEYS = ("id", "box", "bbox", "box_format", "mask", "polygon", "segmentation", "rle", "score",
                     "objectness")


def _region_id(record: dict, j: int):
    spec = record["regions"][j]
    return spec.get("id", j) if isinstance(spec, dict) else j


def region_input(record: dict, j: int) -> dict:
    """What the prediction of region ``j`` of ``record`` depends on in the input (its box, shape, id and
    score): a part entry is reused only while this is unchanged."""
    spec = record["regions"][j]
    return {k: spec[k] for k in REGION_INPUT_KEYS if k in spec}


def occurrences(records: list[dict]) -> list[int]:
    """For each record, how many earlier records list the same image (0 for its first record)."""
    seen: dict = {}
    out = []
    for rec in records:
        image = rec.get("image")
        out.append(seen.get(image, 0))
        seen[image] = out[-1] + 1
    return out


def same_region(spec: dict, predicted: dict, record: dict) -> bool:
    """Whether a finished prediction is of the input region ``spec``: the same box (the input parsed in the
    written record's size) and the same ``score`` / ``objectness`` where the input gives them."""
    size = (record.get("width"), record.get("height"))
    if None in size or not isinstance(predicted.get("box"), list):
        return False
    try:
        box = parse_regions([_box_only(spec)], size)[0].box
    except InputError:
        return False
    if len(predicted["box"]) != 4 or max(abs(float(a) - float(b)) for a, b in zip(box, predicted["box"])) > 1e-6:
        return False
    if spec.get("score") is not None and predicted.get("score") != spec["score"]:
        return False
    return predicted.get("objectness") == spec.get("objectness")  # given, removed or changed: predicted again


def _box_only(spec: dict) -> dict:
    """A region spec whose box is the same as ``spec``'s without drawing its shape: a polygon's box is the extent
    of its points (what parsing derives); boxes and masks are kept as they are."""
    shape = spec.get("polygon", spec.get("segmentation"))
    if any(k in spec for k in ("box", "bbox")) or not isinstance(shape, list):
        return spec
    parts = shape if shape and isinstance(shape[0], list) else [shape]
    try:
        xs = [float(v) for p in parts for v in p[0::2]]
        ys = [float(v) for p in parts for v in p[1::2]]
    except (TypeError, ValueError):
        return spec  # parsing names the problem
    if not xs or not ys:
        return spec
    return {"box": [min(xs), min(ys), max(xs), max(ys)], "box_format": "xyxy"}


def extra_settings(proposals, max_regions, nms_iou, classes_from, min_similarity) -> dict:
    """The run settings that proposals and few-shot classes add (a resumed run must have the same)."""
    from ..proposals import resolved_source

    extra = {} if proposals is None else {"proposals": [resolved_source(proposals), int(max_regions), float(nms_iou)]}
    if classes_from is None and min_similarity is not None:
        raise InputError("--min-similarity is used with --classes-from")
    if classes_from is not None:
        from ..search.query import check_floor

        check_floor(min_similarity)
        if not Path(classes_from).is_file():
            raise InputError(f"cannot read --classes-from '{classes_from}': no such file")
        if min_similarity is None:
            from ..search.query import MIN_SIMILARITY

            min_similarity = MIN_SIMILARITY
        from ..model.io import sha256_of

        # the file's content too: examples edited in place are other classes
        extra["classes_from"] = [str(Path(classes_from).resolve()), sha256_of(classes_from), float(min_similarity)]
    return extra


def check_record_size(record: dict, size: tuple[int, int]) -> None:
    """Raise :class:`InputError` when a record's ``width`` / ``height`` (where given) are not the image's
    ``size`` (W, H): its boxes would be in another frame (a resized image, another file, or an EXIF
    rotation the annotation did not apply)."""
    given = (record.get("width"), record.get("height"))
    if given == (None, None):
        return
    if given != tuple(size):
        raise InputError(f"the record says {given[0]}x{given[1]} (width x height) but the image is "
                         f"{size[0]}x{size[1]}; its regions would be in another frame (resized image, another "
                         "file, or an EXIF rotation)")


def check_records(records: list[dict], data: Path) -> None:
    """Each input record needs an ``image`` path (a string), a ``regions`` list of region objects with ids unique
    within it, and, where given, integer ``width`` / ``height``."""
    for i, rec in enumerate(records, 1):
        where = f"'{data}' record {i}"
        if not isinstance(rec.get("image"), str) or not rec["image"]:
            raise InputError(f"{where}: 'image' must be a path (a non-empty string), got {rec.get('image')!r}")
        where = f"{where} ({rec['image']})"
        regions = rec.get("regions", [])
        if not isinstance(regions, list) or not all(isinstance(r, dict) for r in regions):
            raise InputError(f"{where}: 'regions' must be a list of region objects "
                             "({\"box\": ...}, {\"mask\": ...}, ...)")
        for key in ("width", "height"):
            value = rec.get(key)
            whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())  # 300.0 is 300
            if value is not None and (isinstance(value, bool) or not whole or value < 1):
                raise InputError(f"{where}: '{key}' must be a positive integer (pixels), got {value!r} "
                                 f"({type(value).__name__})")
        ids: dict = {}
        for j in range(len(regions)):
            rid = _region_id(rec, j)
            try:
                first = ids.setdefault(rid, j)
            except TypeError:
                raise InputError(f"{where}: region {j}: 'id' must be a number or a string, got {rid!r}") from None
            if first != j:
                raise InputError(f"{where}: regions {first} and {j} have the same id {rid!r} (ids are unique within a "
                                 "record; a region without an id is known by its position)")


def preflight(records: list[dict], root: Path, done=frozenset()) -> None:
    """Check, before the model loads, what each record still to describe needs: its image (present, readable,
    its size from the header) and its regions (parsed in that size); the first problem is an
    :class:`InputError` naming the record."""
    for i, rec in enumerate(records):
        todo = [j for j in range(len(rec.get("regions", []))) if (i, j) not in done]
        if not todo:
            continue
        try:
            check_record_input(rec, root / rec["image"], todo)
        except InputError as err:
            raise InputError(f"record {i + 1} ({rec['image']}): {err}") from None


def check_record_input(rec: dict, path: Path, todo=None) -> None:
    """One record's image ``path`` (present, readable, its size from the header, as the record's ``width`` /
    ``height``) and its regions ``todo`` (indices; None: all) parsed in that size; an :class:`InputError`
    otherwise."""
    size = image_file_size(path)
    check_record_size(rec, size)
    todo = range(len(rec.get("regions", []))) if todo is None else todo
    parse_regions([region_input(rec, j) | {"id": _region_id(rec, j)} for j in todo], size)


@contextmanager
def output_lock(out: Path):
    """Hold ``OUT.lock`` exclusively while a run writes ``out`` (released on every exit: the lock goes with the
    process, even on SIGKILL); a second run on the same ``out`` stops at once with one line."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: nothing prevents a second run
        yield
        return
    if os.environ.get("LOCAL_RANK", "0") != "0":  # a process a DDP launcher started: its launcher holds the lock
        yield
        return
    path = out.with_name(out.name + ".lock")
    handle = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise InputError(f"another run is writing '{out}' (process {holder} holds '{path}'): wait for it to "
                             "finish, or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def die_with_parent(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the worker gets SIGKILL when its parent dies (Linux ``PR_SET_PDEATHSIG``), so
    a ``kill -9`` of the main process leaves no worker behind holding its pipes and shared memory. The parent is
    whichever process started the worker (with ``--devices N`` on a CPU, a spawned rank); one that died before the
    call leaves the worker re-parented: it ends at once. A no-op where the call does not exist."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return
    parent = os.getppid()
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the call: no signal will come
        os.kill(os.getpid(), signal.SIGKILL)
