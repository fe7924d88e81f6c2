"""View rendering (SPEC §1.1): batched renderer vs the official PIL preprocessing, tensor resampler vs Pillow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dynrefer.resample import pil_resample_crops
from dynrefer.views import CLIP_MEAN, CLIP_STD, render_crops, view_geometry

RENDER_TS = (0.0, 0.1, 0.3, 0.6, 1.0)
MEAN_TOL = 1.0 / 255
MAX_TOL = 8.0 / 255


def photo_crops(photo, names=None, ts=RENDER_TS) -> np.ndarray:
    names = list(photo.boxes) if names is None else names
    return np.concatenate([view_geometry(photo.boxes[n], photo.size, ts).crops for n in names])


def pillow_views(array: np.ndarray, crops, size: int, resample) -> np.ndarray:
    """Pillow itself, written here: crop + resize per box → (N, 3, S, S) uint8."""
    pil = Image.fromarray(array)
    out = [np.asarray(pil.crop(tuple(int(v) for v in c)).resize((size, size), resample)) for c in crops]
    return np.stack(out).transpose(0, 3, 1, 2)


def diff_stats(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    d = (a.to(torch.float64) / 255.0 - b.to(torch.float64) / 255.0).abs()
    return float(d.mean()), float(d.max())


# ----------------------------------------------------------------------------- batched vs reference


def test_batched_pillow_engine_matches_reference_exactly(photos):
    for photo in photos.values():
        crops = photo_crops(photo)
        ref = render_crops(photo.tensor, crops, 224, renderer="reference", normalized=False)
        bat = render_crops(photo.tensor, crops, 224, renderer="batched", normalized=False)
        assert ref.dtype == bat.dtype == torch.uint8
        assert ref.shape == bat.shape == (len(crops), 3, 224, 224)
        mean, mx = diff_stats(bat, ref)
        print(f"[renderer] {photo.name}: batched(pillow) vs reference over {len(crops)} views: "
              f"mean |d| = {mean:.3g}, max |d| = {mx:.3g}")
        assert mean <= MEAN_TOL and mx <= MAX_TOL
        assert torch.equal(bat, ref), photo.name
        if photo.name == "chelsea":
            # The reference renderer is Pillow's crop + bicubic resize, literally.
            assert np.array_equal(ref.numpy(), pillow_views(photo.array, crops, 224, Image.Resampling.BICUBIC))


def test_batched_torch_engine_within_tolerance_of_reference(photos):
    """The tensor engine on a subset of regions (it is slow on CPU)."""
    subset = {"chelsea": ["tiny_2x3", "tall", "near_bottom_right"]}
    worst_mean = worst_max = 0.0
    for name, boxes in subset.items():
        photo = photos[name]
        crops = photo_crops(photo, boxes)
        ref = render_crops(photo.tensor, crops, 224, renderer="reference", normalized=False)
        tor = render_crops(photo.tensor, crops, 224, renderer="batched", engine="torch", normalized=False)
        assert tor.dtype == torch.uint8 and tor.shape == ref.shape
        mean, mx = diff_stats(tor, ref)
        worst_mean, worst_max = max(worst_mean, mean), max(worst_max, mx)
        print(f"[renderer] {name}: batched(torch) vs reference over {len(crops)} views: "
              f"mean |d| = {mean:.3g} ({mean * 255:.3g} levels), max |d| = {mx:.3g} ({mx * 255:.3g} levels)")
        assert mean <= MEAN_TOL, (name, mean)
        assert mx <= MAX_TOL, (name, mx)
        # Per view as well: no single view may be off on average by more than a level.
        per_view = (tor.to(torch.float64) - ref.to(torch.float64)).abs().mean(dim=(1, 2, 3)) / 255
        assert float(per_view.max()) <= MEAN_TOL
    print(f"[renderer] torch engine worst: mean {worst_mean * 255:.3g} levels, max {worst_max * 255:.3g} levels")


# ----------------------------------------------------------------------------- tensor resampler vs Pillow


def _wide_crops(photo, large: bool) -> np.ndarray:
    w, h = photo.size
    crops = [
        [10, 10, 11, 11],  # 1 px: pure upscaling
        [40, 60, 43, 61],  # 3x1
        [5, 7, 12, 12],  # 7x5
        [20, 30, 300, 40],  # very wide and thin
        [100, 100, 190, 190],  # square
    ]
    if large:  # downscaling at 224 (cheap enough for bicubic 224; lanczos 32 is slow there on CPU)
        crops += [[0, 0, w, h], [0, h - 230, 240, h]]
    crops = np.array(crops)
    assert ((crops[:, 3] - crops[:, 1]) <= (crops[:, 2] - crops[:, 0])).all()
    return crops


def _tall_crops(photo, large: bool) -> np.ndarray:
    w, h = photo.size
    crops = [
        [50, 10, 52, 200],  # thin, tall
        [100, 20, 143, 69],  # 43x49
        [60, 30, 116, 113],  # 56x83
        [200, 10, 290, 150],  # 90x140
    ]
    if large:  # taller than wide, downscaling both axes at 224
        crops += [[w - 250, 0, w, h], [0, 0, 240, 280]]  # 250 x H and 240x280 (h/w 1.17)
    crops = np.array(crops)
    assert ((crops[:, 3] - crops[:, 1]) > (crops[:, 2] - crops[:, 0])).all()
    return crops


@pytest.mark.parametrize("size,filter_name", [(224, "bicubic"), (32, "lanczos")])
def test_tensor_resampler_bit_exact_with_pillow_when_not_taller_than_wide(photos, size, filter_name):
    resample = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}[filter_name]
    # The torch engine is slow on CPU: one photo at 224, two at 32.
    for name in ("chelsea",) if size > 100 else ("chelsea", "astronaut"):
        photo = photos[name]
        crops = _wide_crops(photo, large=size > 100)
        want = pillow_views(photo.array, crops, size, resample)
        # One call per crop keeps the kernel tables small (and exercises the single-crop path).
        got_each = torch.cat([pil_resample_crops(photo.tensor, c[None], size, filter_name) for c in crops])
        assert got_each.dtype == torch.uint8 and got_each.shape == (len(crops), 3, size, size)
        for i, c in enumerate(crops):
            assert np.array_equal(got_each[i].numpy(), want[i]), (name, filter_name, c.tolist())
        if size < 100:
            # One call with all crops exercises the stacked tables and chunking.
            assert torch.equal(pil_resample_crops(photo.tensor, crops, size, filter_name), got_each)
            chunked = pil_resample_crops(photo.tensor, crops, size, filter_name, max_chunk_elems=1)
            assert torch.equal(chunked, got_each)


@pytest.mark.parametrize("size,filter_name", [(224, "bicubic"), (32, "lanczos")])
def test_tensor_resampler_close_to_pillow_on_tall_crops(photos, size, filter_name):
    resample = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}[filter_name]
    photo = photos["coffee"]
    crops = _tall_crops(photo, large=size > 100)
    want = torch.from_numpy(pillow_views(photo.array, crops, size, resample)).to(torch.int64)
    got = torch.cat([pil_resample_crops(photo.tensor, c[None], size, filter_name) for c in crops]).to(torch.int64)
    d = (got - want).abs()
    exact = int((d.amax(dim=(1, 2, 3)) == 0).sum())
    print(f"[resample] tall crops, {filter_name} {size}: max |d| = {int(d.max())} levels, "
          f"mean |d| = {float(d.float().mean()):.4f} levels, {exact}/{len(crops)} crops exact")
    assert int(d.max()) <= 8
    assert float(d.float().mean()) <= 1.0
    assert float(d.float().mean(dim=(1, 2, 3)).max()) <= 1.0


def test_tensor_resampler_rejects_crops_outside_the_image(photos):
    photo = photos["chelsea"]
    w, h = photo.size
    for bad in ([-1, 0, 5, 5], [0, 0, w + 1, 5], [3, 3, 3, 8], [0, 5, 4, 2]):
        with pytest.raises(ValueError, match="empty or outside"):
            pil_resample_crops(photo.tensor, [bad], 32, "bicubic")


# ----------------------------------------------------------------------------- normalisation and edge cases


def test_normalized_output_is_clip_normalised_pixels(photos):
    photo = photos["astronaut"]
    crops = photo_crops(photo, ["tiny_2x3", "medium", "whole"])
    raw = render_crops(photo.tensor, crops, 224, normalized=False)
    norm = render_crops(photo.tensor, crops, 224, normalized=True)
    assert norm.dtype == torch.float32 and norm.shape == raw.shape
    mean = np.array([0.48145466, 0.4578275, 0.40821073]).reshape(3, 1, 1)
    std = np.array([0.26862954, 0.26130258, 0.27577711]).reshape(3, 1, 1)
    assert np.allclose(CLIP_MEAN, mean.ravel(), rtol=0, atol=0) and np.allclose(CLIP_STD, std.ravel(), rtol=0, atol=0)
    want = (raw.numpy().astype(np.float64) / 255.0 - mean) / std
    np.testing.assert_allclose(norm.numpy(), want, rtol=0, atol=1e-6)
    # The default is normalised, and the reference renderer normalises the same way.
    assert torch.equal(render_crops(photo.tensor, crops, 224), norm)
    ref_norm = render_crops(photo.tensor, crops, 224, renderer="reference")
    np.testing.assert_allclose(ref_norm.numpy(), want, rtol=0, atol=1e-6)


def test_duplicate_crops_give_identical_outputs(photos):
    photo = photos["rocket"]
    base = photo_crops(photo, ["tiny_1px", "medium", "whole"], ts=(0.0, 0.5))
    crops = np.concatenate([base, base[::-1], base[:1], base[:1]])
    out = render_crops(photo.tensor, crops, 64, normalized=False)
    single = render_crops(photo.tensor, base, 64, normalized=False)
    n = len(base)
    assert torch.equal(out[:n], single)
    assert torch.equal(out[n : 2 * n], single.flip(0))
    assert torch.equal(out[2 * n], single[0]) and torch.equal(out[2 * n + 1], single[0])
    ref = render_crops(photo.tensor, crops, 64, renderer="reference", normalized=False)
    assert torch.equal(out, ref)


def test_unique_sorted_crops_come_back_in_order_without_a_gather(photos):
    # An engine plan's crops are unique and sorted already (np.unique order): the batched renderer
    # returns its resampled tensor as it is; any other order goes through the gather.
    photo = photos["coffee"]
    crops = np.unique(photo_crops(photo, ["tiny_2x3", "medium", "whole"], ts=(0.0, 0.3, 1.0)), axis=0)
    assert len(crops) >= 4
    ref = render_crops(photo.tensor, crops, 64, renderer="reference")
    for order in (np.arange(len(crops)), np.arange(len(crops))[::-1]):
        out = render_crops(photo.tensor, crops[order], 64)
        np.testing.assert_allclose(out.numpy(), ref[torch.as_tensor(order.copy())].numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("renderer", ["batched", "reference"])
@pytest.mark.parametrize("normalized", [True, False])
def test_empty_crop_list(photos, renderer, normalized):
    photo = photos["chelsea"]
    for crops in ([], np.zeros((0, 4), dtype=np.int64)):
        out = render_crops(photo.tensor, crops, 224, renderer=renderer, normalized=normalized)
        assert out.shape == (0, 3, 224, 224)
        assert out.dtype == (torch.float32 if normalized else torch.uint8)


def test_unknown_renderer_and_engine_raise(photos):
    photo = photos["chelsea"]
    with pytest.raises(ValueError, match="renderer"):
        render_crops(photo.tensor, [[0, 0, 4, 4]], 16, renderer="fast")
    with pytest.raises(ValueError, match="engine"):
        render_crops(photo.tensor, [[0, 0, 4, 4]], 16, engine="cuda-magic")
