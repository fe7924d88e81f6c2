"""Batched crop-and-resize kernels that reproduce reference resamplers in torch.

Two families are implemented, both operating on many crops of one image at once:

* :func:`pil_resample_crops` reproduces Pillow's ``Image.crop(box).resize(size, filter)``
  for 8-bit images *bit for bit*: the filter weights are computed in float64 exactly as
  Pillow does, converted to Pillow's 22-bit fixed point, and applied with integer
  arithmetic (horizontal pass first, rounded and clamped to uint8, then the vertical
  pass). Supported filters: ``"bicubic"`` (a = -0.5, support 2) and ``"lanczos"``
  (support 3).
* :func:`linear_resize_crops` is an OpenCV-style ``INTER_LINEAR`` resize (half-pixel
  centres, two taps, no antialiasing) of float32 crops, used by the pHash. OpenCV's
  vectorised kernels round differently from any portable formula, so values agree with
  ``cv2.resize`` to about 1e-5 relative, not bit for bit; :mod:`dynrefer.phash` deals
  with that.

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


def _pil_axis_tables(lengths: list[int], out_size: int, filter: str, device):
    """Stacked (start, weights) tables for crops of the given lengths along one axis."""
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for n in set(lengths):
        cache[n] = pil_coefficients(n, out_size, filter)
    k = max(w.shape[1] for _, w in cache.values())
    starts = np.stack([cache[n][0] for n in lengths])
    weights = np.zeros((len(lengths), out_size, k), dtype=np.int64)
    for i, n in enumerate(lengths):
        wi = cache[n][1]
        weights[i, :, : wi.shape[1]] = wi
    return (torch.from_numpy(starts).to(device), torch.from_numpy(weights).to(device))


def _pil_chunk(image: torch.Tensor, crops: np.ndarray, size: int, filter: str) -> torch.Tensor:
    """Horizontal-then-vertical resampling of one chunk; ``image`` is (C, H, W) int64."""
    device = image.device
    c = image.shape[0]
    n = len(crops)
    x1, y1, x2, y2 = (crops[:, i] for i in range(4))
    # Work on the chunk's column window only.
    left, right = int(x1.min()), int(x2.max())
    image = image[:, :, left:right]
    width = right - left
    xs, xw = _pil_axis_tables((x2 - x1).tolist(), size, filter, device)
    ys, yw = _pil_axis_tables((y2 - y1).tolist(), size, filter, device)
    ky, kx = yw.shape[2], xw.shape[2]
    # Input rows each output row needs: y1 + ys + k (k < Ky; clamped, weight 0 past support).
    row_idx = torch.as_tensor(y1, device=device)[:, None, None] + ys[:, :, None] + torch.arange(ky, device=device)
    row_idx = row_idx.clamp(max=image.shape[1] - 1).reshape(n, -1)  # (N, S*Ky)
    col_idx = torch.as_tensor(x1 - left, device=device)[:, None, None] + xs[:, :, None]
    col_idx = (col_idx + torch.arange(kx, device=device)).clamp(max=width - 1)  # (N, S, Kx)
    rows = image[:, row_idx, :].permute(1, 0, 2, 3)  # (N, C, S*Ky, W)
    m = rows.shape[2]
    acc = torch.full((n, c, m, size), 1 << (PRECISION_BITS - 1), dtype=torch.int64, device=device)
    for k in range(kx):
        idx = col_idx[:, None, None, :, k].expand(n, c, m, size)
        acc += torch.gather(rows, 3, idx) * xw[:, None, None, :, k]
    horiz = _clip8(acc).reshape(n, c, size, ky, size)  # (N, C, S_y, Ky, S_x)
    out = torch.full((n, c, size, size), 1 << (PRECISION_BITS - 1), dtype=torch.int64, device=device)
    for k in range(ky):
        out += horiz[:, :, :, k, :] * yw[:, None, :, k, None]
    return _clip8(out).to(torch.uint8)


def _pil_group(image: torch.Tensor, crops: np.ndarray, size: int, filter: str, max_chunk_elems: int):
    c, _, w = image.shape
    ky_max = int(math.ceil(_FILTER_SUPPORT[filter] * max(1.0, (crops[:, 3] - crops[:, 1]).max() / size))) * 2 + 1
    per_crop = c * size * ky_max * w
    chunk = max(1, max_chunk_elems // max(per_crop, 1))
    return torch.cat([_pil_chunk(image, crops[i : i + chunk], size, filter) for i in range(0, len(crops), chunk)])


def pil_resample_crops(
    image: torch.Tensor,
    crops,
    size: int,
    filter: str = "bicubic",
    max_chunk_elems: int = 24_000_000,
) -> torch.Tensor:
    """Crop many integer boxes from one uint8 image and resize each to ``size×size``.

    Emulates ``PIL.Image.fromarray(img).crop(box).resize((size, size), filter)`` with
    Pillow's own weights and fixed-point arithmetic: bit-exact whenever Pillow runs its
    horizontal pass first (always for crops no taller than wide). Pillow >= 11 chooses the
    order of its two passes itself; this kernel runs the vertical pass first for crops taller
    than wide that also shrink vertically, which matches Pillow 13 on most but not all such
    crops (then a few levels differ; see ``tests/test_renderer.py``).

    Args:
        image: (C, H, W) uint8 tensor, on any device.
        crops: (N, 4) integer boxes ``x1, y1, x2, y2`` with ``0 <= x1 < x2 <= W`` and
            ``0 <= y1 < y2 <= H``.
        size: output side S.
        filter: ``"bicubic"`` or ``"lanczos"``.
        max_chunk_elems: bound on the element count of the largest intermediate tensor.

    Returns:
        (N, C, S, S) uint8 tensor on ``image``'s device.
    """
    crops = np.asarray(crops, dtype=np.int64).reshape(-1, 4)
    c, h, w = image.shape
    out = torch.empty((len(crops), c, size, size), dtype=torch.uint8, device=image.device)
    if len(crops) == 0:
        return out
    _check_crops(crops, w, h)
    img = image.to(torch.int64)
    # Pillow (>= 11) resamples vertically first when that axis shrinks, and more than the other.
    heights, widths = crops[:, 3] - crops[:, 1], crops[:, 2] - crops[:, 0]
    tall = (heights > widths) & (heights > size)
    wide_idx, tall_idx = np.nonzero(~tall)[0], np.nonzero(tall)[0]
    if len(wide_idx):
        out[torch.as_tensor(wide_idx, device=image.device)] = _pil_group(
            img, crops[wide_idx], size, filter, max_chunk_elems
        )
    if len(tall_idx):
        # Vertical pass first == horizontal pass first on the transposed image.
        res = _pil_group(img.transpose(1, 2), crops[tall_idx][:, [1, 0, 3, 2]], size, filter, max_chunk_elems)
        out[torch.as_tensor(tall_idx, device=image.device)] = res.transpose(2, 3)
    return out


def _check_crops(crops: np.ndarray, width: int, height: int) -> None:
    x1, y1, x2, y2 = crops.T
    if (x1 < 0).any() or (y1 < 0).any() or (x2 > width).any() or (y2 > height).any() or (x2 <= x1).any() or (
        y2 <= y1
    ).any():
        bad = np.nonzero((x1 < 0) | (y1 < 0) | (x2 > width) | (y2 > height) | (x2 <= x1) | (y2 <= y1))[0][0]
        raise ValueError(f"crop {crops[bad].tolist()} is empty or outside the {width}x{height} image")


def linear_coefficients(in_size: int, out_size: int):
    """Two-tap linear coefficients with half-pixel centres, clamped at the borders.

    Returns ``(i0, i1, w0, w1)``: (out_size,) int64 source indices and float32 weights,
    computed like OpenCV's ``INTER_LINEAR`` (scale ``1 / (out / in)`` in float64, the
    source position rounded to float32, border taps clamped with zero fraction).
    """
    scale = 1.0 / (out_size / in_size)
    pos = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0.astype(np.float32)).astype(np.float32)
    low = i0 < 0
    frac[low] = 0.0
    i0[low] = 0
    high = i0 >= in_size - 1
    frac[high] = 0.0
    i0[high] = in_size - 1
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (np.float32(1.0) - frac).astype(np.float32), frac


def _linear_resize_torch(gray: torch.Tensor, crops, size: int, max_chunk_elems: int = 16_000_000) -> torch.Tensor:
    """Crop many integer boxes from a float32 (H, W) image; resize each to ``size×size``.

    Horizontal pass first, then vertical, in float32 (OpenCV's order).

    Returns:
        (N, S, S) float32 tensor on ``gray``'s device.
    """
    crops = np.asarray(crops, dtype=np.int64).reshape(-1, 4)
    h, w = gray.shape
    if len(crops) == 0:
        return torch.empty((0, size, size), dtype=torch.float32, device=gray.device)
    _check_crops(crops, w, h)
    device = gray.device
    gray = gray.to(torch.float32)
    tables = {}
    for n in set((crops[:, 2] - crops[:, 0]).tolist()) | set((crops[:, 3] - crops[:, 1]).tolist()):
        tables[n] = linear_coefficients(n, size)

    def stack(lengths, offsets):
        parts = [tables[n] for n in lengths]
        i0 = torch.from_numpy(np.stack([p[0] for p in parts]) + offsets[:, None]).to(device)
        i1 = torch.from_numpy(np.stack([p[1] for p in parts]) + offsets[:, None]).to(device)
        w0 = torch.from_numpy(np.stack([p[2] for p in parts])).to(device)
        w1 = torch.from_numpy(np.stack([p[3] for p in parts])).to(device)
        return i0, i1, w0, w1

    chunk = max(1, max_chunk_elems // (2 * size * w))
    outs = []
    for s in range(0, len(crops), chunk):
        cc = crops[s : s + chunk]
        xi0, xi1, xw0, xw1 = stack((cc[:, 2] - cc[:, 0]).tolist(), cc[:, 0])
        yi0, yi1, yw0, yw1 = stack((cc[:, 3] - cc[:, 1]).tolist(), cc[:, 1])

        def hpass(row_index):
            rows = gray[row_index]  # (n, S, W)
            left = torch.gather(rows, 2, xi0[:, None, :].expand(-1, size, -1))
            right = torch.gather(rows, 2, xi1[:, None, :].expand(-1, size, -1))
            return left * xw0[:, None, :] + right * xw1[:, None, :]

        top = hpass(yi0)
        bottom = hpass(yi1)
        outs.append(top * yw0[:, :, None] + bottom * yw1[:, :, None])
    return torch.cat(outs)


def _linear_resize_opencv(gray: torch.Tensor, crops, size: int) -> torch.Tensor:
    import cv2

    arr = gray.detach().cpu().numpy().astype(np.float32, copy=False)
    crops = np.asarray(crops, dtype=np.int64).reshape(-1, 4)
    _check_crops(crops, arr.shape[1], arr.shape[0])
    out = np.empty((len(crops), size, size), dtype=np.float32)

    def work(i: int) -> None:
        x1, y1, x2, y2 = crops[i]
        out[i] = cv2.resize(arr[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_LINEAR)

    thread_map(work, len(crops), min_items=32)  # OpenCV releases the GIL; small batches run inline
    return torch.from_numpy(out)


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


def linear_resize_crops(gray: torch.Tensor, crops, size: int, engine: str = "auto") -> torch.Tensor:
    """Crop many integer boxes of a float32 (H, W) image and resize each to ``size×size``.

    Bilinear, half-pixel centres, no antialiasing (OpenCV ``INTER_LINEAR``).
    ``engine``: ``"opencv"`` (``cv2.resize`` per crop, CPU; identical to OpenCV),
    ``"torch"`` (a tensor kernel on ``gray``'s device; horizontal pass then vertical in
    float32, equal to OpenCV's scalar code and within ~1e-5 relative of its vectorised
    code) or ``"auto"`` (OpenCV for CPU tensors, torch elsewhere).

    Returns:
        (N, S, S) float32 tensor on ``gray``'s device.
    """
    if engine == "auto":
        engine = "opencv" if gray.device.type == "cpu" else "torch"
    if engine == "opencv":
        return _linear_resize_opencv(gray, crops, size).to(gray.device)
    if engine == "torch":
        return _linear_resize_torch(gray, crops, size)
    raise ValueError(f"unknown resize engine {engine!r}; expected 'auto', 'opencv' or 'torch'")


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
