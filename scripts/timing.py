"""The benchmarks' one timer: medians of interleaved runs after a warm-up (imported by the ``bench_*.py``
scripts, which run with ``scripts/`` on the path)."""

from __future__ import annotations

import statistics
import time


def interleaved(fns: dict, runs: int, *, sync=None, times: dict | None = None) -> dict:
    """Median seconds and last result of each function: ``{name: (seconds, result)}``. After one warm-up call
    each, the timed runs are interleaved (run r of every function before run r + 1 of any), so that a change in
    the machine's speed during the benchmark (shared CPUs) affects every function alike. ``sync``: called after
    each run before the clock stops (e.g. ``torch.cuda.synchronize``); ``times`` (a dict) receives every run's
    seconds."""
    results = {name: fn() for name, fn in fns.items()}
    times = {} if times is None else times
    times.update({name: [] for name in fns})
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            if sync is not None:
                sync()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), results[name]) for name in fns}


def median_seconds(fn, runs: int, *, sync=None) -> float:
    """Median seconds of ``runs`` calls of ``fn`` after one warm-up call."""
    return interleaved({"fn": fn}, runs, sync=sync)["fn"][0]
