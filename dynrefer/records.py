"""The project's JSON Lines records (SPEC §5): reading, writing, caption normalisation.

One record per image::

    {"image": "rel/path.jpg" | null, "width": W, "height": H, "split": "train" | "val" | "test",
     "regions": [{"id": ..., "box": [x1, y1, x2, y2], "captions": [...], ...}, ...]}

Image paths are relative to the JSONL file unless an image root is given. A region is keyed
by ``(image, id)``; ids are unique within an image.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

SPLITS = ("train", "val", "test")
MAX_CAPTION_WORDS = 50
_PUNCT = re.compile(r'[.!"()*#:;~]')


def normalize_caption(text: str, max_words: int = MAX_CAPTION_WORDS) -> str:
    """SPEC §1.5: lower case, ``.!"()*#:;~`` → space, whitespace collapsed, at most 50 words."""
    words = _PUNCT.sub(" ", str(text).lower()).split()
    return " ".join(words[:max_words])


def iter_jsonl(path, *, numbered: bool = False) -> Iterator[dict]:
    """Yield the records of a JSONL file (``numbered``: ``(line number, record)`` pairs); blank lines are skipped.

    Raises:
        InputError: the file is missing, unreadable, or a line is not a JSON object
            (the message names the file and the line number).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cannot read '{path}': {'is a directory' if path.is_dir() else 'no such file'}")
    try:
        with path.open("r", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"'{path}' line {lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise InputError(f"'{path}' line {lineno}: expected a JSON object, got {type(record).__name__}")
                yield (lineno, record) if numbered else record
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot read '{path}': not UTF-8 text ({exc.reason})") from None


def read_jsonl(path) -> list[dict]:
    """All records of a JSONL file (see :func:`iter_jsonl`)."""
    return list(iter_jsonl(path))


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_writer(path):
    """A text file handle whose content replaces ``path`` only when the block ends without an error
    (temporary file in the same folder + rename: an interruption never leaves a truncated file). The file
    gets the mode a plain ``open(path, "w")`` would (mkstemp's is 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())  # the content is on disk before the rename makes it the file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_path(path, option: str = "--out") -> Path:
    """An output file path that can be written: not a folder, and its folder (or, when that is still to be created,
    the nearest existing one) writable. Checked before any work, so that a long run does not fail at its end."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} '{path}' is a folder; name a file")
    parent = path.parent
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{option} '{path}': '{probe}' is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{option} '{path}': cannot write into '{probe}' (permission denied)")
    if path.exists() and not os.access(path, os.W_OK) and not os.access(parent, os.W_OK):
        raise InputError(f"{option} '{path}': the file cannot be replaced (permission denied)")
    return path


def write_jsonl(path, records: Iterable[dict]) -> int:
    """Write records atomically (:func:`atomic_writer`). Returns the number of records written."""
    count = 0
    with atomic_writer(path) as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False))
            fh.write("\n")
            count += 1
    return count


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_writer`)."""
    with atomic_writer(path) as fh:
        fh.write(text)


def write_json(path, obj, *, indent: int = 1, default=None) -> None:
    """Write one JSON document atomically (:func:`atomic_writer`), with a final newline; ``default`` as in
    :func:`json.dump` (e.g. ``str`` for paths)."""
    with atomic_writer(path) as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=indent, default=default)
        fh.write("\n")


def region_key(record: dict, region: dict) -> tuple:
    """The ``(image, id)`` key of a region within its record."""
    return (record.get("image"), region.get("id"))


def read_names(path, option: str) -> list[str]:
    """Names from a file: one a line, or a JSON list of names or of ``{"name": ...}`` objects (kept whole);
    ``option`` names the file in errors."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"cannot read {option} '{p}': no such file")
    text = p.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):  # a JSON list: names, or OVAD-style attribute dicts (kept whole)
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{option} '{p}': not valid JSON ({exc.msg})") from None
        if not all(isinstance(n, str) or (isinstance(n, dict) and "name" in n) for n in names):
            raise InputError(f"{option} '{p}': expected names or objects with a 'name'")
        return names
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_class_names(path, option: str) -> list[str]:
    """Class names from a file (one a line, a JSON list of names, or COCO-style ``{"name": ...}`` objects)."""
    return [n if isinstance(n, str) else str(n["name"]) for n in read_names(path, option)]
