"""METEOR 1.5 through pycocoevalcap's jar, many (hypothesis, references) pairs per call.

Protocol (the one ``pycocoevalcap.meteor.meteor.Meteor`` speaks to the jar, started as
``java -Xmx2G -jar meteor-1.5.jar - - -stdio -l en -norm``):

* for each pair write ``SCORE ||| ref 1 ||| ... ||| ref n ||| hypothesis`` and read back one line of
  sufficient statistics;
* write ``EVAL ||| stats 1 ||| ... ||| stats N`` and read back N per-pair scores followed by the
  corpus-level score (computed from the summed statistics, not the mean of the pair scores).

The jar starts once (it loads its paraphrase table: about 10-20 s) and is reused for every batch;
:func:`shared_meteor` keeps one process for the whole Python session. Lines are written by a helper
thread while the main thread reads, so a batch of 10^5 pairs costs no more than its scoring.
Differences to pycocoevalcap that never change a score on ordinary text: ``|||`` and line breaks are
removed from references as well as hypotheses (they would corrupt the protocol), and the JVM reads
its input as UTF-8 whatever the locale.
"""

from __future__ import annotations

import atexit
import importlib
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from .common import MeteorError, require_java

__all__ = ["MeteorScorer", "shared_meteor", "meteor_jar"]

JAVA_METEOR = "METEOR (pycocoevalcap's meteor-1.5.jar) needs Java"
_PROGRESS_MIN = 5000  # a progress bar (on a terminal) from this many pairs on


def meteor_jar() -> Path:
    """Path of ``meteor-1.5.jar`` shipped with pycocoevalcap."""
    try:
        module = importlib.import_module("pycocoevalcap.meteor.meteor")
    except ImportError as exc:
        raise MeteorError(f"METEOR needs the 'pycocoevalcap' package (pip install pycocoevalcap): {exc}") from None
    jar = Path(module.__file__).resolve().parent / module.METEOR_JAR
    if not jar.is_file():
        raise MeteorError(f"METEOR jar not found at '{jar}': reinstall pycocoevalcap")
    return jar


def _clean(text: str) -> str:
    """One protocol field: no ``|||``, no line breaks, no double spaces (as pycocoevalcap)."""
    text = " ".join(str(text).replace("|||", "").splitlines())
    return text.replace("  ", " ")


class MeteorScorer:
    """A running METEOR 1.5 process; ``scorer(pairs)`` returns one score per pair.

    ``pairs`` is a sequence of ``(hypothesis, [reference, ...])``; every pair needs at least one
    reference. Thread-safe; use as a context manager or call :meth:`close`.
    """

    def __init__(self, memory: str = "2G"):
        java = require_java(JAVA_METEOR)
        jar = meteor_jar()
        self._stderr = tempfile.TemporaryFile()
        cmd = [java, f"-Xmx{memory}", "-Dfile.encoding=UTF-8", "-jar", jar.name,
               "-", "-", "-stdio", "-l", "en", "-norm"]
        try:
            self._proc = subprocess.Popen(
                cmd, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
            )
        except OSError as exc:
            self._stderr.close()
            raise MeteorError(f"cannot start METEOR ({' '.join(cmd)}): {exc}") from None
        self._lock = threading.Lock()

    # -- protocol -------------------------------------------------------------------------
    def _failure(self, what: str) -> MeteorError:
        self._stderr.seek(0)
        tail = self._stderr.read()[-2000:].decode("utf-8", "replace").strip().replace("\n", " | ")
        return MeteorError(f"METEOR process failed while {what}" + (f": {tail}" if tail else ""))

    def _readline(self, what: str) -> str:
        line = self._proc.stdout.readline()
        if not line:
            raise self._failure(what)
        return line.decode("utf-8", "replace").strip()

    def _send(self, lines: list[str], errors: list) -> None:
        try:
            for line in lines:
                self._proc.stdin.write(line.encode("utf-8"))
            self._proc.stdin.flush()
        except OSError as exc:  # broken pipe: the reader reports the failure
            errors.append(exc)

    def _exchange(self, lines: list[str], n_out: int, what: str, progress: bool = False) -> list[str]:
        errors: list = []
        writer = threading.Thread(target=self._send, args=(lines, errors), daemon=True)
        writer.start()
        steps = range(n_out)
        if progress and n_out >= _PROGRESS_MIN:
            from tqdm import tqdm

            steps = tqdm(steps, desc="METEOR", unit="pair", disable=None, leave=False)
        try:
            return [self._readline(what) for _ in steps]
        except BaseException:
            self._proc.kill()  # out of step with the protocol (or interrupted): never reuse it
            raise
        finally:
            writer.join()

    def score_with_aggregate(self, pairs: Sequence[tuple[str, Sequence[str]]]) -> tuple[float, list[float]]:
        """``(corpus score, [pair score, ...])``, both in [0, 1], as pycocoevalcap's ``compute_score``."""
        pairs = list(pairs)
        if not pairs:
            return 0.0, []
        lines = []
        for i, (hyp, refs) in enumerate(pairs):
            refs = [refs] if isinstance(refs, str) else list(refs)
            if not refs:
                raise ValueError(f"METEOR pair {i} has no reference")
            lines.append(" ||| ".join(["SCORE", " ||| ".join(_clean(r) for r in refs), _clean(hyp)]) + "\n")
        with self._lock:
            if self._proc is None:
                raise MeteorError("this METEOR process has been closed")
            if self._proc.poll() is not None:
                raise self._failure("starting")
            stats = self._exchange(lines, len(lines), "computing statistics", progress=True)
            out = self._exchange(["EVAL ||| " + " ||| ".join(stats) + "\n"], len(stats) + 1, "scoring")
        try:
            values = [float(v) for v in out]
        except ValueError:
            raise self._failure(f"scoring (unexpected output {out[:3]!r})") from None
        return values[-1], values[:-1]

    def __call__(self, pairs: Sequence[tuple[str, Sequence[str]]]) -> list[float]:
        """One METEOR score per ``(hypothesis, references)`` pair."""
        return self.score_with_aggregate(pairs)[1]

    @property
    def alive(self) -> bool:
        """Whether the process is running (and not closed)."""
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        """Stop the process (idempotent)."""
        proc = getattr(self, "_proc", None)
        if proc is None:
            return
        with self._lock:
            if proc.stdin and not proc.stdin.closed:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()
            self._stderr.close()
        self._proc = None

    def __enter__(self) -> MeteorScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass


_SHARED: MeteorScorer | None = None
_SHARED_LOCK = threading.Lock()


def shared_meteor() -> MeteorScorer:
    """The session-wide METEOR process, started on first use (and again if it died)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None or not _SHARED.alive:
            _SHARED = MeteorScorer()
        return _SHARED


@atexit.register
def _close_shared() -> None:  # pragma: no cover - runs at exit
    if _SHARED is not None:
        _SHARED.close()

