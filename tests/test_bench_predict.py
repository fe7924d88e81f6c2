"""scripts/bench_predict.py's measuring parts (the benchmark itself is not a test)."""

import numpy as np
import pytest
import torch
from conftest import script_module


@pytest.fixture(scope="module")
def bench():
    with script_module("bench_predict") as module:
        yield module


def _touch(mb: int) -> np.ndarray:
    block = np.empty(mb * 2**20, dtype=np.uint8)
    block[::4096] = 1  # resident, page by page
    return block


def test_peak_memory_sees_an_allocation_and_resets(bench):
    cpu = torch.device("cpu")
    with bench.PeakMemory(cpu) as quiet:
        pass
    with bench.PeakMemory(cpu) as busy:
        block = _touch(300)
        del block
    assert busy.peak >= quiet.peak + 250, (quiet.peak, busy.peak)
    with bench.PeakMemory(cpu) as after:  # the 300 MB of the last context are not this one's peak
        pass
    assert after.peak < busy.peak - 250, (after.peak, busy.peak)


def test_official_style_baseline_gives_the_engine_captions(bench):
    from dynrefer.inference.predictor import Predictor

    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 80, 120), dtype=np.uint8))
    predictor = Predictor("builtin")
    boxes = [[5, 5, 60, 50], [40, 20, 110, 75], [0, 0, 119, 79]]
    engine = [r["caption"] for r in predictor.describe(image, boxes, policy="greedy")["regions"]]
    assert bench.official_style(predictor, image, boxes, chunk=2) == engine
