"""View geometry (SPEC §1.1): official float32 view boxes, integer crops, boxes in view frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_boxes

from dynrefer.regions import parse_region
from dynrefer.views import (
    CANDIDATE_TS,
    DEFAULT_SIZE,
    box_from_view,
    boxes_in_view,
    crop_boxes,
    view_boxes,
    view_geometry,
)

ALL_TS = (0.0,) + CANDIDATE_TS
SIZES = [(512, 512), (600, 400), (451, 300), (640, 427), (640, 480), (1, 1), (3, 700), (700, 2)]


def official_view_boxes(box, image_size, ts) -> np.ndarray:
    """The reference arithmetic, literally: float32 arrays, ``b + (I - b) * np.float32(t)`` per t."""
    w, h = image_size
    b = np.array(box, dtype=np.float32)
    full = np.array([0, 0, w, h], dtype=np.float32)
    return np.stack([b + (full - b) * np.float32(t) for t in ts])


def truncated_crop(box_t, image_size) -> np.ndarray:
    w, h = image_size
    return np.trunc(np.clip(np.asarray(box_t, np.float32), 0, np.array([w, h, w, h], np.float32))).astype(np.int64)


def _random_cases(seed: int, per_size: int = 60):
    rng = np.random.default_rng(seed)
    for w, h in SIZES:
        if w < 2 or h < 2:
            yield (w, h), np.array([[0.0, 0.0, float(w), float(h)]])
            continue
        yield (w, h), random_boxes(rng, w, h, per_size // 2)
        yield (w, h), random_boxes(rng, w, h, per_size // 2, integer=True)


# ----------------------------------------------------------------------------- view boxes


def test_view_boxes_equal_official_float32_arithmetic_bit_for_bit():
    checked = 0
    for image_size, boxes in _random_cases(0):
        for box in boxes:
            got = view_boxes(box, image_size, ALL_TS)
            want = official_view_boxes(box, image_size, ALL_TS)
            assert got.dtype == np.float32
            assert got.shape == (len(ALL_TS), 4)
            # Bit-level equality (not just ==, which would hide -0.0 / NaN differences).
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (box, image_size)
            checked += 1
    assert checked > 400


def test_view_boxes_single_t_and_float32_input_of_t():
    # A single scalar t behaves like a one-element list, and t is rounded to float32 first.
    box, size = (437.0, 310.0, 577.0, 377.0), (640, 480)
    got = view_boxes(box, size, 0.6)
    assert got.shape == (1, 4)
    assert np.array_equal(got, official_view_boxes(box, size, [0.6]))


def test_lerp_style_arithmetic_would_change_integer_crops():
    """The reason the spec insists on ``b + (I − b)·t``: lerp-style arithmetic changes a crop."""
    box, size, t = (437.0, 310.0, 577.0, 377.0), (640, 480), 0.6
    b = np.array(box, np.float32)
    full = np.array([0, 0, *size], np.float32)
    tf = np.float32(t)
    official = b + (full - b) * tf
    numpy_lerp = b * (np.float32(1) - tf) + full * tf
    torch_lerp = torch.lerp(torch.from_numpy(b), torch.from_numpy(full), float(tf)).numpy()
    # y1 = 310 + (0 - 310) * 0.6f is exactly 124 in the official arithmetic, 123.99999 in the others.
    assert official[1] == np.float32(124.0)
    assert numpy_lerp[1] < 124.0 and torch_lerp[1] < 124.0
    official_crop = truncated_crop(official, size)
    assert (truncated_crop(numpy_lerp, size) != official_crop).any()
    assert (truncated_crop(torch_lerp, size) != official_crop).any()
    # The library follows the official arithmetic.
    geom = view_geometry(box, size, [t])
    assert geom.crops[0].tolist() == official_crop.tolist() == [174, 124, 614, 438]
    assert np.array_equal(geom.box_t[0], official)


def test_lerp_differs_from_official_on_random_boxes_somewhere():
    """Search a fixed random set: lerp-style arithmetic changes at least one integer crop there too."""
    rng = np.random.default_rng(7)
    size = (640, 480)
    differing = 0
    for box in random_boxes(rng, *size, 100, integer=True):
        official = official_view_boxes(box, size, ALL_TS)
        b = np.array(box, np.float32)
        full = np.array([0, 0, *size], np.float32)
        for k, t in enumerate(ALL_TS):
            tf = np.float32(t)
            lerp = b * (np.float32(1) - tf) + full * tf
            if (truncated_crop(lerp, size) != truncated_crop(official[k], size)).any():
                differing += 1
        assert np.array_equal(view_geometry(box, size, ALL_TS).crops, truncated_crop(official, size))
    assert differing > 0


# ----------------------------------------------------------------------------- crop properties


def test_crop_properties_over_random_boxes_and_all_candidate_ts():
    count = 0
    for (w, h), boxes in _random_cases(1):
        for box in boxes:
            geom = view_geometry(box, (w, h), ALL_TS)
            crops = geom.crops
            assert crops.dtype == np.int64 and crops.shape == (len(ALL_TS), 4)
            np.testing.assert_array_equal(geom.ts, np.array(ALL_TS))
            # t = 0 is the region box truncated (boxes here are inside the image, >= 1 px).
            assert crops[0].tolist() == np.trunc(np.asarray(box, np.float32)).astype(np.int64).tolist()
            if all(float(v).is_integer() for v in box):
                assert crops[0].tolist() == [int(v) for v in box]
                np.testing.assert_allclose(geom.box_in_view[0], [0, 0, DEFAULT_SIZE, DEFAULT_SIZE], rtol=0, atol=1e-9)
            # t = 1 is the whole image.
            assert crops[-1].tolist() == [0, 0, w, h]
            # Inside the image, at least one pixel wide and high.
            assert (crops[:, 0] >= 0).all() and (crops[:, 1] >= 0).all()
            assert (crops[:, 2] <= w).all() and (crops[:, 3] <= h).all()
            assert (crops[:, 2] - crops[:, 0] >= 1).all() and (crops[:, 3] - crops[:, 1] >= 1).all()
            # Nested: each crop contains the previous one.
            assert (np.diff(crops[:, 0]) <= 0).all() and (np.diff(crops[:, 1]) <= 0).all()
            assert (np.diff(crops[:, 2]) >= 0).all() and (np.diff(crops[:, 3]) >= 0).all()
            # Equal to the official arithmetic, clipped and truncated.
            np.testing.assert_array_equal(crops, truncated_crop(official_view_boxes(box, (w, h), ALL_TS), (w, h)))
            # box_in_view maps back to the region box.
            back = box_from_view(geom.box_in_view, crops, DEFAULT_SIZE)
            np.testing.assert_allclose(back, np.tile(np.asarray(box, np.float64), (len(ALL_TS), 1)), rtol=0, atol=1e-9)
            count += 1
    assert count > 400


def test_box_in_view_of_integer_box_at_t0_is_exactly_the_full_view():
    """An integer region box is its own t = 0 crop, so it must fill the view exactly: (0, 0, S, S)."""
    bad = []
    for wd in range(1, 60):
        for ht in (1, 3, 7, 49, 97):
            box = (5.0, 6.0, 5.0 + wd, 6.0 + ht)
            for s in (224, 32):
                v = view_geometry(box, (100, 120), [0.0], size=s).box_in_view[0]
                if v.tolist() != [0.0, 0.0, float(s), float(s)]:
                    bad.append((box, s, v.tolist()))
    assert not bad, f"{len(bad)} integer boxes not mapped exactly to (0, 0, S, S), e.g. {bad[:3]}"


def test_box_in_view_formula_and_size_parameter():
    box = (12.3, 30.25, 40.75, 90.0)
    size = (200, 150)
    for s in (224, 32, 1):
        geom = view_geometry(box, size, ALL_TS, size=s)
        assert geom.size == s
        for c, v in zip(geom.crops.tolist(), geom.box_in_view):
            cw, ch = c[2] - c[0], c[3] - c[1]
            want = [
                (box[0] - c[0]) * s / cw,
                (box[1] - c[1]) * s / ch,
                (box[2] - c[0]) * s / cw,
                (box[3] - c[1]) * s / ch,
            ]
            np.testing.assert_allclose(v, want, rtol=1e-15, atol=1e-12)
        np.testing.assert_allclose(boxes_in_view(box, geom.crops, s), geom.box_in_view, rtol=0, atol=0)
    # Float precision is kept (the official implementation truncates; we must not).
    v0 = view_geometry(box, size, [0.0]).box_in_view[0]
    assert v0[0] == pytest.approx(0.3 * 224 / 28)
    assert not float(v0[0]).is_integer()


def test_photo_region_boxes(photos):
    """The shared region set of every photo: all crops valid, t = 0 / t = 1 as specified."""
    for photo in photos.values():
        w, h = photo.size
        for name, box in photo.boxes.items():
            geom = view_geometry(box, photo.size, ALL_TS)
            c = geom.crops
            assert (c[:, 0] >= 0).all() and (c[:, 1] >= 0).all() and (c[:, 2] <= w).all() and (c[:, 3] <= h).all()
            assert (c[:, 2] > c[:, 0]).all() and (c[:, 3] > c[:, 1]).all(), (photo, name, c)
            assert c[-1].tolist() == [0, 0, w, h]
            back = box_from_view(geom.box_in_view, c)
            np.testing.assert_allclose(back, np.tile(np.asarray(box), (len(ALL_TS), 1)), rtol=0, atol=1e-9)
        assert view_geometry(photo.boxes["whole"], photo.size, ALL_TS).crops.tolist() == [[0, 0, w, h]] * len(ALL_TS)
        assert view_geometry(photo.boxes["tiny_1px"], photo.size, [0.0]).crops.tolist() == [[10, 10, 11, 11]]


# ----------------------------------------------------------------------------- degenerate boxes


def test_subpixel_box_at_border_gives_nonempty_crop():
    size = (40, 30)
    region = parse_region([0, 3, 0.5, 7], size)
    assert region.box == (-0.5, 3.0, 0.5, 7.0)
    geom = view_geometry(region.box, size, ALL_TS)
    c = geom.crops
    assert c[0].tolist() == [0, 3, 1, 7]
    assert ((c[:, 2] - c[:, 0]) >= 1).all() and ((c[:, 3] - c[:, 1]) >= 1).all()
    assert (c[:, 0] >= 0).all() and (c[:, 2] <= 40).all()
    assert c[-1].tolist() == [0, 0, 40, 30]
    back = box_from_view(geom.box_in_view, c)
    np.testing.assert_allclose(back, np.tile(np.asarray(region.box), (len(ALL_TS), 1)), rtol=0, atol=1e-9)
    # Region box in the t = 0 view: x from -0.5 px to 0.5 px of a 1-px crop scaled to 224.
    np.testing.assert_allclose(geom.box_in_view[0], [-112.0, 0.0, 112.0, 224.0], rtol=0, atol=1e-9)


def test_subpixel_box_at_far_border_gives_nonempty_crop():
    size = (40, 30)
    region = parse_region([39.7, 29.4, 40, 30], size)
    assert region.box == (39.0, 29.0, 40.0, 30.0)
    assert view_geometry(region.box, size, [0.0]).crops.tolist() == [[39, 29, 40, 30]]
    # A raw view box beyond the image edge is clipped and still at least one pixel.
    assert crop_boxes(np.array([[40.0, 30.0, 40.5, 30.5]], np.float32), size).tolist() == [[39, 29, 40, 30]]
    assert crop_boxes(np.array([[-1.0, -2.0, 0.25, 0.5]], np.float32), size).tolist() == [[0, 0, 1, 1]]


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("bad", [-0.1, 1.1, -1e-9, 1.0000001, float("nan"), float("inf"), -float("inf")])
def test_view_geometry_rejects_t_outside_unit_interval(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        view_geometry((1, 2, 10, 20), (50, 40), [0.0, bad])


def test_view_geometry_accepts_bounds_and_empty_list():
    geom = view_geometry((1, 2, 10, 20), (50, 40), [0.0, 1.0])
    assert geom.crops.tolist() == [[1, 2, 10, 20], [0, 0, 50, 40]]
    empty = view_geometry((1, 2, 10, 20), (50, 40), [])
    assert empty.crops.shape == (0, 4) and empty.box_in_view.shape == (0, 4)
def test_view_geometries_match_the_reference_arithmetic_region_by_region():
    from dynrefer.views import view_geometries

    rng = np.random.default_rng(5)
    size = (613, 389)
    x1, y1 = rng.uniform(-20, 600, 40), rng.uniform(-20, 380, 40)
    boxes = np.stack([x1, y1, x1 + rng.uniform(0, 90, 40), y1 + rng.uniform(0, 70, 40)], 1)
    boxes[:3] = [[0, 0, 613, 389], [5.5, 7.25, 5.5, 7.25], [600, 380, 640, 420]]  # whole image, empty, past the edge
    ts_rows = rng.choice([0.0, 0.1, 0.3, 0.7, 1.0], size=(40, 3))
    for ts in ((0.0, 0.1, 0.5, 1.0), ts_rows):
        many = view_geometries(boxes, size, ts, 64)
        assert len(many) == len(boxes)
        for r, geom in enumerate(many):
            ts_r = ts if np.ndim(ts) == 1 else ts[r]
            want_bt = official_view_boxes(boxes[r], size, ts_r)
            assert geom.box_t.dtype == np.float32 and np.array_equal(geom.box_t, want_bt), r
            assert np.array_equal(geom.crops, crop_boxes(want_bt, size)), r
            np.testing.assert_array_equal(geom.ts, np.asarray(ts_r, dtype=np.float64))
            for c, v in zip(geom.crops.tolist(), geom.box_in_view):
                cw, ch = c[2] - c[0], c[3] - c[1]
                want = [(boxes[r, 0] - c[0]) * 64 / cw, (boxes[r, 1] - c[1]) * 64 / ch,
                        (boxes[r, 2] - c[0]) * 64 / cw, (boxes[r, 3] - c[1]) * 64 / ch]
                np.testing.assert_array_equal(v, want)
            one = view_geometry(boxes[r], size, ts_r, 64)
            assert np.array_equal(one.crops, geom.crops) and np.array_equal(one.box_in_view, geom.box_in_view)
    with pytest.raises(ValueError, match="must lie in"):
        view_geometries(boxes[:2], size, (0.0, 1.5))


def test_normalize_values_and_inputs():
    """CLIP normalisation of uint8 RGB views (the fast in-place path) and of other inputs (a float tensor
    that needs gradients, a one-channel map broadcast over the three channels) as the formula."""
    from dynrefer.views import CLIP_MEAN, CLIP_STD, normalize

    def formula(x):
        mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        std = torch.tensor(CLIP_STD).view(3, 1, 1)
        return (x.to(torch.float64) / 255 - mean.double()) / std.double()

    u8 = torch.randint(0, 256, (2, 3, 5, 4), dtype=torch.uint8)
    before = u8.clone()
    torch.testing.assert_close(normalize(u8).double(), formula(u8), rtol=0, atol=1e-6)
    assert torch.equal(u8, before)
    f = u8.float().requires_grad_()
    out = normalize(f)
    out.sum().backward()
    assert f.grad is not None and torch.allclose(out.detach().double(), formula(u8), atol=1e-6)
    one = torch.randint(0, 256, (1, 5, 4), dtype=torch.uint8)
    assert normalize(one).shape == (3, 5, 4)
