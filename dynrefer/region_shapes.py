"""Validation primitives and region shapes: binary masks, COCO RLE and polygons.

Used by :mod:`dynrefer.regions`; every problem raises
:class:`~dynrefer.errors.RegionError` ``"<label>: <reason>"`` naming the region.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from dynrefer.errors import RegionError
from dynrefer.rle import decode_counts_string


def fail(label: str, reason: str) -> RegionError:
    return RegionError(f"{label}: {reason}")


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def to_float(value: Any, label: str, what: str) -> float:
    """A finite float, or RegionError naming ``what``."""
    if not is_number(value):
        raise fail(label, f"{what} is not a number ({value!r})")
    result = float(value)
    if not math.isfinite(result):
        raise fail(label, f"{what} is not finite ({result})")
    return result


def as_list(value: Any) -> Any:
    """Arrays and tensors to (nested) Python lists; anything else unchanged."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def check_mask(value: Any, image_size: tuple[int, int], label: str) -> np.ndarray:
    """Validate a 2-D bool or 0/1 mask of the image's shape; return a read-only bool copy."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise fail(label, f"mask is not a 2-D array ({exc})") from exc
    if array.ndim != 2:
        raise fail(label, f"mask must be 2-D, got shape {tuple(array.shape)}")
    if array.dtype != np.bool_:
        if array.dtype.kind not in "uif" or not bool(((array == 0) | (array == 1)).all()):
            raise fail(label, f"mask must be boolean or contain only 0 and 1 (dtype {array.dtype})")
    expected = (image_size[1], image_size[0])
    if tuple(array.shape) != expected:
        raise fail(label, f"mask shape {tuple(array.shape)} does not match the image shape (H, W) = {expected}")
    result = np.array(array, dtype=bool, order="C", copy=True)
    if not result.any():
        raise fail(label, "empty mask (no pixel set)")
    result.setflags(write=False)
    return result


def decode(rle: dict) -> np.ndarray:
    """pycocotools decode, silencing its numpy-2 ``__array__`` DeprecationWarning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(rle)


def parse_rle(value: Any, image_size: tuple[int, int], label: str) -> np.ndarray:
    """Validate and decode a COCO RLE dict (compressed or uncompressed counts)."""
    if not isinstance(value, Mapping) or "size" not in value or "counts" not in value:
        raise fail(label, "malformed RLE: expected a dict with 'size' and 'counts'")
    size = as_list(value["size"])
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(is_int(v) and v >= 0 for v in size)):
        raise fail(label, f"malformed RLE: 'size' must be [height, width], got {value['size']!r}")
    height, width = int(size[0]), int(size[1])
    expected = (image_size[1], image_size[0])
    if (height, width) != expected:
        raise fail(label, f"RLE size {(height, width)} does not match the image shape (H, W) = {expected}")
    counts = value["counts"]
    try:
        if isinstance(counts, (str, bytes)):
            raw = counts.encode("ascii") if isinstance(counts, str) else counts
            runs = decode_counts_string(raw)
            rle = {"size": [height, width], "counts": raw}
        else:
            runs = as_list(counts)
            if not isinstance(runs, (list, tuple)) or not all(is_int(v) and v >= 0 for v in runs):
                raise ValueError("'counts' must be a string or a list of non-negative integers")
            runs = [int(v) for v in runs]
            rle = mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width)
        if sum(runs) != height * width:
            raise ValueError(f"run lengths sum to {sum(runs)}, expected {height * width} (= H x W)")
        decoded = decode(rle)
    except (ValueError, UnicodeEncodeError, TypeError, OverflowError) as exc:
        raise fail(label, f"malformed RLE: {exc}") from exc
    return check_mask(decoded.astype(bool), image_size, label)


def polygon_part(part: Any, label: str) -> list[float]:
    """One polygon as a flat coordinate list (validated)."""
    part = as_list(part)
    if not isinstance(part, (list, tuple)):
        raise fail(label, f"polygon must be a list of [x, y] pairs or flat coordinates, got {type(part).__name__}")
    if part and all(isinstance(p, (list, tuple)) for p in part):
        if any(len(p) != 2 for p in part):
            raise fail(label, "polygon points must be [x, y] pairs")
        flat = [c for p in part for c in p]
    else:
        flat = list(part)
    coords = [to_float(v, label, f"polygon coordinate {i}") for i, v in enumerate(flat)]
    if len(coords) % 2:
        raise fail(label, f"polygon has an odd number of coordinates ({len(coords)})")
    if len(coords) < 6:
        raise fail(label, f"polygon has fewer than 3 points ({len(coords) // 2})")
    return coords


def is_pair(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and not any(isinstance(v, (list, tuple)) for v in value)


def parse_polygon(value: Any, label: str) -> list[list[float]]:
    """A polygon (pairs or flat) or a list of polygons, as a list of flat coordinate lists."""
    value = as_list(value)
    if not isinstance(value, (list, tuple)) or not value:
        raise fail(label, "polygon must be a non-empty list of [x, y] pairs, flat coordinates or polygons")
    value = [as_list(v) for v in value]
    if not isinstance(value[0], (list, tuple)) or all(is_pair(p) for p in value):
        return [polygon_part(value, label)]
    if len(value) == 1:
        return [polygon_part(value[0], label)]
    return [polygon_part(p, f"{label}: polygon part {i}") for i, p in enumerate(value)]


def rasterize(parts: list[list[float]], image_size: tuple[int, int]) -> np.ndarray | None:
    """pycocotools rasterisation of a (multi-part) polygon; ``None`` if no pixel is covered."""
    width, height = image_size
    rles = mask_utils.frPyObjects(parts, height, width)
    mask = np.ascontiguousarray(decode(mask_utils.merge(rles)).astype(bool))
    if not mask.any():
        return None
    mask.setflags(write=False)
    return mask
