"""RoI-align of the region on each view's patch map (SPEC §1.3.2).

Each view carries exactly one box: the region re-expressed in that view's ``S×S`` pixels
(``box_in_view``). ``torchvision.ops.roi_align`` pools it to ``h×w`` (by default the patch
grid, 16×16 for 224 px / patch 14) with spatial scale ``1/patch`` and sampling ratio 2;
the reference uses ``aligned=False``. The view's CLS token is carried along unchanged, so
each view yields ``1 + h·w`` tokens (257 officially).

With one box per map and a fixed sampling ratio, RoI-align is separable: every sample point's
bilinear weights are a product of a weight over rows and a weight over columns (torchvision's
out-of-range rule, "zero when y < −1 or y > H or x < −1 or x > W", is a product of a row and a
column condition too), so the pooled bins are ``Wy · F · Wxᵀ`` per map with ``Wy`` (h, H) and
``Wx`` (w, W) summing the sampling points of each bin. :func:`separable_roi_align` computes that
(two small batched products) instead of torchvision's per-sample loop for batches of at least
:data:`SEPARABLE_MIN_MAPS` maps (48 maps of the built-in model, 128 × 8 × 8: 1.9 ms against 3.8 on a
2-core CPU; 3 maps: 0.45 against 0.26, hence torchvision below the threshold); it equals
``torchvision.ops.roi_align`` up to float rounding (``tests/test_model_parts.py``), gradients
included.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torchvision.ops import roi_align

#: maps per call from which :class:`ViewRoIAlign` takes :func:`separable_roi_align` (fewer: torchvision).
SEPARABLE_MIN_MAPS = 16


def _axis_weights(start: torch.Tensor, length: torch.Tensor, bins: int, ratio: int, size: int) -> torch.Tensor:
    """(N, bins, size) float32: for each box and bin, the bilinear weights over the ``size`` pixels of one
    axis summed over the bin's ``ratio`` sample points (torchvision's arithmetic: sample
    ``start + p·bin + (i + 0.5)·bin / ratio``; zero outside [−1, size]; clamped at 0 and ``size − 1``)."""
    n = start.shape[0]
    bin_size = length / bins  # (N,)
    p = torch.arange(bins, dtype=torch.float32, device=start.device)[:, None]
    i = torch.arange(ratio, dtype=torch.float32, device=start.device)[None, :]
    pos = start[:, None, None] + p * bin_size[:, None, None] + (i + 0.5) * bin_size[:, None, None] / ratio
    valid = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0.0)
    low = pos.floor().clamp(max=size - 1)  # the int() truncation of a non-negative value
    at_edge = low >= size - 1
    frac = torch.where(at_edge, torch.zeros_like(pos), pos - low)
    high = torch.where(at_edge, low, low + 1)
    weights = torch.zeros(n, bins, ratio, size, dtype=torch.float32, device=start.device)
    weights.scatter_add_(3, low.long()[..., None], ((1.0 - frac) * valid)[..., None])
    weights.scatter_add_(3, high.long()[..., None], (frac * valid)[..., None])
    return weights.sum(2)


def separable_roi_align(features: torch.Tensor, boxes: torch.Tensor, output_size: int, spatial_scale: float,
                        sampling_ratio: int, aligned: bool = False) -> torch.Tensor:
    """``torchvision.ops.roi_align(features, [one box per map], ...)`` for box ``i`` on map ``i``.

    Args:
        features: (N, C, H, W); boxes: (N, 4) xyxy in input pixels; ``sampling_ratio`` > 0.
    Returns:
        (N, C, output_size, output_size), in ``features``' dtype (computed in float32, as torchvision's
        autocast rule does), a view of channels-last memory (``.permute(0, 2, 3, 1)`` is contiguous).
    """
    if sampling_ratio <= 0:
        raise ValueError("separable_roi_align needs a fixed sampling_ratio > 0")
    n, _, height, width = features.shape
    offset = 0.5 if aligned else 0.0
    b = boxes.to(torch.float32) * spatial_scale - offset
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    if not aligned:
        w, h = w.clamp(min=1.0), h.clamp(min=1.0)
    wy = _axis_weights(b[:, 1], h, output_size, sampling_ratio, height)
    wx = _axis_weights(b[:, 0], w, output_size, sampling_ratio, width) / float(sampling_ratio * sampling_ratio)
    with torch.autocast(device_type=features.device.type, enabled=False):
        # channels-last (N, H, W, C): rows first as one (h, H) @ (H, W·C) product per map, then the columns
        # as (w, W) @ (W, C) per output row; free of copies when ``features`` is a channels-last view (the
        # encoder's patches), and far fewer, larger products than (h, H) @ (H, W) per channel
        f = features.to(torch.float32).permute(0, 2, 3, 1)
        rows = torch.bmm(wy, f.reshape(n, height, -1)).view(n, output_size, width, -1)  # (N, h, W, C)
        out = torch.matmul(wx[:, None], rows)  # (N, h, w, C)
    return out.to(features.dtype).permute(0, 3, 1, 2)


class ViewRoIAlign(nn.Module):
    """``(cls (N, C), patches (N, C, H, W), boxes (N, 4)) → tokens (N, 1 + h·w, C)``.

    ``boxes`` are xyxy in view pixels (float); box ``i`` is pooled from view ``i``.
    """

    def __init__(self, output_size: int, patch_size: int, sampling_ratio: int = 2, aligned: bool = False):
        super().__init__()
        self.output_size = int(output_size)
        self.spatial_scale = 1.0 / patch_size
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Always in float32 (boxes, batch indices, sampling), whatever the features' dtype (the output has it):
        a bfloat16 box rounds 20.7 to 20.75 and a batch index above 256 to a neighbour's, and torchvision's
        CUDA kernel has no bfloat16. Float32 features with a fixed sampling ratio take the torchvision
        kernel below :data:`SEPARABLE_MIN_MAPS` maps (faster there); half-precision ones always the separable
        form, so that a region's result does not depend on how many maps share its batch."""
        n = patches.shape[0]
        if boxes.shape != (n, 4):
            raise ValueError(f"expected one box per view, shape ({n}, 4); got {tuple(boxes.shape)}")
        half = patches.dtype not in (torch.float32, torch.float64)
        if self.sampling_ratio > 0 and (n >= SEPARABLE_MIN_MAPS or half):
            pooled = separable_roi_align(patches, boxes, self.output_size, self.spatial_scale,
                                         self.sampling_ratio, self.aligned)  # (N, C, h, w)
        else:  # few float32 maps (torchvision is faster there) or an adaptive sampling grid (differs box by box)
            work = torch.promote_types(patches.dtype, torch.float32)
            index = torch.arange(n, device=patches.device, dtype=work)[:, None]
            rois = torch.cat([index, boxes.to(work)], dim=1)
            plain = patches.device.type in ("cpu", "cuda", "mps")
            with torch.autocast(device_type=patches.device.type, enabled=False) if plain else nullcontext():
                pooled = roi_align(patches.to(work), rois, output_size=self.output_size,
                                   spatial_scale=self.spatial_scale, sampling_ratio=self.sampling_ratio,
                                   aligned=self.aligned).to(patches.dtype)
        return torch.cat([cls[:, None, :], pooled.flatten(2).transpose(1, 2)], dim=1)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale:.4g}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")
