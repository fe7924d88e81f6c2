"""dynrefer.metrics.calibration: the reliability table and ECE against an element-by-element count."""

import numpy as np
import pytest

from dynrefer.errors import InputError
from dynrefer.metrics.calibration import DEFAULT_EDGES, reliability


def _slow(probabilities, outcomes, edges):
    """One value at a time: its bin is the last edge at or below it (the top edge belongs to the last bin)."""
    sums = {}
    for p, y in zip(probabilities, outcomes):
        b = max(i for i in range(len(edges) - 1) if edges[i] <= p)
        n, sp, sy = sums.get(b, (0, 0.0, 0.0))
        sums[b] = (n + 1, sp + p, sy + y)
    bins = [(b, n, sp / n, sy / n) for b, (n, sp, sy) in sorted(sums.items())]
    return sum(n * abs(mp - f) for _, n, mp, f in bins) / len(probabilities), bins


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reliability_matches_a_slow_count(seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, 500)
    p[:5] = [0.0, 1.0, 0.5, 0.7, 0.9]  # edges themselves
    y = rng.uniform(0, 1, 500) < p ** 2  # over-confident scores
    out = reliability(p, y)
    ece, bins = _slow(p.tolist(), y.tolist(), DEFAULT_EDGES)
    assert out["ece"] == pytest.approx(ece, abs=1e-4) and out["ece"] > 0.05
    assert [b["count"] for b in out["bins"]] == [n for _, n, _, _ in bins]
    assert sum(b["count"] for b in out["bins"]) == 500
    for row, (b, _, mp, f) in zip(out["bins"], bins):
        assert row["range"] == [DEFAULT_EDGES[b], DEFAULT_EDGES[b + 1]]
        assert row["mean_probability"] == pytest.approx(mp, abs=1e-4)
        assert row["frequency"] == pytest.approx(f, abs=1e-4)


def test_reliability_of_calibrated_scores_is_near_zero():
    rng = np.random.default_rng(5)
    p = rng.uniform(0, 1, 200_000)
    assert reliability(p, rng.uniform(0, 1, p.size) < p)["ece"] < 0.01
    assert reliability([0.25, 0.75], [0, 1], edges=(0, 0.5, 1))["ece"] == 0.25


@pytest.mark.parametrize("p, y, edges, match", [
    ([0.5], [1, 0], DEFAULT_EDGES, "differ in shape"),
    ([[0.5, 0.2, 0.1]], [[1], [0], [0]], DEFAULT_EDGES, "differ in shape"),  # transposed: same size, other pairs
    ([], [], DEFAULT_EDGES, "at least one"),
    ([0.5], [2], DEFAULT_EDGES, "0/1"),
    ([1.5], [1], DEFAULT_EDGES, "lie in"),
    ([float("nan")], [1], DEFAULT_EDGES, "lie in"),
    ([0.5], [1], (0, 0.5, 0.5, 1), "increase"),
])
def test_reliability_refuses_bad_input(p, y, edges, match):
    with pytest.raises(InputError, match=match):
        reliability(p, y, edges)
