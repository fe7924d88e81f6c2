"""RoI-align of the region on each view's patch map (SPEC §1.3.2).

Each view carries exactly one box: the region re-expressed in that view's ``S×S`` pixels
(``box_in_view``). ``torchvision.ops.roi_align`` pools it to ``h×w`` (by default the patch
grid, 16×16 for 224 px / patch 14) with spatial scale ``1/patch`` and sampling ratio 2;
the reference uses ``aligned=False``. The view's CLS token is carried along unchanged, so
each view yields ``1 + h·w`` tokens (257 officially).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align


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
        n = patches.shape[0]
        if boxes.shape != (n, 4):
            raise ValueError(f"expected one box per view, shape ({n}, 4); got {tuple(boxes.shape)}")
        index = torch.arange(n, device=patches.device, dtype=patches.dtype)[:, None]
        rois = torch.cat([index, boxes.to(patches.dtype)], dim=1)
        pooled = roi_align(
            patches,
            rois,
            output_size=self.output_size,
            spatial_scale=self.spatial_scale,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
        )  # (N, C, h, w)
        return torch.cat([cls[:, None, :], pooled.flatten(2).transpose(1, 2)], dim=1)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale:.4g}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")
