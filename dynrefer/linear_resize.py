"""Batched crop-and-resize of float32 grayscale images, OpenCV ``INTER_LINEAR`` semantics (the pHash's resize).

:func:`linear_resize_crops` is an OpenCV-style ``INTER_LINEAR`` resize (half-pixel centres, two taps, no
antialiasing) of float32 crops, used by the pHash. OpenCV's vectorised kernels round differently from any portable
formula, so values agree with ``cv2.resize`` to about 1e-5 relative, not bit for bit; :mod:`dynrefer.phash` deals
with that. Crops are integer boxes ``(x1, y1, x2, y2)`` (exclusive ``x2``/``y2``) inside the image.
"""

from __future__ import annotations

import numpy as np
import torch

from .resample import _check_crops, thread_map, upload


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


def _linear_hpass(rows, i0, i1, w0, w1, size: int) -> torch.Tensor:
    """Horizontal linear pass over (n, S, W) rows: (n, S, S)."""
    left = torch.gather(rows, 2, i0[:, None, :].expand(-1, size, -1))
    right = torch.gather(rows, 2, i1[:, None, :].expand(-1, size, -1))
    return left * w0[:, None, :] + right * w1[:, None, :]


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
        return [np.stack([p[0] for p in parts]) + offsets[:, None], np.stack([p[1] for p in parts]) + offsets[:, None],
                np.stack([p[2] for p in parts]), np.stack([p[3] for p in parts])]

    chunk = max(1, max_chunk_elems // (2 * size * w))
    outs = []
    for s in range(0, len(crops), chunk):
        cc = crops[s : s + chunk]
        xi0, xi1, xw0, xw1, yi0, yi1, yw0, yw1 = upload(
            stack((cc[:, 2] - cc[:, 0]).tolist(), cc[:, 0]) + stack((cc[:, 3] - cc[:, 1]).tolist(), cc[:, 1]), device)

        top, bottom = (_linear_hpass(gray[rows], xi0, xi1, xw0, xw1, size) for rows in (yi0, yi1))
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
