"""Region specifications: boxes, polygons, masks and COCO RLE, parsed into :class:`Region`.

A region is given as a box (4 numbers in ``"xyxy"`` or ``"xywh"`` format), a dict or a 2-D
boolean mask. A dict holds a box (``"box"``, or COCO xywh ``"bbox"``), a shape
(``"polygon"``, ``"mask"`` — a 2-D array or a COCO RLE dict —, ``"rle"`` or
``"segmentation"``), or both, as in dataset records: then the given box is the region box
and the shape its mask.  Parsing validates the input, derives a box,
clips it to the image and applies the minimum-size rule; every problem raises
:class:`~dynrefer.errors.RegionError` whose message names the region (``region 3`` or
``region 3 (id 'a')``) and the reason.

Geometry rules
--------------
* Box of a mask or RLE: the exact pixel extent, ``x1`` = first covered column and
  ``x2`` = last covered column **+ 1** (likewise for y).  The paper's reference implementation
  takes the last covered column itself as ``x2`` (one pixel short); we deliberately do not.
* Box of a polygon: min/max of its vertices; its mask is the pycocotools rasterisation
  (``None`` when the rasterisation covers no pixel, e.g. a degenerate polygon).
* Clipping to ``[0, W] x [0, H]``; a box whose interval misses the image on either axis is
  rejected (a zero-extent box lying on the border is accepted).
* Minimum size (after clipping, per axis, float64): if ``x1 >= x2 - 1`` then
  ``x1 = x2 - 1`` when ``x2 > 0``, else ``x2 = x1 + 1``.  ``x1`` may thus become slightly
  negative (``x2 = 0.5`` gives ``x1 = -0.5``), as in the reference implementation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dynrefer.errors import InputError, RegionError
from dynrefer.region_shapes import (
    as_list,
    check_mask,
    fail,
    is_int,
    parse_polygon,
    parse_rle,
    rasterize,
    to_float,
)

__all__ = ["Region", "parse_region", "parse_regions", "xywh_to_xyxy", "clip_box", "apply_min_size", "mask_to_box"]

Box = tuple[float, float, float, float]
BOX_FORMATS = ("xyxy", "xywh")
BOX_KEYS = ("box", "bbox")
SHAPE_KEYS = ("polygon", "mask", "rle", "segmentation")
GEOMETRY_KEYS = BOX_KEYS + SHAPE_KEYS


@dataclass(frozen=True)
class Region:
    """One parsed region of an image.

    Attributes:
        box: final ``(x1, y1, x2, y2)`` in float pixels, clipped and minimum-size adjusted.
        mask: read-only boolean ``(H, W)`` mask for mask / RLE / polygon regions, else ``None``
            (excluded from equality and repr).
        id: the region id (``int`` or ``str``); defaults to the region's index.
        score: optional input confidence (the output's ``score`` as given).
        objectness: optional proposal objectness in [0, 1]: without ``score``, the output's ``score`` (the
            dense-captioning confidence of a proposal; docs/proposals.md says why not the caption score).
        source_box: the box as given or derived (xyxy), before clipping and minimum size.
    """

    box: Box
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    id: int | str = 0
    score: float | None = None
    source_box: Box | None = None
    objectness: float | None = None

    def __post_init__(self) -> None:
        if self.source_box is None:
            object.__setattr__(self, "source_box", self.box)


def xywh_to_xyxy(box: Sequence[float]) -> Box:
    """Convert ``(x, y, w, h)`` to ``(x1, y1, x2, y2)`` floats."""
    x, y, w, h = (float(v) for v in box)
    return (x, y, x + w, y + h)


def clip_box(box: Sequence[float], image_size: tuple[int, int]) -> Box:
    """Clip an xyxy box to ``[0, W] x [0, H]`` where ``image_size = (W, H)``."""
    width, height = float(image_size[0]), float(image_size[1])
    x1, y1, x2, y2 = (float(v) for v in box)
    return (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height))


def apply_min_size(box: Sequence[float]) -> Box:
    """Enforce the minimum-size rule (see module docstring) on each axis of an xyxy box."""
    out = [float(v) for v in box]
    for lo, hi in ((0, 2), (1, 3)):
        if out[lo] >= out[hi] - 1.0:
            if out[hi] > 0.0:
                out[lo] = out[hi] - 1.0
            else:
                out[hi] = out[lo] + 1.0
    return (out[0], out[1], out[2], out[3])


def mask_to_box(mask: np.ndarray) -> Box:
    """Exact box of a 2-D mask: first covered column/row to last covered column/row + 1."""
    mask = np.asarray(mask, dtype=bool)
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        raise RegionError("mask is empty (no pixel set)")
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def box_outside_image(box, image_size: tuple[int, int]) -> bool:
    """Whether an xyxy ``box`` lies entirely outside an image of ``image_size`` (W, H): the boxes
    :func:`parse_region` rejects (touching the image is enough to be kept, and clipped)."""
    return _box_outside(tuple(float(v) for v in box), image_size)


def _box_outside(box: Box, image_size: tuple[int, int]) -> bool:
    """True when, on either axis, the box interval does not touch the image."""
    x1, y1, x2, y2 = box
    for lo, hi, size in ((x1, x2, image_size[0]), (y1, y2, image_size[1])):
        if hi < 0 or lo > size:
            return True
        if lo < hi and (hi <= 0 or lo >= size):
            return True
    return False


def _check_box_format(box_format: Any) -> str:
    if box_format not in BOX_FORMATS:
        raise InputError(f"invalid box_format {box_format!r}; expected 'xyxy' or 'xywh'")
    return box_format


def _check_image_size(image_size: Any) -> tuple[int, int]:
    ok = isinstance(image_size, Sequence) and len(image_size) == 2
    ok = ok and all(is_int(v) and v > 0 for v in image_size)
    if not ok:
        raise InputError(f"image_size must be (W, H) with positive integers, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def _fmt(box: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def _parse_box(value: Any, box_format: str, label: str) -> Box:
    """Validate 4 numbers in ``box_format`` and return the xyxy box."""
    values = as_list(value)
    if not isinstance(values, (list, tuple)):
        raise fail(label, f"box must be a sequence of 4 numbers, got {type(value).__name__}")
    if len(values) != 4:
        raise fail(label, f"box must have 4 numbers, got {len(values)}")
    nums = [to_float(v, label, f"box coordinate {i}") for i, v in enumerate(values)]
    if box_format == "xywh":
        if nums[2] < 0 or nums[3] < 0:
            raise fail(label, f"negative width or height in xywh box {_fmt(nums)}")
        return xywh_to_xyxy(nums)
    if nums[2] < nums[0] or nums[3] < nums[1]:
        raise fail(label, f"inverted box {_fmt(nums)} (x2 < x1 or y2 < y1)")
    return (nums[0], nums[1], nums[2], nums[3])


def _finish(source: Box, image_size: tuple[int, int], label: str, **fields: Any) -> Region:
    """Reject boxes outside the image, clip, apply the minimum size and build the Region."""
    if _box_outside(source, image_size):
        raise fail(label, f"box {_fmt(source)} lies entirely outside the image ({image_size[0]}x{image_size[1]})")
    box = apply_min_size(clip_box(source, image_size))
    return Region(box=box, source_box=source, **fields)


def _parse_dict(spec: Mapping, image_size: tuple[int, int], box_format: str, index: int) -> Region:
    label = f"region {index}"
    rid: int | str = index
    if spec.get("id") is not None:
        raw_id = spec["id"]
        if not (is_int(raw_id) or isinstance(raw_id, str)):
            raise fail(label, f"id must be an int or a str, got {type(raw_id).__name__}")
        rid = raw_id if isinstance(raw_id, str) else int(raw_id)
        label = f"region {index} (id {rid!r})"
    score = None
    if spec.get("score") is not None:
        score = to_float(spec["score"], label, "score")
    objectness = None
    if spec.get("objectness") is not None:
        objectness = to_float(spec["objectness"], label, "objectness")
        if not 0.0 <= objectness <= 1.0:
            raise fail(label, f"objectness must lie in [0, 1], got {objectness}")
    box_keys = [k for k in BOX_KEYS if spec.get(k) is not None]
    shape_keys = [k for k in SHAPE_KEYS if spec.get(k) is not None]
    if len(box_keys) > 1 or len(shape_keys) > 1 or not (box_keys or shape_keys):
        found = ", ".join(repr(k) for k in box_keys + shape_keys) if box_keys or shape_keys else "none"
        raise fail(
            label,
            "expected at most one box key among 'box', 'bbox' and at most one shape key among "
            f"'polygon', 'mask', 'rle', 'segmentation' (at least one in all); found {found}",
        )
    source = None
    if box_keys:
        if box_keys[0] == "box":
            fmt = spec.get("box_format", box_format)
            if fmt not in BOX_FORMATS:
                raise fail(label, f"invalid box_format {fmt!r}; expected 'xyxy' or 'xywh'")
            source = _parse_box(spec["box"], fmt, label)
        else:
            source = _parse_box(spec["bbox"], "xywh", label)
    mask = None
    if shape_keys:
        key = shape_keys[0]
        value = spec[key]
        if key == "rle" or (key in ("segmentation", "mask") and isinstance(value, Mapping)):
            mask = parse_rle(value, image_size, label)
            shape_box = mask_to_box(mask)
        elif key == "mask":
            mask = check_mask(value, image_size, label)
            shape_box = mask_to_box(mask)
        else:
            parts = parse_polygon(value, label)
            xs = [c for p in parts for c in p[0::2]]
            ys = [c for p in parts for c in p[1::2]]
            shape_box = (min(xs), min(ys), max(xs), max(ys))
            if not _box_outside(shape_box, image_size):  # else _finish raises; skip rasterising
                mask = rasterize(parts, image_size)
        if source is None:
            source = shape_box
    return _finish(source, image_size, label, mask=mask, id=rid, score=score, objectness=objectness)


def parse_region(spec: Any, image_size: tuple[int, int], *, box_format: str = "xyxy", index: int = 0) -> Region:
    """Parse one region specification.

    Args:
        spec: 4 numbers (sequence, array or tensor) in ``box_format``; a dict with a box
            (``"box"`` in ``box_format`` unless the dict has ``"box_format"``, or ``"bbox"`` in
            COCO xywh) and/or a shape (``"polygon"``, ``"mask"`` as a 2-D array or RLE dict,
            ``"rle"``, or ``"segmentation"`` holding a COCO RLE dict or polygon list; without a
            box the shape's exact box is used), optional ``"id"``, ``"score"`` and ``"objectness"``, other keys
            being ignored; or a 2-D mask array/tensor (boolean, or 0/1 of the image's shape).
        image_size: ``(W, H)`` of the image.
        box_format: ``"xyxy"`` or ``"xywh"``.
        index: position of the region, used as default id and in error messages.

    Raises:
        InputError: invalid ``box_format`` or ``image_size``.
        RegionError: invalid region; the message names the region and the reason.
    """
    box_format = _check_box_format(box_format)
    size = _check_image_size(image_size)
    label = f"region {index}"
    if isinstance(spec, Mapping):
        return _parse_dict(spec, size, box_format, index)
    if isinstance(spec, torch.Tensor):
        spec = spec.detach().cpu().numpy()
    if isinstance(spec, np.ndarray) and spec.ndim == 2 and (spec.dtype == np.bool_ or spec.shape == (size[1], size[0])):
        # a boolean mask, or a 0/1 mask of the image's shape (check_mask names other values)
        mask = check_mask(spec, size, label)
        return _finish(mask_to_box(mask), size, label, mask=mask, id=index)
    if isinstance(spec, (np.ndarray, list, tuple)):
        return _finish(_parse_box(spec, box_format, label), size, label, id=index)
    kind = type(spec).__name__
    raise fail(label, f"unsupported region of type {kind}; expected 4 numbers, a dict or a 2-D boolean mask")


def parse_regions(specs: Any, image_size: tuple[int, int], *, box_format: str = "xyxy") -> list[Region]:
    """Parse a list of region specifications (see :func:`parse_region`).

    ``specs`` may be a list/tuple of specs or an array/tensor whose first axis indexes the
    regions (e.g. ``(N, 4)`` boxes).  Ids default to the list index and must be unique.

    Raises:
        InputError: ``specs`` is not a list, or invalid ``box_format`` / ``image_size``.
        RegionError: an invalid region, or a duplicate id (the message names both regions).
    """
    box_format = _check_box_format(box_format)
    size = _check_image_size(image_size)
    is_array = isinstance(specs, (np.ndarray, torch.Tensor)) and specs.ndim >= 1
    if not (is_array or isinstance(specs, (list, tuple))):
        raise InputError(f"regions must be a list of region specifications, got {type(specs).__name__}")
    regions: list[Region] = []
    seen: dict[int | str, int] = {}
    for index, spec in enumerate(specs):
        region = parse_region(spec, size, box_format=box_format, index=index)
        if region.id in seen:
            raise RegionError(
                f"region {index} (id {region.id!r}): duplicate region id {region.id!r} "
                f"(already used by region {seen[region.id]})"
            )
        seen[region.id] = index
        regions.append(region)
    return regions
