"""The region index folder (:class:`RegionIndex`): what ``dynrefer index`` writes and ``dynrefer search`` reads.

``INDEX/``
    ``meta.json``      the model (its name and a fingerprint of its weights and vocabularies), the token shape,
                       the embedding size, the vector index kind;
    ``tokens.f16``     every region's Q-Former tokens (Q, D) as float16, appended in region order (text queries are
                       scored against them by the model's own contrastive head);
    ``vectors.f32``    every region's embedding (float32), appended in region order;
    ``vectors.faiss``  a FAISS inner-product index over those embeddings (exact, or HNSW): a cache written when a
                       writer closes, rebuilt from ``vectors.f32`` when it is missing or stale;
    ``regions.sqlite`` one row per region (``id`` = its position, ``image`` as given, ``path`` the file, ``box``,
                       ``caption``, ``tags``), the records already indexed (``done``), and the region count.

The count in SQLite is the truth. A batch appends its tokens and embeddings first, then commits its rows, its
records and the new count in one transaction; bytes past the count (an interrupted batch) are cut when the next
writer opens the folder. One writer at a time (``write.lock``); readers see the committed prefix and never
change the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import numpy as np

from ..errors import InputError

KINDS = ("flat", "hnsw")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS regions (id INTEGER PRIMARY KEY, image TEXT, path TEXT, box TEXT, caption TEXT, "
    "tags TEXT)",
    "CREATE TABLE IF NOT EXISTS done (key TEXT PRIMARY KEY)",
    "CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value INTEGER)",
)


def _without_paths(value):
    """A config as plain data without the fields that name files (a model moved or copied is the same model)."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in sorted(value.items())
                if not any(w in k for w in ("path", "weights", "init_from"))}
    if isinstance(value, (list, tuple)):
        return [_without_paths(v) for v in value]
    return value


def model_fingerprint(model) -> str:
    """A short hash of what a region's tokens and embeddings depend on, cheap for any model size: the config (file
    names left out), the vocabularies, and 64 evenly spaced values of every parameter and buffer."""
    import dataclasses

    import torch

    digest = hashlib.sha256()
    config = model.config
    plain = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    digest.update(json.dumps(_without_paths(plain), sort_keys=True, default=str).encode())
    digest.update(json.dumps([list(model.tag_names), list(model.categories),
                              [a if isinstance(a, str) else a.get("name") for a in model.attributes]]).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64]
        digest.update(name.encode())
        digest.update(sample.to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class RegionIndex:
    """An index folder: ``RegionIndex(folder)`` to read, ``write=True`` to append (one writer at a time),
    :meth:`create` for a new one."""

    def __init__(self, folder, *, write: bool = False, _lock=None):
        self.folder = Path(folder)
        meta = self.folder / "meta.json"
        if not meta.is_file():
            raise InputError(f"'{self.folder}' is not a region index (no meta.json; make one with dynrefer index)")
        try:
            self.meta = json.loads(meta.read_text(encoding="utf-8"))
            self.shape = tuple(int(v) for v in self.meta["tokens_shape"])
            self.dim = int(self.meta["dim"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"'{meta}' cannot be read: {exc}") from None
        self._lock = self._vectors = self.db = None
        if write:  # first: a run creating the index holds the lock until its files exist
            self._lock = _lock or _writer_lock(self.folder)
        try:
            if not (self.folder / "regions.sqlite").is_file():
                raise InputError(f"the index '{self.folder}' is damaged: regions.sqlite is missing")
            self.db = sqlite3.connect(self.folder / "regions.sqlite", timeout=60)
            for statement in _SCHEMA:
                self.db.execute(statement)
            self.db.commit()
            if write:
                self._cut()
            else:
                self._check_files()
        except BaseException:
            if self.db is not None:
                self.db.close()
            if self._lock is not None:
                self._lock.close()
            raise

    @classmethod
    def create(cls, folder, *, model: str, fingerprint: str, tokens_shape, dim: int, kind: str = "flat"):
        """A new, empty index in ``folder`` (which must not hold one), opened for writing."""
        if kind not in KINDS:
            raise InputError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
        folder = Path(folder)
        if (folder / "meta.json").exists():
            raise InputError(f"'{folder}' already holds an index (add to it, or choose another --out)")
        folder.mkdir(parents=True, exist_ok=True)
        lock = _writer_lock(folder)  # before meta.json: of two runs creating one index, one writes it
        try:
            if (folder / "meta.json").exists():
                raise InputError(f"'{folder}' already holds an index (add to it, or choose another --out)")
            meta = {"format": 1, "model": model, "fingerprint": fingerprint,
                    "tokens_shape": [int(v) for v in tokens_shape], "dim": int(dim), "kind": kind}
            with sqlite3.connect(folder / "regions.sqlite") as db:  # before meta.json: a published index has one
                for statement in _SCHEMA:
                    db.execute(statement)
            db.close()
            tmp = folder / f"meta.json.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
            tmp.replace(folder / "meta.json")
            return cls(folder, write=True, _lock=lock)
        except BaseException:
            lock.close()
            raise

    @property
    def count(self) -> int:
        row = self.db.execute("SELECT value FROM state WHERE name = 'count'").fetchone()
        return int(row[0]) if row else 0

    def _sizes(self) -> dict[str, int]:
        return {"tokens.f16": int(np.prod(self.shape)) * 2, "vectors.f32": self.dim * 4}

    def _check_files(self) -> None:
        for name, size in self._sizes().items():
            path, want = self.folder / name, self.count * size
            have = path.stat().st_size if path.exists() else 0
            if have < want:
                raise InputError(f"the index '{self.folder}' is damaged: '{name}' holds {have} bytes, its "
                                 f"{self.count} regions need {want}")

    def _cut(self) -> None:
        """(Writer) drop what an interrupted batch left past the committed count."""
        self._check_files()
        for name, size in self._sizes().items():
            path = self.folder / name
            if path.exists() and path.stat().st_size != self.count * size:
                with path.open("r+b") as fh:
                    fh.truncate(self.count * size)

    def check_model(self, model) -> None:
        """Refuse a model other than the one the index was built with (by fingerprint)."""
        if model_fingerprint(model) != self.meta.get("fingerprint"):
            raise InputError(f"the index '{self.folder}' was built with another model ({self.meta.get('model')!r}, "
                             f"fingerprint {self.meta.get('fingerprint')}): its embeddings are that model's")

    def is_done(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM done WHERE key = ?", (key,)).fetchone() is not None

    def vectors(self):
        """The FAISS index of the region embeddings (the cache when it is current, else built from
        ``vectors.f32``)."""
        import faiss

        if self._vectors is None:
            count, cache = self.count, self.folder / "vectors.faiss"
            index = faiss.read_index(str(cache)) if cache.is_file() else None
            if index is None or index.ntotal > count or index.d != self.dim:
                index = (faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
                         if self.meta.get("kind") == "hnsw" else faiss.IndexFlatIP(self.dim))
            if index.ntotal < count:  # the files only grow: the cache's regions are a prefix, add the rest
                index.add(np.ascontiguousarray(self.embeddings()[index.ntotal:count]))
            self._vectors = index
        return self._vectors

    def embeddings(self) -> np.ndarray:
        """(N, dim) float32, memory-mapped."""
        if self.count == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.memmap(self.folder / "vectors.f32", dtype=np.float32, mode="r", shape=(self.count, self.dim))

    def tokens(self) -> np.ndarray:
        """(N, Q, D) float16, memory-mapped."""
        if self.count == 0:
            return np.zeros((0, *self.shape), np.float16)
        return np.memmap(self.folder / "tokens.f16", dtype=np.float16, mode="r", shape=(self.count, *self.shape))

    def append(self, rows: list[dict], tokens: np.ndarray, vectors: np.ndarray, done=()) -> None:
        """(Writer) add regions: ``rows`` (``image``, ``path``, ``box``, ``caption``, ``tags``), ``tokens`` (N, Q,
        D), ``vectors`` (N, dim) L2-normalised; ``done``: the keys of the records this batch completes."""
        if self._lock is None:
            raise ValueError("this index was opened for reading")
        n = len(rows)
        if tokens.shape != (n, *self.shape) or vectors.shape != (n, self.dim):
            raise ValueError(f"append: {n} rows, tokens {tokens.shape}, vectors {vectors.shape} do not match the "
                             f"index ({self.shape}, dim {self.dim})")
        with np.errstate(over="ignore"):  # checked just below
            half = np.asarray(tokens, dtype=np.float16)
        if not np.isfinite(half).all():
            raise InputError("region tokens overflow float16 (|value| > 65504): this model cannot be indexed as is")
        start = self.count
        sizes = self._sizes()
        for name, data in (("tokens.f16", half), ("vectors.f32", np.asarray(vectors, dtype=np.float32))):
            with (self.folder / name).open("ab") as fh:
                fh.truncate(start * sizes[name])  # what a failed append left goes first
                fh.write(np.ascontiguousarray(data).tobytes())
                fh.flush()
                os.fsync(fh.fileno())  # on disk before the count that covers them is committed
        with self.db:  # one transaction: the rows, the records done and the count
            self.db.executemany(
                "INSERT INTO regions (id, image, path, box, caption, tags) VALUES (?, ?, ?, ?, ?, ?)",
                [(start + i, r["image"], str(r.get("path", "")), json.dumps(r["box"]), r.get("caption"),
                  json.dumps(r.get("tags", []))) for i, r in enumerate(rows)])
            self.db.executemany("INSERT OR IGNORE INTO done (key) VALUES (?)", [(k,) for k in done])
            self.db.execute("INSERT OR REPLACE INTO state (name, value) VALUES ('count', ?)", (start + n,))
        if self._vectors is not None and n:
            self._vectors.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def rows(self, ids) -> list[dict]:
        """The metadata of regions ``ids`` (in that order)."""
        ids = [int(i) for i in ids]
        found = {}
        for lo in range(0, len(ids), 500):  # SQLite bounds the variables of one statement
            part = ids[lo:lo + 500]
            found.update({row[0]: row for row in self.db.execute(
                f"SELECT id, image, path, box, caption, tags FROM regions WHERE id IN ({','.join('?' * len(part))})",
                part)})
        return [_row(found[i]) for i in ids]

    def all_rows(self) -> list[dict]:
        """Every region's metadata, in id order."""
        count = self.count
        return [_row(r) for r in self.db.execute(
            "SELECT id, image, path, box, caption, tags FROM regions WHERE id < ? ORDER BY id", (count,))]

    def close(self) -> None:
        """Close; a writer also saves the FAISS cache."""
        try:
            if self._lock is not None:
                import faiss

                tmp = self.folder / "vectors.faiss.tmp"
                faiss.write_index(self.vectors(), str(tmp))
                tmp.replace(self.folder / "vectors.faiss")
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None
            self.db.close()


def _row(row) -> dict:
    return {"id": row[0], "image": row[1], "path": row[2], "box": json.loads(row[3]), "caption": row[4],
            "tags": json.loads(row[5])}


def _writer_lock(folder: Path):
    """Hold ``folder/write.lock`` exclusively (released when the handle closes or the process dies)."""
    handle = open(folder / "write.lock", "a+", encoding="utf-8")
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise InputError(f"another run is adding to the index '{folder}': wait for it to finish") from None
    return handle
