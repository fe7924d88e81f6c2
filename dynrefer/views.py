"""Multi-view geometry and rendering (SPEC §1.1).

A *view* ``t ∈ [0, 1]`` of region box ``b`` in a ``W×H`` image is the box
``b_t = b + (I − b)·t`` with ``I = (0, 0, W, H)``, computed in float32 exactly as the
reference implementation does (``b + (I − b) * float32(t)``; not ``lerp``). ``t = 0`` is
the region itself, ``t = 1`` the whole image.

The pixel crop of a view is ``b_t`` clipped to the image and truncated to integers; it is
resized to ``S×S`` with Pillow's antialiased bicubic filter, scaled to [0, 1] and
normalised with the CLIP mean / std. The region box is re-expressed in each view's
``S×S`` pixel frame (``box_in_view``, float precision kept).

Deviation from the reference, documented: when truncation would give an empty crop
(a sub-pixel box hugging the image border, e.g. ``x2 = 0.5`` → ``x2`` truncates to 0), the
crop is widened to one pixel inside the image; the reference crashes there.

Two renderers produce the same pixels:

* :func:`render_crops` with ``renderer="batched"`` (default): every view of every region
  of an image in one call, identical crops computed once, on the image tensor's device
  (Pillow's C resampler in a thread pool for CPU tensors, a bit-exact tensor kernel
  elsewhere; see :mod:`dynrefer.resample`).
* ``renderer="reference"``: the official preprocessing literally, one PIL crop and one
  bicubic resize per view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .resample import resample_crops

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Candidate views of the selection policies: t = 0.1, 0.2, ..., 1.0 (float64 (i + 1) / 10).
CANDIDATE_TS = tuple((i + 1) / 10 for i in range(10))
DEFAULT_SIZE = 224
RENDERERS = ("batched", "reference")


def _view_boxes_rows(boxes32: np.ndarray, image_size, ts32: np.ndarray) -> np.ndarray:
    """(R, T, 4) float32 view boxes of (R, 4) float32 boxes for (R, T) float32 ``t`` values (one formula for
    :func:`view_boxes` and :func:`view_geometries`)."""
    w, h = image_size
    full = np.array([0, 0, w, h], dtype=np.float32)
    return (boxes32[:, None, :] + (full - boxes32)[:, None, :] * ts32[:, :, None]).astype(np.float32)


def view_boxes(box, image_size, ts) -> np.ndarray:
    """View boxes ``b_t`` (T, 4) float32 for region box ``box`` (xyxy) and each ``t``.

    ``image_size`` is ``(W, H)``. Official arithmetic: ``b + (I - b) * float32(t)`` in
    float32.
    """
    b = np.asarray(box, dtype=np.float32).reshape(1, 4)
    return _view_boxes_rows(b, image_size, np.asarray(ts, dtype=np.float32).reshape(1, -1))[0]


def crop_boxes(boxes_t, image_size) -> np.ndarray:
    """Integer pixel crops (T, 4) int64 of view boxes: clipped to the image, truncated.

    A crop is at least one pixel wide and high (widened inside the image if truncation
    would make it empty).
    """
    w, h = image_size
    b = np.asarray(boxes_t, dtype=np.float32).reshape(-1, 4)
    lim = np.array([w, h, w, h], dtype=np.float32)
    clipped = np.clip(b, 0, lim)
    crops = np.trunc(clipped).astype(np.int64)
    for lo, hi, size in ((0, 2, w), (1, 3, h)):
        empty = crops[:, hi] <= crops[:, lo]
        crops[empty, hi] = crops[empty, lo] + 1
        over = crops[:, hi] > size
        crops[over, hi] = size
        crops[over, lo] = size - 1
    return crops


def _boxes_in_view_rows(boxes: np.ndarray, crops: np.ndarray, size: int) -> np.ndarray:
    """(R, T, 4) float64: (R, 4) float64 boxes in the frames of their (R, T, 4) crops (one formula for
    :func:`boxes_in_view` and :func:`view_geometries`)."""
    c = crops.astype(np.float64)
    origin = c[:, :, [0, 1, 0, 1]]
    extent = np.concatenate([c[:, :, 2:3] - c[:, :, 0:1], c[:, :, 3:4] - c[:, :, 1:2]] * 2, axis=2)
    # Multiply before dividing: exact for integer boxes (e.g. t = 0 maps to (0, 0, S, S)).
    return (boxes[:, None, :] - origin) * size / extent


def _truncated_boxes_in_view_rows(boxes: np.ndarray, crops: np.ndarray, size: int) -> np.ndarray:
    """(R, T, 4) float64 holding integers: the official processor's box in each view (SPEC §1.1), from (R, 4)
    region boxes and their (R, T, 4) integer crops: the box in float32 truncated to integers (150.99999999999997
    is 151 in float32), minus the crop origin, times
    ``float32(S) / extent`` in float32, truncated again (the float32 scale reproduces the original's boxes bit
    for bit: 270 · (224 / 270) is 223.99998 there, so a 270-px side maps to 223, not 224)."""
    # the region box as the original holds it (float32, like the view boxes), truncated
    moved = (np.trunc(boxes.astype(np.float32)).astype(np.float64)[:, None, :]
             - crops[:, :, [0, 1, 0, 1]]).astype(np.float32)
    c = crops.astype(np.float32)
    extent = np.concatenate([c[:, :, 2:3] - c[:, :, 0:1], c[:, :, 3:4] - c[:, :, 1:2]] * 2, axis=2)
    return np.trunc(moved * (np.float32(size) / extent)).astype(np.float64)


def boxes_in_view(box, crops, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Region box expressed in each view's ``size×size`` pixel frame, (T, 4) float64.

    ``(b − (c_x1, c_y1, c_x1, c_y1)) · (S/(c_x2 − c_x1), S/(c_y2 − c_y1), …)``.
    """
    b = np.asarray(box, dtype=np.float64).reshape(1, 4)
    return _boxes_in_view_rows(b, np.asarray(crops, dtype=np.float64).reshape(1, -1, 4), size)[0]


def box_from_view(box_in_view, crop, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Inverse of :func:`boxes_in_view`: boxes in view pixels → image pixels, (T, 4)."""
    v = np.asarray(box_in_view, dtype=np.float64).reshape(-1, 4)
    c = np.asarray(crop, dtype=np.float64).reshape(-1, 4)
    sx = (c[:, 2] - c[:, 0]) / size
    sy = (c[:, 3] - c[:, 1]) / size
    return v * np.stack([sx, sy, sx, sy], axis=1) + c[:, [0, 1, 0, 1]]


@dataclass(frozen=True)
class ViewGeometry:
    """Geometry of T views of one region.

    Attributes:
        ts: (T,) float64 view parameters.
        box_t: (T, 4) float32 view boxes in image pixels.
        crops: (T, 4) int64 pixel crops ``x1, y1, x2, y2`` (exclusive ends).
        box_in_view: (T, 4) float64 region box in each view's ``size×size`` frame.
        size: the view side S.
        box_in_view_truncated: (T, 4) the same box as the official processor passes it to RoI-align:
            integers (in float64), see :func:`roi_boxes`.
    """

    ts: np.ndarray
    box_t: np.ndarray
    crops: np.ndarray
    box_in_view: np.ndarray
    size: int
    box_in_view_truncated: np.ndarray | None = None

    def roi_boxes(self, truncate: bool = False) -> np.ndarray:
        """The box RoI-align pools in each view: ``box_in_view``, or with ``truncate`` the official integer
        box (``config.roi.truncate_boxes``)."""
        return self.box_in_view_truncated if truncate else self.box_in_view


def _check_ts(ts: np.ndarray) -> None:
    if ts.size and ((ts < 0) | (ts > 1) | ~np.isfinite(ts)).any():
        shown = ts.tolist() if ts.ndim == 1 else np.unique(ts).tolist()
        raise ValueError(f"view parameters t must lie in [0, 1], got {shown}")


def view_geometry(box, image_size, ts, size: int = DEFAULT_SIZE) -> ViewGeometry:
    """All geometry of views ``ts`` of region ``box`` (xyxy, already validated)."""
    ts_arr = np.asarray(ts, dtype=np.float64).reshape(-1)
    _check_ts(ts_arr)
    return view_geometries(np.asarray(box, dtype=np.float64).reshape(1, 4), image_size, ts_arr, size)[0]


def view_geometries(boxes, image_size, ts, size: int = DEFAULT_SIZE) -> list[ViewGeometry]:
    """:func:`view_geometry` of many regions at once, in one set of array operations.

    Args:
        boxes: (R, 4) region boxes (xyxy, already validated).
        ts: (T,) the same ``t`` values for every region, or (R, T) one row per region.
    Returns:
        One :class:`ViewGeometry` per region (equal to ``view_geometry(boxes[r], image_size, ts[r], size)``).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    r = b.shape[0]
    ts_arr = np.asarray(ts, dtype=np.float64)
    _check_ts(ts_arr)
    ts_arr = np.broadcast_to(ts_arr.reshape(1, -1), (r, ts_arr.size)) if ts_arr.ndim <= 1 else ts_arr.reshape(r, -1)
    bt = _view_boxes_rows(b.astype(np.float32), image_size, ts_arr.astype(np.float32))
    crops = crop_boxes(bt.reshape(-1, 4), image_size).reshape(r, ts_arr.shape[1], 4)
    biv = _boxes_in_view_rows(b, crops, size)
    biv_int = _truncated_boxes_in_view_rows(b, crops, size)
    return [ViewGeometry(np.array(ts_arr[k]), bt[k], crops[k], biv[k], size, biv_int[k]) for k in range(r)]


_DEVICE_CONSTANTS: dict = {}  # a cache: device -> the constants on it (copied once per device)


def _normalize_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``-mean / std`` and ``1 / (255 std)`` as (3, 1, 1) float32 tensors on ``device``: computed on the host in
    IEEE float32 (the same bits on any device) and, on an accelerator, copied there once and kept (tensors of
    another kind, such as a tracer's fake tensors, are not kept)."""
    std, mean = np.asarray(CLIP_STD, np.float32), np.asarray(CLIP_MEAN, np.float32)
    host = [torch.from_numpy(v.reshape(3, 1, 1)) for v in (-mean / std, np.float32(1.0) / (np.float32(255.0) * std))]
    if device.type == "cpu":
        return host[0], host[1]
    if device.type == "meta":
        return host[0].to(device), host[1].to(device)
    hit = _DEVICE_CONSTANTS.get(device)
    if hit is None:
        with torch.inference_mode(False):  # ordinary tensors, usable in training too
            hit = (host[0].to(device), host[1].to(device))
        if all(type(t) is torch.Tensor for t in hit):
            _DEVICE_CONSTANTS[device] = hit
    return hit


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, S, S) → float32 ``(x / 255 − mean) / std`` with the CLIP mean / std."""
    shift, scale = _normalize_constants(pixels.device)
    # Same value as the formula above up to float32 rounding (~1e-7), in two fused passes. uint8 RGB views are
    # written into their float copy (out=): a new, broadcast output is ~4x slower on CPU, same bits.
    if pixels.dtype == torch.uint8 and pixels.dim() >= 3 and pixels.shape[-3] == 3:
        out = pixels.to(torch.float32)  # a new tensor (never the caller's)
        return torch.addcmul(shift, out, scale, out=out)
    return torch.addcmul(shift, pixels.to(torch.float32), scale)


def _render_reference(image: torch.Tensor, crops: np.ndarray, size: int) -> torch.Tensor:
    from PIL import Image

    from .images import tensor_to_pil

    pil = tensor_to_pil(image)
    out = []
    for x1, y1, x2, y2 in crops.tolist():
        view = pil.crop((x1, y1, x2, y2)).resize((size, size), Image.Resampling.BICUBIC)
        out.append(torch.from_numpy(np.asarray(view).copy()).permute(2, 0, 1))
    if not out:
        return torch.empty((0, 3, size, size), dtype=torch.uint8, device=image.device)
    return torch.stack(out).to(image.device)


def render_crops(
    image: torch.Tensor,
    crops,
    size: int = DEFAULT_SIZE,
    *,
    renderer: str = "batched",
    engine: str = "auto",
    normalized: bool = True,
) -> torch.Tensor:
    """Render integer crops of one image as ``size×size`` views.

    Args:
        image: (3, H, W) uint8 RGB tensor (see :func:`dynrefer.images.load_image`).
        crops: (N, 4) integer crops, e.g. ``ViewGeometry.crops`` of many regions stacked.
        size: output side S.
        renderer: ``"batched"`` (unique crops resampled in one call on the image's device)
            or ``"reference"`` (PIL crop + bicubic resize per crop, literally).
        engine: resampling engine of the batched renderer (``"auto"``, ``"pillow"``,
            ``"torch"``; see :func:`dynrefer.resample.resample_crops`).
        normalized: return CLIP-normalised float32 (default) or raw uint8 pixels.

    Returns:
        (N, 3, S, S) tensor on ``image``'s device.
    """
    crops = np.asarray(crops, dtype=np.int64).reshape(-1, 4)
    if renderer == "reference":
        pixels = _render_reference(image, crops, size)
    elif renderer == "batched" and len(crops) == 0:
        pixels = torch.empty((0, 3, size, size), dtype=torch.uint8, device=image.device)
    elif renderer == "batched":
        unique, inverse = np.unique(crops, axis=0, return_inverse=True)
        pixels = resample_crops(image, unique, size, "bicubic", engine)
        if normalized:
            pixels = normalize(pixels)  # once per unique crop
        inverse = inverse.reshape(-1)
        if np.array_equal(inverse, np.arange(len(crops))):
            return pixels  # already unique and sorted (an engine plan's crops): no copy
        return pixels[torch.as_tensor(inverse, device=pixels.device)]
    else:
        raise ValueError(f"unknown renderer {renderer!r}; expected one of {RENDERERS}")
    return normalize(pixels) if normalized else pixels
