"""On a CUDA device (``gpu`` marker; skipped elsewhere): half precision where torchvision's kernels have no
bfloat16 and results that must not depend on the batch (issue 32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynrefer.inference.engine import Engine
from dynrefer.model.config import tiny_config
from dynrefer.model.dynrefer import DynRefer
from dynrefer.regions import parse_regions

pytestmark = pytest.mark.gpu
BOXES = [[40.5, 30.25, 200.0, 180.0], [300.0, 100.0, 500.0, 390.0], [10, 10, 60, 70], [100, 200, 300, 380],
         [5.5, 250.25, 120.0, 399.0]]


def _model():
    torch.manual_seed(0)
    return DynRefer(tiny_config(), tags=["red", "circle", "blue"], categories=["circle", "square", "star"]).eval()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_model_with_few_regions_runs_on_cuda(photos, dtype):
    """Five regions or fewer took torchvision's roi_align in bfloat16, which its CUDA kernel does not have."""
    photo = photos["coffee"]
    regions = [parse_regions(BOXES[:1], photo.size)]
    cpu, _ = Engine(_model()).run([photo.tensor], regions, tasks=("category", "tags"), all_tags=True)
    gpu, _ = Engine(_model().to("cuda", dtype)).run([photo.tensor], regions, tasks=("category", "tags"), all_tags=True)
    assert gpu[0][0]["category"][0] == cpu[0][0]["category"][0]
    assert max(abs(a[1] - b[1]) for a, b in zip(sorted(cpu[0][0]["tags"]), sorted(gpu[0][0]["tags"]))) < 0.05


@pytest.mark.parametrize("autocast", ["bfloat16", None])
def test_cuda_results_do_not_depend_on_the_batch(photos, autocast):
    photo = photos["coffee"]
    model = _model().to("cuda") if autocast else _model().to("cuda", torch.bfloat16)
    engine = Engine(model, dtype=autocast)
    together, _ = engine.run([photo.tensor], [parse_regions(BOXES, photo.size)], tasks=("category", "tags"),
                             all_tags=True)
    for k, box in enumerate(BOXES):
        alone, _ = engine.run([photo.tensor], [parse_regions([box], photo.size)], tasks=("category", "tags"),
                              all_tags=True)
        assert alone[0][0]["category"] == together[0][k]["category"]
        assert alone[0][0]["tags"] == together[0][k]["tags"]


def test_tensor_renderer_on_cuda_equals_the_cpu_bit_for_bit(photos):
    """Integer arithmetic (Pillow's fixed point, int32): the GPU renderer gives the CPU tensor kernel's bytes."""
    from dynrefer.resample import pil_resample_crops
    from dynrefer.views import view_geometry

    photo = photos["astronaut"]
    crops = np.concatenate([view_geometry(photo.boxes[n], photo.size, (0.0, 0.3, 1.0)).crops
                            for n in ("medium", "tall", "wide", "tiny_2x3")])
    cpu = pil_resample_crops(photo.tensor, crops, 224)
    gpu = pil_resample_crops(photo.tensor.cuda(), crops, 224)
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)


def test_auto_precision_is_bfloat16_on_cuda():
    from dynrefer.inference.engine import Engine

    model = DynRefer(tiny_config(), tags=["red"]).to("cuda")
    assert Engine(model, dtype="auto").autocast_dtype == ("bfloat16" if torch.cuda.get_device_capability()[0] >= 8
                                                          else None)
