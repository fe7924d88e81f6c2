"""How far predicted probabilities are from the observed frequencies: a reliability table and the expected
calibration error (ECE), as used for the text scores of region search (docs/search.md)."""

from __future__ import annotations

import numpy as np

from ..errors import InputError

#: Bin edges of :func:`reliability`'s default table: fine where a search threshold is chosen (0.5–1).
DEFAULT_EDGES = (0.0, 0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def reliability(probabilities, outcomes, edges=DEFAULT_EDGES) -> dict:
    """Bin ``probabilities`` (any shape, in [0, 1]) by ``edges`` (increasing; a bin is ``[lo, hi)``, the last one
    ``[lo, hi]``) against the binary ``outcomes`` of the same shape.

    Returns ``{"ece": e, "bins": [{"range": [lo, hi], "count": n, "mean_probability": p, "frequency": f}, ...]}``:
    per non-empty bin the mean probability and the share of true outcomes; ``ece`` is the count-weighted mean of
    ``|p - f|`` over the bins (0 when every bin's probability matches its frequency)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(outcomes)
    edges = np.asarray(edges, dtype=np.float64)
    if p.shape != y.shape:
        raise InputError(f"probabilities {p.shape} and outcomes {y.shape} differ in shape")
    p, y = p.ravel(), y.ravel()
    if not p.size:
        raise InputError("reliability needs at least one probability")
    if not np.isin(y, (0, 1)).all():
        raise InputError("outcomes must be 0/1 or booleans")
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise InputError(f"edges must increase, got {edges.tolist()}")
    if np.isnan(p).any() or p.min() < edges[0] or p.max() > edges[-1]:
        raise InputError(f"probabilities must lie in [{edges[0]}, {edges[-1]}]")
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    y = y.astype(np.float64)
    bins, gap = [], 0.0
    for b in range(len(edges) - 1):
        inside = which == b
        n = int(inside.sum())
        if not n:
            continue
        mean_p, freq = float(p[inside].mean()), float(y[inside].mean())
        gap += n * abs(mean_p - freq)
        bins.append({"range": [float(edges[b]), float(edges[b + 1])], "count": n,
                     "mean_probability": round(mean_p, 4), "frequency": round(freq, 4)})
    return {"ece": round(gap / p.size, 4), "bins": bins}
