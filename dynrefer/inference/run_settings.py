"""Where ``predict`` keeps a run's settings, so that neither an interrupted run nor a finished output is
completed with other ones (another model, vocabulary, proposals or few-shot classes would mix two runs' regions).

* ``OUT.parts/``: the parts of an interrupted run, one ``rank{N}.jsonl`` a process, and ``settings.json``, written
  at the first run;
* ``OUT.settings.json``: the settings of the finished ``OUT``, moved there from the parts folder when ``OUT`` is
  assembled. An output without it (written before the settings were kept, or cut off before they were moved) is
  completed as before, unchecked, and stays without it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InputError
from ..records import write_json

SETTINGS = "settings.json"
#: Settings that choose which regions a record has, not what is predicted for a region: a finished output's
#: region is kept under other ones when it is the same input region (``predict_inputs.same_region``).
REGION_CHOICE = ("proposals",)


def parts_dir(out: Path) -> Path:
    """The folder of an interrupted run's parts."""
    return out.with_name(out.name + ".parts")


def finished_settings_path(out: Path) -> Path:
    """The settings of the finished output ``out``."""
    return out.with_name(out.name + ".settings.json")


def _read(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _changed(before: dict, settings: dict) -> str:
    """``key: before -> now`` for every setting that differs; for two lists of one length, ``key[i]: ...`` for
    each item that differs."""
    out = []
    for k in sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k)):
        old, new = before.get(k), settings.get(k)
        if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
            out += [f"{k}[{i}]: {_short(a)} -> {_short(b)}" for i, (a, b) in enumerate(zip(old, new)) if a != b]
        else:
            out.append(f"{k}: {_short(old)} -> {_short(new)}")
    return "; ".join(out)


def check_run_settings(out: Path, settings: dict, *, finished: bool = False) -> bool:
    """Refuse to resume an interrupted run, or to keep a finished output's regions (``finished``: some are
    reused), made with settings other than ``settings``; then record ``settings`` for this run.

    Returns whether the output this run assembles holds only regions made with ``settings`` (False when it reuses
    regions of an output whose settings were not kept: those are completed as before, unchecked)."""
    folder = parts_dir(out)
    path = folder / SETTINGS
    settings = json.loads(json.dumps(settings))  # as stored: lists, not tuples
    has_parts = folder.is_dir() and any(p.stat().st_size for p in folder.glob("rank*.jsonl"))
    if has_parts:
        before = _read(path)
        if isinstance(before, dict) and before != settings:
            raise InputError(f"'{folder}' holds an interrupted run made with other settings "
                             f"({_changed(before, settings)}): rerun it with those, or delete the folder to "
                             "start over")
    kept = finished_settings_path(out)
    verified = True
    if finished:
        before = _read(kept)
        if isinstance(before, dict):
            before, now = ({k: v for k, v in d.items() if k not in REGION_CHOICE} for d in (before, settings))
            if before != now:
                raise InputError(f"'{out}' was written with other settings ({_changed(before, now)}) and a rerun "
                                 "would keep its regions: rerun with those, remove it or choose another --out")
        else:
            verified = False
    # (nothing reused: the old output's settings stay until assemble() replaces it, so a run that fails first
    # leaves the old output as checked as it was)
    if not has_parts:  # nothing to resume: this run's settings (a run that failed before any batch leaves no trap)
        write_json(path, settings)
    return verified


def keep_finished_settings(out: Path, verified: bool = True) -> None:
    """``out`` is complete: its run's settings move from the parts folder to :func:`finished_settings_path`, when
    all its regions were made with them (``verified``); else the output is left without settings."""
    path = parts_dir(out) / SETTINGS
    if verified and path.is_file():
        os.replace(path, finished_settings_path(out))
    else:
        path.unlink(missing_ok=True)
        finished_settings_path(out).unlink(missing_ok=True)
