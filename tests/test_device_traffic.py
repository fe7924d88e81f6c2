"""Device traffic of the tensor renderer (issue #32, item 5 and 8): host-to-device placements counted on the
CPU by a function mode that sees every request to put host data on a device, the renderer's memory, and its
exactness when one call mixes crops resampled in both pass orders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from dynrefer.inference.engine import plan_views, render_plan
from dynrefer.resample import pil_resample_crops
from dynrefer.views import render_crops

ROOT = Path(__file__).resolve().parent.parent


class Placements(TorchFunctionMode):
    """Counts requests to place host data on a device: ``torch.tensor`` / ``torch.as_tensor`` with a
    ``device``, and ``Tensor.to`` / ``Tensor.cuda`` with a device, of a CPU tensor. On a CPU these are
    no-ops, but each one is a blocking host-to-device copy on a GPU."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("tensor", "as_tensor") and kwargs.get("device") is not None:
            self.count += 1
        elif name in ("to", "cuda") and args and isinstance(args[0], torch.Tensor) and args[0].device.type == "cpu":
            device = kwargs.get("device") or next((a for a in args[1:] if isinstance(a, (str, torch.device))), None)
            if device is not None or name == "cuda":
                self.count += 1
        return func(*args, **kwargs)


def _mixed_crops(photo) -> np.ndarray:
    w, h = photo.size
    return np.array([
        [10, 10, 30, 20], [50, 10, 52, 200],  # wide, tall (thin)
        [0, 0, w, h], [w - 250, 0, w, h],  # whole image (wide), 250 x H (tall, downscaled)
        [100, 100, 190, 190], [200, 10, 290, 150],  # square, 90x140
    ])


def test_one_host_to_device_copy_per_resampling_call(photos):
    photo = photos["coffee"]
    crops = _mixed_crops(photo)
    for max_chunk_elems in (24_000_000, 1):  # one chunk per group, one chunk per crop
        with Placements() as seen:
            pil_resample_crops(photo.tensor, crops, 64, "bicubic", max_chunk_elems=max_chunk_elems)
        assert seen.count == 1, (max_chunk_elems, seen.count)


def test_mixed_pass_orders_in_one_call_equal_one_call_per_crop(photos):
    photo = photos["coffee"]
    crops = _mixed_crops(photo)
    each = torch.cat([pil_resample_crops(photo.tensor, c[None], 64, "bicubic") for c in crops])
    assert torch.equal(pil_resample_crops(photo.tensor, crops, 64, "bicubic"), each)
    assert torch.equal(pil_resample_crops(photo.tensor, crops, 64, "bicubic", max_chunk_elems=1), each)
    # Every crop not taller than wide is Pillow's own result, bit for bit.
    from PIL import Image

    pil = Image.fromarray(photo.array)
    for i, c in enumerate(crops):
        if c[3] - c[1] <= c[2] - c[0]:
            want = np.asarray(pil.crop(tuple(int(v) for v in c)).resize((64, 64), Image.Resampling.BICUBIC))
            assert np.array_equal(each[i].permute(1, 2, 0).numpy(), want), c.tolist()


def test_render_plan_places_each_image_and_its_tables_once(photos):
    images = [photos[n].tensor for n in ("chelsea", "coffee", "astronaut")]
    boxes = [[photos[n].boxes[k] for k in ("medium", "tall", "wide", "tiny_2x3")] for n in ("chelsea", "coffee",
                                                                                                 "astronaut")]
    plan = plan_views(images, boxes, num_views=3, size=32, policy="fixed", ts=[0.0, 0.5, 1.0])
    render_plan(images, plan, 32, "cpu")  # the normalisation constants are placed once per device, then kept
    with Placements() as seen:
        torch_px = torch.cat([render_crops(images[i], plan.crops[plan.owner == i], 32, engine="torch")
                              for i in range(3)])
    assert seen.count == 3  # the tables of one resampling call per image
    with Placements() as seen:
        pixels = render_plan(images, plan, 32, "cpu")
    assert seen.count <= 2 * len(images), seen.count  # each image, and (torch engine) its tables
    assert pixels.shape == (plan.unique_crops, 3, 32, 32)
    # Pillow and the tensor engine agree but for a few levels on some crops taller than wide.
    assert float((pixels - torch_px).abs().mean()) <= 1.0 / 255 / 0.26


@pytest.mark.slow
def test_whole_image_crop_memory_is_a_few_times_the_image(tmp_path):
    """A 4000×3000 whole-image crop resampled to 224: the tensor engine used to gather the input rows each
    output row needs (55 per row, int64): +1.3 GB. Each crop row once, in uint8 / int32: well under 300 MB."""
    probe = "\n".join([
        "import resource, torch",
        "from dynrefer.resample import pil_resample_crops",
        "image = torch.randint(0, 256, (3, 3000, 4000), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))",
        "pil_resample_crops(image, [[0, 0, 8, 8]], 224)",
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
        "out = pil_resample_crops(image, [[0, 0, 4000, 3000]], 224)",
        "assert out.shape == (1, 3, 224, 224)",
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)",
    ])
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    extra_mb = float(done.stdout.strip().splitlines()[-1])
    print(f"[resample] 4000x3000 whole-image crop to 224: +{extra_mb:.0f} MB resident")
    assert extra_mb < 300


def test_linear_resize_tables_reach_the_device_in_one_copy_per_chunk(photos):
    from dynrefer.linear_resize import linear_resize_crops

    photo = photos["chelsea"]
    gray = photo.tensor.to(torch.float32).mean(0)
    crops = _mixed_crops(photo)
    with Placements() as seen:
        got = linear_resize_crops(gray, crops, 32, engine="torch")
    assert seen.count == 1
    want = linear_resize_crops(gray, crops, 32, engine="opencv")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)


def test_chunks_bound_the_rows_over_the_column_window():
    """300 small crops spread over a 4000-pixel-wide image: a chunk's rows are copied over its column window
    (min x1 .. max x2), so the bound must count the window, not the widest crop."""
    from dynrefer.resample import _chunks

    xs = np.linspace(0, 3900, 300).astype(np.int64)
    crops = np.stack([xs, np.zeros_like(xs), xs + 100, np.full_like(xs, 100)], 1)
    bound = 24_000_000
    chunks = _chunks(crops, 224, 3, bound)
    assert np.array_equal(np.concatenate(chunks), np.arange(len(crops)))
    for part in chunks:
        c = crops[part]
        window = int(c[:, 2].max() - c[:, 0].min())
        assert len(part) == 1 or len(part) * 3 * int((c[:, 3] - c[:, 1]).max()) * max(window, 224) <= bound


def test_upload_keeps_each_dtype_and_shape():
    from dynrefer.resample import upload

    arrays = [np.arange(6, dtype=np.int32).reshape(2, 3), np.zeros(0, np.int64), np.array([0.5, -1.25], np.float32),
              np.arange(5, dtype=np.int64)]
    for got, want in zip(upload(arrays, "cpu"), arrays):
        assert got.dtype == torch.from_numpy(want).dtype and np.array_equal(got.numpy(), want)
