"""COCO ``segmentation`` fields → compressed RLE masks for the project records.

Accepted (the COCO formats): a list of polygons ``[[x1, y1, x2, y2, ...], ...]`` (merged
into one mask), an uncompressed RLE ``{"size": [H, W], "counts": [run, ...]}`` (crowd
annotations) or a compressed RLE ``{"size": [H, W], "counts": "..."}``. Output:
``{"size": [H, W], "counts": str}``, what :mod:`dynrefer.regions` reads. Everything is checked
before pycocotools sees it (a polygon far outside the image or run lengths that do not add up
to ``H × W`` would make it allocate without bound or return garbage).
"""

from __future__ import annotations

import math

from ..errors import InputError
from ..rle import decode_counts_string


def _polygons(seg: list, width: int, height: int) -> list[list[float]]:
    side = max(width, height)
    polys = []
    for poly in seg:
        if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
            raise ValueError("a polygon must be a list of at least 3 (x, y) number pairs")
        values = []
        for v in poly:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"polygon coordinate {v!r} is not a finite number")
            if not -side <= v <= 2 * side:
                raise ValueError(f"polygon coordinate {v!r} is far outside the {width}x{height} image")
            values.append(float(v))
        polys.append(values)
    return polys


def segmentation_to_rle(seg, width: int, height: int, path, where: str) -> dict | None:
    """A COCO ``segmentation`` as a compressed RLE dict; ``None`` for an empty one, or one that covers no
    pixel (``dynrefer predict`` would reject an empty mask; the region keeps its box).

    Raises:
        InputError: a malformed segmentation (the message names the file and ``where``).
    """
    from pycocotools import mask as mask_utils

    if seg is None or (isinstance(seg, list) and not seg):
        return None
    try:
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(_polygons(seg, width, height), height, width))
        elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
            if seg["size"] != [height, width]:
                raise ValueError(f"RLE size {seg['size']!r} is not the image's [height, width] {[height, width]}")
            counts = seg["counts"]
            if isinstance(counts, str):
                runs = decode_counts_string(counts)
            elif isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
                runs = counts
            else:
                raise ValueError("RLE 'counts' must be a string or a list of integers")
            if any(v < 0 for v in runs) or sum(runs) != height * width:
                raise ValueError(f"RLE run lengths must be non-negative and add up to {height}x{width} pixels")
            if isinstance(counts, str):
                rle = {"size": [height, width], "counts": counts.encode("ascii")}
            else:
                rle = mask_utils.frPyObjects({"size": [height, width], "counts": list(runs)}, height, width)
        else:
            raise ValueError("expected a polygon list or an RLE dict with 'size' and 'counts'")
    except (ValueError, TypeError, OverflowError, UnicodeEncodeError) as exc:
        raise InputError(f"'{path}': {where}: malformed segmentation ({exc})") from None
    if int(mask_utils.area(rle)) == 0:
        return None  # covers no pixel (a degenerate or sub-pixel polygon): the region keeps its box alone
    counts = rle["counts"]
    return {"size": [height, width], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
