"""Batched crop-and-resize of many crops of one uint8 image with Pillow's semantics (the views' renderer; the
pHash's OpenCV-style bilinear resize is :mod:`dynrefer.linear_resize`).

:func:`pil_resample_crops` reproduces Pillow's ``Image.crop(box).resize(size, filter)`` for 8-bit images *bit
for bit*: the filter weights are computed in float64 exactly as Pillow does, converted to Pillow's 22-bit fixed
point, and applied with integer arithmetic (horizontal pass first, rounded and clamped to uint8, then the
vertical pass). Supported filters: ``"bicubic"`` (a = -0.5, support 2) and ``"lanczos"`` (support 3).
:func:`resample_crops` picks Pillow itself (CPU) or that kernel (other devices).

Crops are integer boxes ``(x1, y1, x2, y2)`` (exclusive ``x2``/``y2``) inside the image.
Work is split into chunks so that memory stays bounded for large images and many crops.
"""

from __future__ import annotations

import math

import numpy as np
import torch

PRECISION_BITS = 22  # Pillow: 32 - 8 (bits per sample) - 2 (headroom)
_FILTER_SUPPORT = {"bicubic": 2.0, "lanczos": 3.0}


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _sinc(x: np.ndarray) -> np.ndarray:
    safe = np.where(x == 0.0, 1.0, x) * math.pi
    return np.where(x == 0.0, 1.0, np.sin(safe) / safe)


def _lanczos(x: np.ndarray) -> np.ndarray:
    inside = (x >= -3.0) & (x < 3.0)
    return np.where(inside, _sinc(x) * _sinc(x / 3), 0.0)


_FILTERS = {"bicubic": _bicubic, "lanczos": _lanczos}


def pil_coefficients(in_size: int, out_size: int, filter: str = "bicubic"):
    """Pillow's resampling coefficients for resizing ``in_size`` samples to ``out_size``.

    Returns ``(start, weights)``: ``start`` (out_size,) int64 first input index of each
    output sample, ``weights`` (out_size, K) int64 fixed-point weights (22 fractional
    bits; zero past each sample's support).
    """
    if filter not in _FILTERS:
        raise ValueError(f"unknown filter {filter!r}; expected one of {sorted(_FILTERS)}")
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = _FILTER_SUPPORT[filter] * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize, dtype=np.int64)
    valid = taps[None, :] < xmax[:, None]
    arg = (taps[None, :] + xmin[:, None] - center[:, None] + 0.5) * (1.0 / filterscale)
    w = np.where(valid, _FILTERS[filter](arg), 0.0)
    total = np.cumsum(w, axis=1)[:, -1:]  # sequential sum, as Pillow accumulates
    w = np.where(total != 0.0, w / np.where(total != 0.0, total, 1.0), w)
    fixed = w * (1 << PRECISION_BITS)
    fixed = np.trunc(np.where(fixed < 0, fixed - 0.5, fixed + 0.5)).astype(np.int64)
    return xmin, np.where(valid, fixed, 0)


def _clip8(acc: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.div(acc, 1 << PRECISION_BITS, rounding_mode="floor"), 0, 255)


def _axis_tables(lengths: np.ndarray, out_size: int, filter: str) -> tuple[np.ndarray, np.ndarray]:
    """Stacked host tables for crops of the given lengths along one axis: starts (N, S) and weights (N, S, K)."""
    cache = {n: pil_coefficients(n, out_size, filter) for n in set(lengths.tolist())}
    k = max(w.shape[1] for _, w in cache.values())
    starts = np.stack([cache[n][0] for n in lengths.tolist()])
    weights = np.zeros((len(lengths), out_size, k), dtype=np.int64)
    for i, n in enumerate(lengths.tolist()):
        weights[i, :, : cache[n][1].shape[1]] = cache[n][1]
    return starts, weights


def upload(arrays: list[np.ndarray], device) -> list[torch.Tensor]:
    """Host arrays (any numeric dtypes) as tensors on ``device`` in one host-to-device copy (from pinned
    memory on CUDA, not blocking the host) instead of one blocking copy per array."""
    arrays = [np.ascontiguousarray(a) for a in arrays]
    offsets = np.cumsum([0] + [-(-a.nbytes // 8) * 8 for a in arrays])  # each part 8-byte aligned
    flat = np.zeros(int(offsets[-1]), dtype=np.uint8)
    for a, start in zip(arrays, offsets):
        flat[start : start + a.nbytes] = a.reshape(-1).view(np.uint8)
    device = torch.device(device)
    buf = torch.from_numpy(flat)
    buf = (buf.pin_memory() if device.type == "cuda" else buf).to(device, non_blocking=device.type == "cuda")
    dtypes = [torch.from_numpy(np.empty(0, a.dtype)).dtype for a in arrays]
    return [buf[start : start + a.nbytes].view(dt).view(a.shape) for a, dt, start in zip(arrays, dtypes, offsets)]


def _chunk_tables(crops: np.ndarray, size: int, filter: str) -> list[np.ndarray]:
    """Host tables of one chunk: x starts (relative to the chunk's first column), x weights, y starts and
    y weights (relative to each crop's first row), and each crop's first row."""
    x1, y1, x2, y2 = crops.T
    xs, xw = _axis_tables(x2 - x1, size, filter)
    ys, yw = _axis_tables(y2 - y1, size, filter)
    return [xs + (x1 - x1.min())[:, None], xw, ys, yw, y1]


def _pil_chunk(image: torch.Tensor, crops: np.ndarray, size: int, tables: list[torch.Tensor]) -> torch.Tensor:
    """Horizontal-then-vertical resampling of one chunk of crops of a (C, H, W) uint8 image.

    Pillow's order and arithmetic: the horizontal pass reads each crop row once (int32 fixed point, as
    Pillow's own accumulators), rounds and clamps to 8 bits; the vertical pass combines those rows.
    Memory: the chunk's rows as uint8 plus (N, C, rows, S) int32, where ``rows`` is the tallest crop.
    """
    xs, xw, ys, yw, y1 = tables
    xw, yw = xw.to(torch.int32), yw.to(torch.int32)
    device, (c, h, _) = image.device, image.shape
    n = len(crops)
    left, right = int(crops[:, 0].min()), int(crops[:, 2].max())
    rows_needed = int((crops[:, 3] - crops[:, 1]).max())
    row_idx = (y1[:, None] + torch.arange(rows_needed, device=device)).clamp(max=h - 1)  # (N, M)
    rows = image[:, row_idx, left:right].permute(1, 0, 2, 3)  # (N, C, M, W) uint8, each crop row once
    width = right - left
    acc = torch.full((n, c, rows_needed, size), 1 << (PRECISION_BITS - 1), dtype=torch.int32, device=device)
    for k in range(xw.shape[2]):  # taps past a sample's support have weight 0 (index clamped)
        idx = (xs + k).clamp(max=width - 1)[:, None, None, :].expand(n, c, rows_needed, size)
        acc += torch.gather(rows, 3, idx).to(torch.int32) * xw[:, None, None, :, k]
    horiz = _clip8(acc).to(torch.uint8)  # (N, C, M, S): rows past a crop's height never get a nonzero weight
    out = torch.full((n, c, size, size), 1 << (PRECISION_BITS - 1), dtype=torch.int32, device=device)
    for k in range(yw.shape[2]):
        idx = (ys + k).clamp(max=rows_needed - 1)[:, None, :, None].expand(n, c, size, size)
        out += torch.gather(horiz, 2, idx) * yw[:, None, :, k, None]
    return _clip8(out).to(torch.uint8)


def _chunks(crops: np.ndarray, size: int, channels: int, max_chunk_elems: int) -> list[np.ndarray]:
    """Index arrays of consecutive crops whose largest intermediate (the chunk's rows over its column window,
    ``count × C × tallest × max(window width, S)``) stays under ``max_chunk_elems`` (a chunk holds at least
    one crop)."""
    out, start = [], 0
    while start < len(crops):
        stop, rows, left, right = start, 0, None, None
        while stop < len(crops):
            x1, y1, x2, y2 = crops[stop]
            rows_, left_, right_ = max(rows, y2 - y1), x1 if left is None else min(left, x1), max(right or 0, x2)
            if stop > start and (stop - start + 1) * channels * rows_ * max(right_ - left_, size) > max_chunk_elems:
                break
            rows, left, right, stop = rows_, left_, right_, stop + 1
        out.append(np.arange(start, stop))
        start = stop
    return out


def pil_resample_crops(
    image: torch.Tensor,
    crops,
    size: int,
    filter: str = "bicubic",
    max_chunk_elems: int = 24_000_000,
) -> torch.Tensor:
    """Crop many integer boxes from one uint8 image and resize each to ``size×size``.

    Emulates ``PIL.Image.fromarray(img).crop(box).resize((size, size), filter)`` with
    Pillow's own weights and fixed-point arithmetic (int32 accumulators, as Pillow's): bit-exact
    whenever Pillow runs its horizontal pass first (always for crops no taller than wide). Pillow >= 11
    chooses the order of its two passes itself; this kernel runs the vertical pass first for crops taller
    than wide that also shrink vertically, which matches Pillow 13 on most but not all such crops (then a
    few levels differ; see ``tests/test_renderer.py``).

    Each crop row is read once (the horizontal pass runs on the crop's rows, not on the rows each output
    sample needs), and the kernel tables of the whole call reach the image's device in one copy.

    Not ``F.interpolate(mode="bicubic", antialias=True)``, which approximates Pillow in floating point: on 60
    random astronaut crops at 224 it matched Pillow on 0 crops (max 7 levels), this kernel on 58 (max 3, tall
    crops). A GPU sees the views the CPU and the original's PIL preprocessing see.

    Args:
        image: (C, H, W) uint8 tensor, on any device.
        crops: (N, 4) integer boxes ``x1, y1, x2, y2`` with ``0 <= x1 < x2 <= W`` and
            ``0 <= y1 < y2 <= H``.
        size: output side S.
        filter: ``"bicubic"`` or ``"lanczos"``.
        max_chunk_elems: bound on the element count of the largest intermediate tensor (a chunk holds at
            least one crop).

    Returns:
        (N, C, S, S) uint8 tensor on ``image``'s device.
    """
    crops = np.asarray(crops, dtype=np.int64).reshape(-1, 4)
    c, h, w = image.shape
    if len(crops) == 0:
        return torch.empty((0, c, size, size), dtype=torch.uint8, device=image.device)
    _check_crops(crops, w, h)
    image = image.to(torch.uint8)
    # Pillow (>= 11) resamples vertically first when that axis shrinks, and more than the other:
    # vertical first == horizontal first on the transposed image.
    heights, widths = crops[:, 3] - crops[:, 1], crops[:, 2] - crops[:, 0]
    tall = (heights > widths) & (heights > size)
    groups = [(np.nonzero(~tall)[0], False), (np.nonzero(tall)[0], True)]
    work, host = [], []
    for idx, transposed in groups:
        group = crops[idx][:, [1, 0, 3, 2]] if transposed else crops[idx]
        for part in _chunks(group, size, c, max_chunk_elems):
            work.append((group[part], transposed))
            host.extend(_chunk_tables(group[part], size, filter))
    order = np.concatenate([idx for idx, _ in groups])
    inverse = np.argsort(order)
    reorder = not np.array_equal(inverse, np.arange(len(crops)))
    tables = upload(host + ([inverse] if reorder else []), image.device)
    results = []
    for i, (chunk, transposed) in enumerate(work):
        src = image.transpose(1, 2) if transposed else image
        res = _pil_chunk(src, chunk, size, tables[5 * i : 5 * i + 5])
        results.append(res.transpose(2, 3) if transposed else res)
    out = torch.cat(results)
    return out[tables[-1]] if reorder else out


def _check_crops(crops: np.ndarray, width: int, height: int) -> None:
    x1, y1, x2, y2 = crops.T
    if (x1 < 0).any() or (y1 < 0).any() or (x2 > width).any() or (y2 > height).any() or (x2 <= x1).any() or (
        y2 <= y1
    ).any():
        bad = np.nonzero((x1 < 0) | (y1 < 0) | (x2 > width) | (y2 > height) | (x2 <= x1) | (y2 <= y1))[0][0]
        raise ValueError(f"crop {crops[bad].tolist()} is empty or outside the {width}x{height} image")


def thread_map(fn, count: int, workers: int = 0, min_items: int = 4) -> None:
    """Run ``fn(i)`` for ``i < count`` on a thread pool (``workers``; 0 = torch's thread count),
    or inline when there are fewer than ``min_items`` items or one worker."""
    from concurrent.futures import ThreadPoolExecutor

    workers = workers or max(1, torch.get_num_threads())
    if workers == 1 or count < min_items:
        for i in range(count):
            fn(i)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(fn, range(count)):
            pass


def _pil_filter(filter: str):
    from PIL import Image

    return {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}[filter]


def pil_crops_with_pillow(image: torch.Tensor, crops, size: int, filter: str = "bicubic", threads: int = 0):
    """Same result as :func:`pil_resample_crops`, computed by Pillow itself (CPU only).

    Crops are mapped over a thread pool (``threads`` workers; 0 = ``torch.get_num_threads()``), which pays
    off only where Pillow releases the GIL while resampling: Pillow 13 keeps it for most of a resize, and two
    threads measured at most ~15 % faster than one there (docs/performance.md).

    Returns:
        (N, C, S, S) uint8 tensor on the CPU.
    """
    from .images import tensor_to_pil

    crops = np.asarray(crops, dtype=np.int64).reshape(-1, 4)
    c, h, w = image.shape
    out = np.empty((len(crops), size, size, c), dtype=np.uint8)
    if len(crops) == 0:
        return torch.from_numpy(out).permute(0, 3, 1, 2)
    _check_crops(crops, w, h)
    pil = tensor_to_pil(image)
    resample = _pil_filter(filter)

    def work(i: int) -> None:
        res = np.asarray(pil.crop(tuple(int(v) for v in crops[i])).resize((size, size), resample))
        out[i] = res.reshape(size, size, c)

    thread_map(work, len(crops), threads)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def resample_crops(image: torch.Tensor, crops, size: int, filter: str = "bicubic", engine: str = "auto"):
    """Crop-and-resize many boxes of one uint8 image, Pillow semantics.

    ``engine``: ``"pillow"`` (Pillow in a thread pool; CPU), ``"torch"`` (the tensor
    kernel :func:`pil_resample_crops`, on the image's device) or ``"auto"`` (Pillow for
    CPU tensors, where it is fastest, torch elsewhere). Output is on the image's device.
    """
    if engine == "auto":
        engine = "pillow" if image.device.type == "cpu" else "torch"
    if engine == "pillow":
        return pil_crops_with_pillow(image, crops, size, filter).to(image.device)
    if engine == "torch":
        return pil_resample_crops(image, crops, size, filter)
    raise ValueError(f"unknown resampling engine {engine!r}; expected 'auto', 'pillow' or 'torch'")
