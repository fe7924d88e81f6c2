"""Tests for dynrefer.regions: region forms, exact geometry rules and validation errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from dynrefer.errors import InputError, RegionError
from dynrefer.regions import (
    Region,
    apply_min_size,
    clip_box,
    mask_to_box,
    parse_region,
    parse_regions,
    xywh_to_xyxy,
)

SIZE = (20, 10)  # (W, H)


def make_mask() -> np.ndarray:
    """A (10, 20) mask covering rows 2..4 and columns 3..8 plus one pixel at (row 6, col 11)."""
    mask = np.zeros((10, 20), dtype=bool)
    mask[2:5, 3:9] = True
    mask[6, 11] = True
    return mask


def uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE counts (column-major runs starting with zeros), computed by hand."""
    flat = mask.flatten(order="F").astype(int)
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return counts


def encode_counts(counts: list[int]) -> str:
    """COCO compressed RLE string of ``counts`` (written from the format description)."""
    chars = []
    for i, count in enumerate(counts):
        value = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            code = value & 0x1F
            value >>= 5
            more = value != -1 if code & 0x10 else value != 0
            chars.append(chr(code + (0x20 if more else 0) + 48))
    return "".join(chars)


def test_encode_counts_matches_pycocotools() -> None:
    mask = make_mask()
    compressed = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert encode_counts(uncompressed_counts(mask)).encode("ascii") == compressed["counts"]


# --------------------------------------------------------------------------- helpers


def test_pure_helpers() -> None:
    assert xywh_to_xyxy([1, 2, 3, 4]) == (1.0, 2.0, 4.0, 6.0)
    assert clip_box((-5, -1, 25, 12), SIZE) == (0.0, 0.0, 20.0, 10.0)
    assert clip_box((2, 3, 4, 5), SIZE) == (2.0, 3.0, 4.0, 5.0)
    assert apply_min_size((5, 5, 5, 5)) == (4.0, 4.0, 5.0, 5.0)
    assert apply_min_size((0, 0, 0, 0)) == (0.0, 0.0, 1.0, 1.0)
    assert apply_min_size((1, 1, 8, 9)) == (1.0, 1.0, 8.0, 9.0)
    assert mask_to_box(make_mask()) == (3.0, 2.0, 12.0, 7.0)
    single = np.zeros((4, 4), dtype=bool)
    single[3, 3] = True
    assert mask_to_box(single) == (3.0, 3.0, 4.0, 4.0)
    with pytest.raises(RegionError, match="empty"):
        mask_to_box(np.zeros((3, 3), dtype=bool))


# --------------------------------------------------------------------------- box forms


@pytest.mark.parametrize(
    "spec",
    [[2, 3, 10, 8], (2.0, 3.0, 10.0, 8.0), np.array([2, 3, 10, 8]), torch.tensor([2.0, 3.0, 10.0, 8.0])],
)
def test_box_forms(spec) -> None:
    region = parse_region(spec, SIZE, index=4)
    assert region == Region(box=(2.0, 3.0, 10.0, 8.0), id=4, source_box=(2.0, 3.0, 10.0, 8.0))
    assert region.mask is None and region.score is None
    assert all(type(v) is float for v in region.box)


def test_xywh_forms() -> None:
    expected = (2.0, 3.0, 12.0, 7.0)
    assert parse_region([2, 3, 10, 4], SIZE, box_format="xywh").box == expected
    assert parse_region({"bbox": [2, 3, 10, 4]}, SIZE).box == expected
    assert parse_region({"bbox": [2, 3, 10, 4]}, SIZE, box_format="xyxy").box == expected
    assert parse_region({"box": [2, 3, 10, 4], "box_format": "xywh"}, SIZE).box == expected
    assert parse_region({"box": [2, 3, 10, 4]}, SIZE, box_format="xywh").box == expected
    assert parse_region({"box": [2, 3, 10, 4]}, SIZE).box == (2.0, 3.0, 10.0, 4.0)


def test_dict_id_score_and_extra_keys() -> None:
    region = parse_region({"box": [1, 1, 5, 5], "id": "cat", "score": 0.75, "caption": "a cat"}, SIZE, index=2)
    assert region.id == "cat" and region.score == 0.75
    assert parse_region({"box": [1, 1, 5, 5], "id": np.int64(9)}, SIZE).id == 9
    assert parse_region({"box": [1, 1, 5, 5], "segmentation": None}, SIZE, index=3).id == 3


def test_invalid_box_format_is_input_error() -> None:
    with pytest.raises(InputError, match="box_format 'cxcywh'"):
        parse_region([1, 1, 2, 2], SIZE, box_format="cxcywh")
    with pytest.raises(RegionError, match=r"region 0: invalid box_format 'yxyx'"):
        parse_region({"box": [1, 1, 2, 2], "box_format": "yxyx"}, SIZE)
    with pytest.raises(InputError, match="image_size"):
        parse_region([1, 1, 2, 2], (0, 10))


# --------------------------------------------------------------------------- clipping and minimum size


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ((-5, -3, 25, 12), (0.0, 0.0, 20.0, 10.0)),
        ((15, 5, 30, 20), (15.0, 5.0, 20.0, 10.0)),
        ((5, 2, 5, 6), (4.0, 2.0, 5.0, 6.0)),  # zero width at x = 5
        ((0, 0, 0, 0), (0.0, 0.0, 1.0, 1.0)),
        ((0, 3, 0.5, 9), (-0.5, 3.0, 0.5, 9.0)),
        ((10.2, 1, 10.7, 2), (10.7 - 1.0, 1.0, 10.7, 2.0)),
        ((20, 10, 20, 10), (19.0, 9.0, 20.0, 10.0)),  # zero extent on the far border
        ((-3, 2, 0.4, 2), (0.4 - 1.0, 1.0, 0.4, 2.0)),  # clipped, then widened to 1 px
        ((3, 4, 3.5, 4.25), (2.5, 3.25, 3.5, 4.25)),
    ],
)
def test_clip_and_min_size(source, expected) -> None:
    region = parse_region(list(source), SIZE)
    assert region.box == expected
    assert region.source_box == tuple(float(v) for v in source)


def test_sub_pixel_box_value() -> None:
    box = parse_region([10.2, 0, 10.7, 5], SIZE).box
    assert box[0] == pytest.approx(9.7, abs=1e-12) and box[2] == 10.7


# --------------------------------------------------------------------------- masks, polygons, RLE


def test_mask_forms_exact_box() -> None:
    mask = make_mask()
    for spec in (mask, torch.from_numpy(mask), {"mask": mask.astype(np.uint8)}, {"mask": mask.tolist()}):
        region = parse_region(spec, SIZE)
        assert region.box == (3.0, 2.0, 12.0, 7.0)  # last column 11 -> x2 = 12, last row 6 -> y2 = 7
        assert np.array_equal(region.mask, mask) and region.mask.dtype == np.bool_
        assert not region.mask.flags.writeable


def test_polygon_forms_box_and_mask() -> None:
    expected = np.zeros((10, 20), dtype=bool)
    expected[1:4, 1:5] = True
    square = [[1, 1], [5, 1], [5, 4], [1, 4]]
    flat = [1, 1, 5, 1, 5, 4, 1, 4]
    for spec in ({"polygon": square}, {"polygon": flat}, {"polygon": [flat]}, {"segmentation": [flat]},
                 {"polygon": np.array(square)}):
        region = parse_region(spec, SIZE)
        assert region.box == (1.0, 1.0, 5.0, 4.0)
        assert np.array_equal(region.mask, expected)


def test_multi_part_polygon() -> None:
    parts = [[[1, 1], [5, 1], [5, 4], [1, 4]], [[10, 5], [14, 5], [14, 9], [10, 9]]]
    region = parse_region({"polygon": parts}, SIZE)
    assert region.box == (1.0, 1.0, 14.0, 9.0)
    expected = np.zeros((10, 20), dtype=bool)
    expected[1:4, 1:5] = True
    expected[5:9, 10:14] = True
    assert np.array_equal(region.mask, expected)
    flat_parts = [[1, 1, 5, 1, 5, 4, 1, 4], [10, 5, 14, 5, 14, 9, 10, 9]]
    assert np.array_equal(parse_region({"segmentation": flat_parts}, SIZE).mask, expected)


def test_polygon_partly_outside_is_clipped() -> None:
    region = parse_region({"polygon": [-5, -5, 5, -5, 5, 4, -5, 4]}, SIZE)
    assert region.source_box == (-5.0, -5.0, 5.0, 4.0)
    assert region.box == (0.0, 0.0, 5.0, 4.0)
    assert region.mask[0:4, 0:5].all() and region.mask.sum() == 20


def test_rle_round_trips() -> None:
    mask = make_mask()
    compressed = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    counts = uncompressed_counts(mask)
    assert sum(counts) == 200
    specs = [
        {"rle": compressed},
        {"segmentation": {"size": [10, 20], "counts": compressed["counts"].decode("ascii")}},
        {"rle": {"size": [10, 20], "counts": counts}},
        {"segmentation": {"size": (10, 20), "counts": np.array(counts)}},
    ]
    for spec in specs:
        region = parse_region(spec, SIZE)
        assert region.box == (3.0, 2.0, 12.0, 7.0)
        assert np.array_equal(region.mask, mask)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ([1, 2, 3], "box must have 4 numbers, got 3"),
        ([1, 2, 3, 4, 5], "box must have 4 numbers, got 5"),
        ([1, "a", 3, 4], "box coordinate 1 is not a number ('a')"),
        ([1, None, 3, 4], "box coordinate 1 is not a number (None)"),
        ([1, True, 3, 4], "box coordinate 1 is not a number (True)"),
        ([float("nan"), 0, 1, 1], "box coordinate 0 is not finite"),
        ([0, 0, float("inf"), 1], "box coordinate 2 is not finite"),
        ([5, 1, 2, 3], "inverted box"),
        ([1, 5, 2, 3], "inverted box"),
        ({"bbox": [1, 1, -1, 2]}, "negative width or height"),
        ({"bbox": [1, 1, 2, -0.5]}, "negative width or height"),
        ([-5, 0, -1, 5], "entirely outside"),  # x2 < 0
        ([21, 0, 25, 5], "entirely outside"),  # x1 > W
        ([20, 0, 25, 5], "entirely outside"),  # positive extent starting at x = W
        ([-5, 0, 0, 5], "entirely outside"),  # positive extent ending at x = 0
        ([0, 10, 5, 12], "entirely outside"),  # y axis
        ([0, -3, 5, -1], "entirely outside"),
        ({"polygon": [30, 0, 40, 0, 40, 5]}, "entirely outside"),
        ({"polygon": [1, 2, 3, 4]}, "fewer than 3 points (2)"),
        ({"polygon": [[1, 2], [3, 4]]}, "fewer than 3 points (2)"),
        ({"polygon": [1, 2, 3, 4, 5, 6, 7]}, "odd number of coordinates (7)"),
        ({"polygon": []}, "polygon must be a non-empty list"),
        ({"polygon": [1, 2, 3, "x", 5, 6]}, "polygon coordinate 3 is not a number"),
        ({"polygon": [[1, 1, 5, 1, 5, 4], [1, 2]]}, "polygon part 1: polygon has fewer than 3 points"),
        ({"mask": np.zeros((10, 20), dtype=bool)}, "empty mask"),
        (np.zeros((10, 20), dtype=bool), "empty mask"),
        ({"mask": np.ones((5, 7), dtype=bool)}, "mask shape (5, 7) does not match the image shape (H, W) = (10, 20)"),
        ({"mask": np.full((10, 20), 2, dtype=np.uint8)}, "only 0 and 1"),
        ({"mask": np.ones((2, 10, 20), dtype=bool)}, "mask must be 2-D"),
        ({"rle": {"size": [5, 7], "counts": [35]}}, "RLE size (5, 7) does not match the image shape (H, W) = (10, 20)"),
        ({"rle": {"counts": "abc"}}, "malformed RLE"),
        ({"rle": [1, 2, 3]}, "malformed RLE"),
        ({"rle": {"size": [10, 20], "counts": ""}}, "malformed RLE: run lengths sum to 0"),
        ({"rle": {"size": [10, 20], "counts": "0"}}, "malformed RLE"),
        ({"rle": {"size": [10, 20], "counts": "!!"}}, "malformed RLE: invalid character"),
        ({"rle": {"size": [10, 20], "counts": "h"}}, "malformed RLE: counts string ends"),
        ({"rle": {"size": [10, 20], "counts": [100, 50]}}, "malformed RLE: run lengths sum to 150"),
        ({"rle": {"size": [10, 20], "counts": encode_counts([100, 50])}}, "malformed RLE: run lengths sum to 150"),
        ({"rle": {"size": [10, 20], "counts": encode_counts([10, 90, 60, 30, -10, 20])}}, "negative run length"),
        ({"rle": {"size": [10, 20], "counts": [100, -5, 105]}}, "malformed RLE"),
        ({"rle": {"size": [10, 20], "counts": [200]}}, "empty mask"),
        ({"rle": {"size": "10x20", "counts": [200]}}, "malformed RLE: 'size'"),
        ({"box": [1, 1, 2, 2], "bbox": [1, 1, 1, 1]}, "found 'box', 'bbox'"),
        ({"caption": "no geometry"}, "found none"),
        ({"box": [1, 1, 2, 2], "score": float("nan")}, "score is not finite"),
        ({"box": [1, 1, 2, 2], "score": "high"}, "score is not a number"),
        ({"box": [1, 1, 2, 2], "id": 1.5}, "id must be an int or a str"),
        ("1 2 3 4", "unsupported region of type str"),
        (42, "unsupported region of type int"),
    ],
)
def test_region_errors(spec, reason: str) -> None:
    with pytest.raises(RegionError) as info:
        parse_region(spec, SIZE, index=3)
    message = str(info.value)
    assert message.startswith("region 3: "), message
    assert reason in message, message
    assert isinstance(info.value, InputError)


def test_error_names_region_id() -> None:
    with pytest.raises(RegionError) as info:
        parse_region({"box": [5, 1, 2, 3], "id": "a"}, SIZE, index=3)
    assert str(info.value).startswith("region 3 (id 'a'): inverted box [5, 1, 2, 3]")
    with pytest.raises(RegionError, match=r"^region 1 \(id 7\): box \[30, 0, 40, 5\] lies entirely outside"):
        parse_regions([[0, 0, 1, 1], {"box": [30, 0, 40, 5], "id": 7}], SIZE)


# --------------------------------------------------------------------------- lists


def test_parse_regions_list() -> None:
    mask = make_mask()
    regions = parse_regions([[1, 1, 4, 4], {"bbox": [0, 0, 2, 2], "id": "x"}, mask], SIZE)
    assert [r.id for r in regions] == [0, "x", 2]
    assert [r.box for r in regions] == [(1.0, 1.0, 4.0, 4.0), (0.0, 0.0, 2.0, 2.0), (3.0, 2.0, 12.0, 7.0)]
    assert parse_regions([], SIZE) == []
    boxes = parse_regions(np.array([[0, 0, 2, 2], [1, 1, 3, 3]]), SIZE, box_format="xywh")
    assert [r.box for r in boxes] == [(0.0, 0.0, 2.0, 2.0), (1.0, 1.0, 4.0, 4.0)]
    assert [r.box for r in parse_regions(torch.tensor([[0, 0, 2, 2]]), SIZE)] == [(0.0, 0.0, 2.0, 2.0)]


def test_duplicate_ids() -> None:
    with pytest.raises(RegionError) as info:
        parse_regions([{"box": [0, 0, 1, 1], "id": "a"}, [1, 1, 2, 2], {"box": [0, 0, 3, 3], "id": "a"}], SIZE)
    assert "duplicate region id 'a'" in str(info.value)
    assert str(info.value).startswith("region 2 (id 'a')") and "region 0" in str(info.value)
    with pytest.raises(RegionError, match="duplicate region id 1"):
        parse_regions([{"box": [0, 0, 1, 1], "id": 1}, [1, 1, 2, 2]], SIZE)
    assert [r.id for r in parse_regions([{"box": [0, 0, 1, 1], "id": "1"}, [1, 1, 2, 2]], SIZE)] == ["1", 1]


def test_parse_regions_rejects_non_lists() -> None:
    with pytest.raises(InputError, match="regions must be a list"):
        parse_regions({"box": [0, 0, 1, 1]}, SIZE)
    with pytest.raises(InputError, match="box_format"):
        parse_regions([[0, 0, 1, 1]], SIZE, box_format="XYXY")


def test_region_is_frozen() -> None:
    region = parse_region({"mask": make_mask()}, SIZE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        region.box = (0.0, 0.0, 1.0, 1.0)  # type: ignore[misc]
    with pytest.raises(ValueError):
        region.mask[0, 0] = True
    assert Region(box=(0.0, 0.0, 1.0, 1.0)).source_box == (0.0, 0.0, 1.0, 1.0)
    assert hash(parse_region([1, 1, 2, 2], SIZE)) == hash(parse_region((1, 1, 2, 2), SIZE))


def test_record_region_with_box_and_rle_mask() -> None:
    """Dataset records carry both a box and an RLE mask: the box is kept, the mask decoded."""
    from pycocotools import mask as mask_utils

    mask = np.zeros((SIZE[1], SIZE[0]), dtype=np.uint8)
    mask[2:5, 3:9] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    region = parse_region({"id": 7, "box": [1.5, 1.0, 9.5, 6.0], "mask": rle, "captions": ["x"]}, SIZE)
    assert region.box == (1.5, 1.0, 9.5, 6.0)
    assert region.id == 7
    assert region.mask is not None and region.mask.sum() == 18
    assert region.mask[2:5, 3:9].all()
    with pytest.raises(RegionError, match="at most one box key"):
        parse_region({"box": [1, 1, 5, 5], "bbox": [1, 1, 4, 4]}, SIZE)
