"""pHash (SPEC §1.2): the official flavour against a plain numpy/scipy reference, and the imagehash flavour."""

from __future__ import annotations

import cv2
import imagehash
import numpy as np
import pytest
import scipy.fft
import torch
from conftest import random_boxes
from PIL import Image

from dynrefer.phash import (
    bits_to_hex,
    hamming,
    hex_to_bits,
    phash_imagehash_batched,
    phash_imagehash_single,
    phash_official_batched,
    phash_official_single,
    phash_views,
    rgb_to_gray_official,
)
from dynrefer.views import CANDIDATE_TS, view_geometry

# ----------------------------------------------------------------------------- reference, written here


def ref_gray(rgb: np.ndarray) -> np.ndarray:
    """OpenCV's RGB→GRAY in integer arithmetic, as float32 (H, W)."""
    a = rgb.astype(np.int64)
    return ((9798 * a[..., 0] + 19235 * a[..., 1] + 3735 * a[..., 2] + 16384) >> 15).astype(np.float32)


def _linear_taps(n_in: int, n_out: int):
    """Two-tap INTER_LINEAR taps: half-pixel centres, position rounded to float32, clamped borders."""
    inv_scale = n_out / n_in
    scale = 1.0 / inv_scale
    idx0 = np.empty(n_out, np.int64)
    frac = np.empty(n_out, np.float32)
    for d in range(n_out):
        f = np.float32((d + 0.5) * scale - 0.5)
        s = int(np.floor(f))
        f = np.float32(f - np.float32(s))
        if s < 0:
            s, f = 0, np.float32(0.0)
        if s >= n_in - 1:
            s, f = n_in - 1, np.float32(0.0)
        idx0[d], frac[d] = s, f
    idx1 = np.minimum(idx0 + 1, n_in - 1)
    return idx0, idx1, (np.float32(1.0) - frac).astype(np.float32), frac


def ref_resize_linear(x: np.ndarray, size: int = 224) -> np.ndarray:
    """Bilinear resize to size×size, horizontal pass then vertical pass, float32 throughout."""
    x = np.asarray(x, np.float32)
    h, w = x.shape
    x0, x1, ax0, ax1 = _linear_taps(w, size)
    y0, y1, by0, by1 = _linear_taps(h, size)
    horiz = (x[:, x0] * ax0[None, :] + x[:, x1] * ax1[None, :]).astype(np.float32)  # (h, size)
    out = horiz[y0, :] * by0[:, None] + horiz[y1, :] * by1[:, None]
    return out.astype(np.float32)


def ref_phash_bits(gray: np.ndarray, crop) -> np.ndarray:
    x1, y1, x2, y2 = (int(v) for v in crop)
    resized = ref_resize_linear(gray[y1:y2, x1:x2], 224)
    low = scipy.fft.dctn(resized, norm="ortho")[:8, :8]
    return (low > low.mean()).reshape(-1)


def ref_hex(bits) -> str:
    value = 0
    for b in np.asarray(bits).reshape(-1):
        value = value * 2 + (1 if b else 0)
    return format(value, "016x")


def view_crops(photo, rng, count_boxes: int) -> np.ndarray:
    """Crops of all views (t = 0, 0.1, ..., 1) of random regions plus the photo's named regions' t = 0 and 0.3."""
    ts = (0.0,) + CANDIDATE_TS
    crops = [view_geometry(b, photo.size, ts).crops for b in random_boxes(rng, photo.width, photo.height, count_boxes)]
    crops += [view_geometry(b, photo.size, (0.0, 0.3)).crops for b in photo.boxes.values()]
    return np.concatenate(crops)


# ----------------------------------------------------------------------------- sanity of the reference


def test_reference_resize_matches_cv2_closely(photos):
    gray = ref_gray(photos["chelsea"].array)
    for crop in ([0, 0, 451, 300], [10, 20, 13, 22], [100, 50, 420, 60], [7, 7, 448, 300], [5, 5, 229, 229]):
        x1, y1, x2, y2 = crop
        patch = gray[y1:y2, x1:x2]
        ours = ref_resize_linear(patch)
        theirs = cv2.resize(np.ascontiguousarray(patch), (224, 224), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-3)


def test_official_gray_equals_cv2_and_integer_formula(photos):
    for photo in photos.values():
        want = ref_gray(photo.array)
        cv = cv2.cvtColor(photo.array, cv2.COLOR_RGB2GRAY)
        assert np.array_equal(cv.astype(np.float32), want), photo.name
        from_tensor = rgb_to_gray_official(photo.tensor)
        from_array = rgb_to_gray_official(photo.array)
        assert from_tensor.dtype == np.float32 and from_array.dtype == np.float32
        assert np.array_equal(from_tensor, want) and np.array_equal(from_array, want)
    # Every uint8 colour corner and a sweep of values.
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    arr[0, :8] = [[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)]
    assert np.array_equal(cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY).astype(np.float32), ref_gray(arr))
    assert np.array_equal(rgb_to_gray_official(arr), ref_gray(arr))


# ----------------------------------------------------------------------------- official flavour


def test_official_phash_bit_exact_on_photos(photos):
    rng = np.random.default_rng(11)
    total = 0
    for photo in photos.values():
        gray = ref_gray(photo.array)
        crops = view_crops(photo, rng, 5)
        assert len(crops) >= 60
        want = np.stack([ref_phash_bits(gray, c) for c in crops])
        want_hex = [ref_hex(b) for b in want]
        single = np.stack([phash_official_single(gray[c[1] : c[3], c[0] : c[2]]) for c in crops])
        batched = phash_official_batched(gray, crops)
        batched_tensor = phash_official_batched(torch.from_numpy(gray), crops)
        batched_torch = phash_official_batched(gray, crops, engine="torch")
        batched_opencv = phash_official_batched(gray, crops, engine="opencv")
        assert np.array_equal(batched_opencv, want)
        views = phash_views(photo.tensor, crops, "official")
        assert single.dtype == bool and single.shape == (len(crops), 64)
        assert batched.dtype == bool and batched.shape == (len(crops), 64)
        for i, c in enumerate(crops):
            assert np.array_equal(single[i], want[i]), (photo.name, c.tolist(), "single")
            assert np.array_equal(batched[i], want[i]), (photo.name, c.tolist(), "batched")
            assert np.array_equal(batched_torch[i], want[i]), (photo.name, c.tolist(), "batched torch engine")
        assert np.array_equal(batched_tensor, want)
        assert views == want_hex
        assert [bits_to_hex(b) for b in single] == want_hex
        total += len(crops)
        # The hashes are informative on real photos: many distinct values.
        assert len(set(want_hex)) > len(crops) // 3
    assert total >= 240


def test_official_phash_batched_without_exactness_guard_still_matches_on_most(photos):
    """margin=0 skips the single-path fallback: the resize-then-DCT batched kernel (OpenCV resizes; the CPU
    default for images over 2 MP) alone must already be right almost always. The factorised kernel: below."""
    photo = photos["astronaut"]
    gray = ref_gray(photo.array)
    crops = view_crops(photo, np.random.default_rng(5), 4)
    want = np.stack([ref_phash_bits(gray, c) for c in crops])
    raw = phash_official_batched(gray, crops, margin=0.0, engine="opencv")
    wrong_bits = int((raw != want).sum())
    print(f"[phash] official batched kernel without the guard: {wrong_bits} wrong bits over {len(crops)} hashes")
    assert wrong_bits <= len(crops) // 10


@pytest.mark.parametrize("in_size", [1, 2, 3, 7, 111, 224, 225, 448, 601])
def test_resize_dct_rows_equal_dct_of_cv2_resize(in_size):
    """A_n = D8 · R_n with R_n read off cv2.resize of each unit vector (the slow, obvious reference)."""
    import cv2

    from dynrefer.phash import dct_matrix, resize_dct_rows

    unit = np.eye(in_size, dtype=np.float32)
    columns = [cv2.resize(unit[:, j : j + 1], (1, 224), interpolation=cv2.INTER_LINEAR)[:, 0] for j in range(in_size)]
    want = dct_matrix(224, 8, "ortho") @ np.stack(columns, axis=1).astype(np.float64)
    got = resize_dct_rows(in_size)
    assert got.shape == (8, in_size)
    assert np.abs(got - want).max() < 1e-6


def test_official_phash_factorised_kernel_without_guard(photos):
    """margin=0: the factorised CPU kernel alone gives the reference bits on (nearly) every crop."""
    rng = np.random.default_rng(3)
    wrong = total = 0
    for photo in photos.values():
        gray = ref_gray(photo.array)
        crops = view_crops(photo, rng, 4)
        want = np.stack([ref_phash_bits(gray, c) for c in crops])
        wrong += int((phash_official_batched(gray, crops, margin=0.0, engine="factorised") != want).sum())
        total += len(crops)
    print(f"[phash] factorised kernel without the guard: {wrong} wrong bits over {total} hashes")
    assert wrong <= total // 50


def test_official_factorised_chunks_and_auto_engine(photos, monkeypatch):
    """The factorised blocks equal the resize-then-DCT blocks to rounding, in any chunking; "auto" hashes small
    images with the factorised products and large ones (> 2 MP) with OpenCV resizes, both exact."""
    from dynrefer import phash
    from dynrefer.linear_resize import linear_resize_crops

    photo = photos["coffee"]
    gray = torch.from_numpy(ref_gray(photo.array))
    crops = view_crops(photo, np.random.default_rng(8), 4)
    blocks = phash._official_blocks_factorised(gray, crops)
    resized = phash._low_block(linear_resize_crops(gray, crops, 224, "opencv"), 224, "ortho", fast=False)
    assert torch.allclose(blocks, resized, rtol=0, atol=0.05)  # float32 products; coefficients up to ~6e4
    monkeypatch.setattr(phash, "_PADDED_CHUNK_ELEMS", 7 * 8 * (gray.shape[0] + gray.shape[1]))
    assert torch.equal(phash._official_blocks_factorised(gray, crops), blocks)
    assert phash.auto_engine(gray) == "factorised"
    rng = np.random.default_rng(4)
    big_gray = ref_gray(rng.integers(0, 256, (1500, 2000, 3), dtype=np.uint8))
    assert phash.auto_engine(torch.from_numpy(big_gray)) == "opencv"
    x, y = rng.integers(0, 1500, 12), rng.integers(0, 1000, 12)
    boxes = np.stack([x, y, x + rng.integers(2, 500, 12), y + rng.integers(2, 500, 12)], 1)
    boxes = np.concatenate([boxes, [[0, 0, 2000, 1500]]])
    want = np.stack([ref_phash_bits(big_gray, c) for c in boxes])
    assert np.array_equal(phash_official_batched(big_gray, boxes), want)
    assert np.array_equal(phash_official_batched(big_gray, boxes, engine="factorised"), want)


@pytest.mark.parametrize(
    "value,expected",
    [(1, "8000000000000000"), (128, "8000000000000000"), (255, "8000000000000000"), (0, "0000000000000000")],
)
def test_official_phash_of_constant_images(value, expected):
    arr = np.full((90, 130, 3), value, dtype=np.uint8)
    tensor = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    gray = ref_gray(arr)
    crops = np.array([[0, 0, 130, 90], [3, 4, 4, 5], [10, 10, 120, 20], [50, 0, 51, 90], [1, 1, 113, 113 - 24]])
    for c in crops:
        assert ref_hex(ref_phash_bits(gray, c)) == expected
        assert bits_to_hex(phash_official_single(gray[c[1] : c[3], c[0] : c[2]])) == expected
    assert phash_views(tensor, crops, "official") == [expected] * len(crops)
    assert [bits_to_hex(b) for b in phash_official_batched(gray, crops, engine="torch")] == [expected] * len(crops)


def test_official_phash_of_noise_images():
    rng = np.random.default_rng(2024)
    for shape in ((150, 200), (97, 61)):
        arr = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        tensor = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        gray = ref_gray(arr)
        h, w = shape
        crops = random_boxes(rng, w, h, 30, integer=True).astype(np.int64)
        crops = np.concatenate([crops, [[0, 0, w, h], [0, 0, 1, 1], [w - 2, h - 3, w, h]]])
        want = [ref_hex(ref_phash_bits(gray, c)) for c in crops]
        assert phash_views(tensor, crops, "official") == want
        assert [bits_to_hex(b) for b in phash_official_batched(gray, crops, engine="torch")] == want
        assert [bits_to_hex(phash_official_single(gray[c[1] : c[3], c[0] : c[2]])) for c in crops] == want


def test_official_phash_edge_cases():
    gray = np.zeros((0, 5), np.float32)
    with pytest.raises(ValueError):
        phash_official_single(gray)
    assert phash_official_batched(np.zeros((10, 10), np.float32), np.zeros((0, 4))).shape == (0, 64)
    with pytest.raises(ValueError):
        phash_views(torch.zeros((3, 10, 10), dtype=torch.uint8), [[0, 0, 5, 5]], "md5")
    with pytest.raises(ValueError, match="empty or outside"):
        phash_official_batched(np.zeros((10, 10), np.float32), [[0, 0, 11, 5]])


# ----------------------------------------------------------------------------- imagehash flavour


def test_imagehash_flavour_equals_imagehash_library(photos):
    rng = np.random.default_rng(12)
    for photo in photos.values():
        pil = Image.fromarray(photo.array)
        crops = view_crops(photo, rng, 4)
        want = [str(imagehash.phash(pil.crop(tuple(int(v) for v in c)))) for c in crops]
        single = [bits_to_hex(phash_imagehash_single(pil.crop(tuple(int(v) for v in c)))) for c in crops]
        batched = phash_imagehash_batched(photo.tensor, crops)
        assert batched.dtype == bool and batched.shape == (len(crops), 64)
        assert single == want, photo.name
        for i, c in enumerate(crops):
            assert bits_to_hex(batched[i]) == want[i], (photo.name, c.tolist())
        assert phash_views(photo.tensor, crops, "imagehash") == want
        assert len(set(want)) > len(crops) // 3


def test_imagehash_flavour_torch_engine_close(photos):
    """The tensor resampler differs from Pillow on some tall crops: a few bits may change (slow on CPU: few crops)."""
    photo = photos["chelsea"]
    pil = Image.fromarray(photo.array)
    crops = np.array(
        [
            [10, 10, 11, 11],
            [40, 60, 43, 61],
            [5, 7, 45, 30],
            [100, 100, 190, 190],
            [20, 30, 160, 50],
            [150, 20, 193, 69],  # 43x49
            [60, 30, 116, 113],  # 56x83
            [200, 10, 290, 150],  # 90x140
            [300, 100, 338, 136],
            [250, 150, 390, 290],
            [50, 10, 52, 150],
            [330, 40, 450, 160],
        ]
    )
    want = np.stack([hex_to_bits(str(imagehash.phash(pil.crop(tuple(int(v) for v in c))))) for c in crops])
    got = phash_imagehash_batched(photo.tensor, crops, engine="torch")
    per_hash = (got != want).sum(axis=1)
    print(f"[phash] imagehash flavour, torch engine vs imagehash: {per_hash.mean():.3f} differing bits per hash "
          f"on average (max {per_hash.max()}, {int((per_hash > 0).sum())}/{len(crops)} hashes differ)")
    assert per_hash.mean() < 2
    assert per_hash.max() <= 8
    assert np.array_equal(phash_imagehash_batched(photo.tensor, crops), want)


# ----------------------------------------------------------------------------- bit helpers


def test_bits_hex_round_trip_and_convention():
    rng = np.random.default_rng(9)
    for _ in range(200):
        bits = rng.random(64) < 0.5
        text = bits_to_hex(bits)
        assert len(text) == 16 and text == text.lower()
        assert text == ref_hex(bits)
        assert np.array_equal(hex_to_bits(text), bits)
        assert bits_to_hex(hex_to_bits(text)) == text
        assert bits_to_hex(bits.reshape(8, 8)) == text
    first = np.zeros(64, bool)
    first[0] = True
    assert bits_to_hex(first) == "8000000000000000"
    last = np.zeros(64, bool)
    last[-1] = True
    assert bits_to_hex(last) == "0000000000000001"
    assert bits_to_hex(np.zeros(64, bool)) == "0000000000000000"
    assert bits_to_hex(np.ones(64, bool)) == "ffffffffffffffff"
    assert hex_to_bits("8000000000000000").tolist() == [True] + [False] * 63
    # Same convention as imagehash's str().
    h = imagehash.hex_to_hash("a5c3000000ff0f01")
    assert bits_to_hex(h.hash.reshape(-1)) == "a5c3000000ff0f01"


def test_hamming_counts():
    assert hamming("0000000000000000", "0000000000000000") == 0
    assert hamming("0000000000000000", "ffffffffffffffff") == 64
    assert hamming("8000000000000000", "0000000000000001") == 2
    assert hamming("f0f0f0f0f0f0f0f0", "0f0f0f0f0f0f0f0f") == 64
    assert hamming("0000000000000003", "0000000000000001") == 1
    rng = np.random.default_rng(4)
    for _ in range(100):
        a = rng.random(64) < 0.5
        b = rng.random(64) < 0.5
        want = int((a != b).sum())
        assert hamming(a, b) == want
        assert hamming(bits_to_hex(a), bits_to_hex(b)) == want
        assert hamming(bits_to_hex(a), b) == want
        assert hamming(a, a) == 0
        assert hamming(a, b) == hamming(b, a)


def test_official_guarded_single_path_equals_the_reference(photos, monkeypatch):
    """The batched path's fallback (a coefficient within ``margin`` of its mean) takes the 8×8 block of the
    reference's own ``cv2.resize`` as a float64 product and calls SciPy's DCT only within
    ``REFERENCE_DCT_GUARD`` of the mean. Its assumption, checked: the reference's float32 DCT is within a
    twentieth of the guard of that block; and its bits equal ``phash_official_single`` on every crop, with the guard
    on (few SciPy calls) and off (none)."""
    import cv2

    from dynrefer import phash

    rng = np.random.default_rng(21)
    d = phash.dct_matrix(224, 8, "ortho")
    worst, checked = 0.0, 0
    calls = []
    real_scipy = phash._official_bits_scipy
    monkeypatch.setattr(phash, "_official_bits_scipy", lambda resized: calls.append(1) or real_scipy(resized))
    for photo in photos.values():
        gray = ref_gray(photo.array)
        for c in view_crops(photo, rng, 3):
            part = gray[c[1] : c[3], c[0] : c[2]]
            resized = cv2.resize(np.ascontiguousarray(part), (224, 224), interpolation=cv2.INTER_LINEAR)
            exact = d @ resized.astype(np.float64) @ d.T
            low = scipy.fft.dctn(resized, norm="ortho")[:8, :8]  # phash_official_single, written out
            worst = max(worst, float(np.abs(low - exact).max()))
            want = (low > low.mean()).reshape(-1)
            assert np.array_equal(phash._official_single_guarded(part), want), (photo.name, c.tolist())
            checked += 1
    print(f"[phash] reference float32 DCT vs exact block: max |d| {worst:.3g} over {checked} crops; "
          f"{len(calls)} SciPy fallbacks")
    assert checked >= 150 and worst < phash.REFERENCE_DCT_GUARD / 20
    assert len(calls) < checked // 10
    monkeypatch.setattr(phash, "REFERENCE_DCT_GUARD", 1e12)  # every crop through SciPy: still the same bits
    c = view_crops(photos["coffee"], rng, 1)[3]
    part = ref_gray(photos["coffee"].array)[c[1] : c[3], c[0] : c[2]]
    want = phash.phash_official_single(part)
    calls.clear()
    assert np.array_equal(phash._official_single_guarded(part), want) and len(calls) == 1


def test_official_gray_needs_a_uint8_rgb_tensor():
    from dynrefer.errors import InputError

    for bad in (torch.zeros(3, 4, 5, dtype=torch.int16), torch.zeros(3, 4, 5), torch.zeros(4, 4, 5, dtype=torch.uint8)):
        with pytest.raises(InputError, match="expected a \\(3, H, W\\) uint8 image tensor"):
            rgb_to_gray_official(bad)
