"""Deformable alignment of an extra view to the reference view (SPEC §1.3 item 3).

DynRefer aligns the RoI feature map of every view ``k >= 1`` to view 0 with a DCNv4 layer (4 groups, 3x3
kernel). This module reproduces that layer with ``torchvision.ops.deform_conv2d``: no custom op, any device,
any floating dtype. On CPU the same sampling is computed with one ``grid_sample`` call instead
(:func:`deformable_sample`; torchvision's CPU kernel is single-threaded and several times slower); the
two agree to rounding.

Semantics
---------
For ``view, reference`` of shape (B, C, H, W), G groups of D = C / G channels, a k x k kernel (K = k*k
points, odd k, pad = (k-1)//2, stride 1, dilation 1)::

    x  = value_proj(view)                                  # C -> C linear per position (channels-last)
    o  = offset_mask(offset_mask_dw(cat[view, reference])) # packed DCNv4 layout, see below
    s[b, g*D+d, q] = sum_{ix, iy} m[b, g, ix, iy, q] * bilinear(x[b, g*D+d], q + (ix - pad + dx, iy - pad + dy))
    out = output_proj(s)                                   # C -> C linear per position

with ``(dx, dy) = o[b, q, g, ix, iy]`` in pixels (x = column, y = row), bilinear interpolation at integer
pixel centres, zero outside the map (a location with y <= -1, y >= H, x <= -1 or x >= W contributes 0, and
corners outside the map count as 0). The modulation ``m`` is used raw: no softmax, no sigmoid.

* ``offset_mask_dw = Conv2d(2C, C, dw_kernel_size, padding=(dw_kernel_size-1)//2, groups=C)``: with
  ``groups=C`` over the 2C channels of ``cat[view, reference]`` (view first), output channel c sees the
  concatenated channels 2c and 2c+1 (so the first C/2 outputs read only the view, the last C/2 only the
  reference). Default PyTorch init. No activation before ``offset_mask``.
* ``offset_mask = Linear(C, ceil(3*G*K / 8) * 8)`` (112 outputs for G=4, K=9), zero-initialised (weight and
  bias), so at init m = 0 and the module returns exactly ``output_proj(0) = 0``: extra views add nothing
  until they are learned in. At step 0 only the modulation rows of ``offset_mask`` and ``output_proj.bias``
  get a gradient (see ``tests/test_align.py``).
* ``value_proj`` / ``output_proj``: ``Linear(C, C)``, xavier-uniform weight, zero bias.
* ``init="identity"`` (not official; for small models trained from scratch): the same, except that the
  modulation bias of the centre kernel point is 1 in every group, so at init ``m`` is 1 there and 0
  elsewhere, the offsets are 0 and the module returns ``output_proj(value_proj(view))``.

Packed ``offset_mask`` layout (the DCNv4 layout, kept so official weights load without reshuffling)
--------------------------------------------------------------------------------------------------
Output channel ``g*3K + j`` of ``offset_mask`` for group g (the last ``ceil(3GK/8)*8 - 3GK`` channels are
padding that is never read, so its rows never get a gradient)::

    j = 2*p      -> dx of kernel point p        (x / width / column offset first)
    j = 2*p + 1  -> dy of kernel point p
    j = 2K + p   -> modulation m of kernel point p
    p = ix * k + iy                             (x-major: the kernel column index varies slowest)

torchvision's ``deform_conv2d`` expects instead, channels-first: ``offset`` channel ``g*2K + 2*t`` = dy and
``g*2K + 2*t + 1`` = dx, ``mask`` channel ``g*K + t``, with ``t = iy * k + ix`` (row-major), offset group g
covering input channels ``[g*D, (g+1)*D)`` (pytorch/vision ``torchvision/csrc/ops/cpu/deform_conv2d_kernel.cpp``,
``deformable_im2col_kernel``: ``offset_h`` at ``2*mask_idx``, ``offset_w`` at ``2*mask_idx + 1``,
``mask_idx = i*weight_w + j``, sample at ``(out_y*stride - pad + i*dil + offset_h, out_x*stride - pad +
j*dil + offset_w)``). ``forward`` converts: transpose the (ix, iy) point grid and swap (dx, dy) -> (dy, dx).
The sum over kernel points is done with depthwise unit weights (``weight = ones(C, 1, k, k)``, ``groups=C``).

Facts from the public sources
-----------------------------
* OpenGVLab/DCNv4 ``DCNv4_op/DCNv4/modules/dcnv4.py``: ``offset_mask = nn.Linear(channels,
  int(math.ceil((K*3)/8)*8))`` with ``K = group*(kernel_size**2 - remove_center)``; ``_reset_parameters``
  zeroes ``offset_mask`` and xavier-initialises ``value_proj``/``output_proj`` with zero biases; inputs are
  channels-last (N, L, C); ``offset_mask_dw`` is optional (depthwise, C -> C in plain DCNv4).
* OpenGVLab/DCNv4 ``DCNv4_op/src/cuda/dcnv4_im2col_cuda.cuh`` (``forward_kernel_dcn_reg``): per query the
  group block starts at ``gi*K*3`` of a row of length ``padded_offset_dim``; masks are read at ``K*2 + i``;
  the loops are ``for i < kernel_w: for j < kernel_h`` (x-major) with ``offset_idx += 2``;
  ``w_im = p0_w_ + (i*dilation_w + off[offset_idx]) * offset_scale`` and ``h_im = p0_h_ + (j*dilation_h +
  off[offset_idx+1]) * offset_scale``, ``p0_w_ = q_x*stride - pad + half*(1 - offset_scale)``,
  ``half = (dilation*(k-1)) >> 1``. So with offset_scale = 1 the location is ``q - pad + (i, j)*dilation +
  (dx, dy)``, exactly torchvision's; offset_scale != 1 would scale the kernel grid and the offsets together
  around the centre. Sampling only when ``-1 < h_im < H`` and ``-1 < w_im < W``; bilinear with zero
  corners outside (``DCNv4_op/src/cuda/common.h``, ``ms_deform_attn_im2col_bilinear``), as torchvision.
  ``DCNv4_op/DCNv4/functions/dcnv4_func.py`` passes ``softmax=False``: the modulation is unnormalised.
* OpenGVLab/DCNv4 ``DCNv4_op/scripts/test_dcnv4.py`` builds the packed tensor as
  ``cat([offset.unflatten(-1, (M, P*2)), mask], -1).flatten(-2)`` zero-padded to a multiple of 8, and
  ``classification/ops_dcnv3/functions/dcnv3_func.py`` (``_generate_dilation_grids``: ``meshgrid(x, y)``
  ij-indexed, stacked as (x, y)) confirms the x-major point order and (x, y) offset order.
* callsys/DynRefer ``dynrefer/models/dynrefer_t5.py`` (same in ``dynrefer_vicuna.py``), class
  ``CustomDCNv4`` used as ``cvem_align = CustomDCNv4(vision_embed_dim)``: defaults kernel_size=3, pad=1,
  stride=1, dilation=1, group=4, offset_scale=1.0, dw_kernel_size=3, center_feature_scale=False,
  remove_center=False, output_bias=True; ``offset_mask_dw = nn.Conv2d(channels*2, channels, dw_kernel_size,
  padding=(dw_kernel_size-1)//2, groups=channels)`` applied to ``cat([input, ref], 1)`` (the un-projected
  view first, view 0 second) with no activation; called as ``cvem_align(source=view 0, target=view k)``
  (our argument order is ``(view, reference)``). The official CUDA op also requires ``(C/G) % 16 == 0``;
  this module does not.

Parameter names and shapes match the official ``cvem_align.*`` keys (``value_proj``, ``output_proj``,
``offset_mask_dw``, ``offset_mask``), so an official state dict loads as-is.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

__all__ = ["DeformableAlignment", "deformable_sample", "packed_offset_mask_width"]

# dtypes torchvision's deform_conv2d kernels dispatch on (CPU and CUDA); others run in float32.
_NATIVE_DTYPES = (torch.float16, torch.float32, torch.float64)


def packed_offset_mask_width(groups: int, kernel_size: int) -> int:
    """Output width of the packed DCNv4 ``offset_mask`` layer: ``ceil(3*groups*k*k / 8) * 8``."""
    return int(math.ceil(3 * groups * kernel_size * kernel_size / 8) * 8)


class DeformableAlignment(nn.Module):
    """Align ``view`` (view k >= 1) to ``reference`` (view 0): (B, C, H, W) -> (B, C, H, W).

    A DCNv4-equivalent layer computed with ``torchvision.ops.deform_conv2d`` (``grid_sample`` on CPU, see
    ``sampler``); see the module docstring for
    the exact semantics and the packed ``offset_mask`` layout.
    """

    def __init__(
        self,
        channels: int,
        groups: int = 4,
        kernel_size: int = 3,
        dw_kernel_size: int = 3,
        *,
        init: str = "zero",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if channels <= 0 or groups <= 0 or channels % groups != 0:
            raise ValueError(f"channels ({channels}) must be a positive multiple of groups ({groups})")
        for name, size in (("kernel_size", kernel_size), ("dw_kernel_size", dw_kernel_size)):
            if size < 1 or size % 2 == 0:
                raise ValueError(f"{name} must be a positive odd integer, got {size}")
        if init not in ("zero", "identity"):
            raise ValueError(f"init must be 'zero' or 'identity', got {init!r}")
        self.init = init
        #: ``"auto"`` (``grid_sample`` on CPU, torchvision's ``deform_conv2d`` elsewhere), ``"grid_sample"`` or
        #: ``"deform_conv2d"``: two computations of the same sampling (see :func:`deformable_sample`).
        self.sampler = "auto"
        self.channels = channels
        self.groups = groups
        self.kernel_size = kernel_size
        self.dw_kernel_size = dw_kernel_size
        self.num_points = kernel_size * kernel_size
        factory = {"device": device, "dtype": dtype}
        self.value_proj = nn.Linear(channels, channels, **factory)
        self.offset_mask_dw = nn.Conv2d(
            2 * channels,
            channels,
            dw_kernel_size,
            padding=(dw_kernel_size - 1) // 2,
            groups=channels,
            **factory,
        )
        self.offset_mask = nn.Linear(channels, packed_offset_mask_width(groups, kernel_size), **factory)
        self.output_proj = nn.Linear(channels, channels, **factory)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        if self.init == "identity":
            n = self.num_points
            centre = (self.kernel_size // 2) * self.kernel_size + self.kernel_size // 2  # p = ix*k + iy
            with torch.no_grad():
                for g in range(self.groups):
                    self.offset_mask.bias[g * 3 * n + 2 * n + centre] = 1.0
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, groups={self.groups}, kernel_size={self.kernel_size}, "
            f"dw_kernel_size={self.dw_kernel_size}, init={self.init}"
        )

    def packed_offset_mask(self, view: Tensor, reference: Tensor) -> Tensor:
        """The raw ``offset_mask`` output, channels-last (B, H, W, ceil(3GK/8)*8), in DCNv4's packed layout."""
        if view.dim() != 4 or view.shape != reference.shape or view.shape[1] != self.channels:
            raise ValueError(
                f"view and reference must both be (B, {self.channels}, H, W); "
                f"got {tuple(view.shape)} and {tuple(reference.shape)}"
            )
        return self.offset_mask(self.offset_mask_hidden(view, reference))

    def offset_mask_hidden(self, view: Tensor, reference: Tensor) -> Tensor:
        """``offset_mask_dw(cat[view, reference])`` channels-last, (B, H, W, C).

        Computed as a depthwise convolution over the 2C channels (output ``j`` = input ``j`` convolved with
        ``weight[j // 2, j % 2]``) and the sum of each channel pair plus the bias: the same sum as the grouped
        convolution (two inputs per group), in another order (rounding only), and ~5x faster on CPU, where
        oneDNN's two-input grouped convolution is slow; the concatenation is written channels-last directly.
        """
        conv = self.offset_mask_dw
        stacked = torch.cat([view.permute(0, 2, 3, 1), reference.permute(0, 2, 3, 1)], dim=-1)  # (B, H, W, 2C)
        # float32 (at least) throughout, then the input's dtype: the grouped convolution accumulates its 2k² terms
        # in float32 and rounds once; three half-precision roundings here would double a bf16 model's error
        work = torch.promote_types(stacked.dtype, torch.float32)
        weight = conv.weight.to(work).reshape(2 * self.channels, 1, *conv.weight.shape[2:])
        plain = stacked.device.type in ("cpu", "cuda", "mps")  # where autocast exists (not on the meta device)
        with torch.autocast(device_type=stacked.device.type, enabled=False) if plain else nullcontext():
            each = F.conv2d(stacked.permute(0, 3, 1, 2).to(work), weight, None, padding=conv.padding,
                            groups=2 * self.channels)
            each = each.permute(0, 2, 3, 1)  # channels-last view of (B, 2C, H, W)
            hidden = each[..., 0::2] + each[..., 1::2]
            if conv.bias is not None:
                hidden = hidden + conv.bias.to(work)
        return hidden.to(view.dtype)

    def unpack_offset_mask(self, packed: Tensor) -> tuple[Tensor, Tensor]:
        """Packed DCNv4 (B, H, W, P) -> torchvision ``(offset (B, 2GK, H, W), mask (B, GK, H, W))``."""
        b, h, w, _ = packed.shape
        g, k, n = self.groups, self.kernel_size, self.num_points
        core = packed[..., : 3 * g * n].unflatten(-1, (g, 3 * n))
        # DCNv4: point p = ix*k + iy holding (dx, dy) -> torchvision: point t = iy*k + ix holding (dy, dx).
        offset = core[..., : 2 * n].unflatten(-1, (k, k, 2)).transpose(-3, -2).flip(-1)
        mask = core[..., 2 * n :].unflatten(-1, (k, k)).transpose(-2, -1)
        offset = offset.reshape(b, h, w, 2 * g * n).permute(0, 3, 1, 2).contiguous()
        mask = mask.reshape(b, h, w, g * n).permute(0, 3, 1, 2).contiguous()
        return offset, mask

    def forward(self, view: Tensor, reference: Tensor) -> Tensor:
        packed = self.packed_offset_mask(view, reference)
        # (B, H, W, C); contiguous: the same bf16 kernel whatever B
        x = self.value_proj(view.permute(0, 2, 3, 1).contiguous())
        dtype = x.dtype
        sampler = self.sampler
        if sampler == "auto":
            # MPS: no torchvision kernel
            sampler = "grid_sample" if x.device.type in ("cpu", "mps") else "deform_conv2d"
        if x.shape[1] < 2 or x.shape[2] < 2:
            sampler = "deform_conv2d"  # grid_sample's normalised coordinates need two pixels per axis
        if sampler == "grid_sample":
            if dtype != torch.float64:  # coordinates in at least float32
                x, packed = x.float(), packed.float()
            sampled = deformable_sample(x, packed, self.kernel_size, self.groups)  # (B, H, W, C)
        else:
            offset, mask = self.unpack_offset_mask(packed)
            x = x.permute(0, 3, 1, 2).contiguous()
            if dtype not in _NATIVE_DTYPES:  # e.g. bfloat16: torchvision has no kernel, sample in float32
                x, offset, mask = x.float(), offset.float(), mask.float()
            ones = torch.ones(self.channels, 1, self.kernel_size, self.kernel_size, dtype=x.dtype, device=x.device)
            sampled = deform_conv2d(x, offset, ones, mask=mask, padding=(self.kernel_size - 1) // 2)
            sampled = sampled.permute(0, 2, 3, 1)
        return self.output_proj(sampled.to(dtype)).permute(0, 3, 1, 2)


def deformable_sample(x: Tensor, packed: Tensor, kernel_size: int, groups: int) -> Tensor:
    """The modulated deformable sampling of the module docstring, ``s`` from ``x`` (B, H, W, C) channels-last
    and the packed DCNv4 ``offset_mask`` output (B, H, W, P), with one ``grid_sample`` call → (B, H, W, C).

    Sampling location of point ``p = ix*k + iy`` at output ``q``: ``(q_x - pad + ix + dx, q_y - pad + iy +
    dy)``, bilinear at integer pixel centres with zero corners outside the map, which is ``grid_sample``'s
    ``align_corners=True, padding_mode="zeros"`` once the location is normalised by ``(W-1, H-1)`` (so
    ``H, W >= 2``); the packed (dx, dy) pairs are already ``grid_sample``'s (x, y) order. Equal to torchvision's
    ``deform_conv2d`` (the ``"deform_conv2d"`` sampler, after :meth:`DeformableAlignment.unpack_offset_mask`)
    up to rounding (1e-14 in float64), and several times faster on CPU, where that kernel runs single-threaded
    im2col loops.
    """
    b, h, w, c = x.shape
    g, n = groups, kernel_size * kernel_size
    pad = (kernel_size - 1) // 2
    core = packed[..., : 3 * g * n].unflatten(-1, (g, 3 * n))  # (B, H, W, G, 3K)
    points = torch.arange(n, device=x.device)
    base_x = torch.arange(w, dtype=x.dtype, device=x.device).view(1, w, 1) + (points // kernel_size - pad).to(x.dtype)
    base_y = torch.arange(h, dtype=x.dtype, device=x.device).view(h, 1, 1) + (points % kernel_size - pad).to(x.dtype)
    # (H, W, 1, K, 2): q + (ix, iy) - pad
    base = torch.stack(torch.broadcast_tensors(base_x, base_y), dim=-1).unsqueeze(2)
    scale = torch.tensor([2.0 / (w - 1), 2.0 / (h - 1)], dtype=x.dtype, device=x.device)
    grid = (core[..., : 2 * n].unflatten(-1, (n, 2)) + base) * scale - 1.0  # (B, H, W, G, K, 2)
    grid = grid.permute(0, 3, 4, 1, 2, 5).reshape(b * g, 1, n * h * w, 2)  # one row: ~20 % faster than (K·H, W)
    values = x.reshape(b, h, w, g, c // g).permute(0, 3, 4, 1, 2).reshape(b * g, c // g, h, w)
    sampled = F.grid_sample(values, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    sampled = sampled.view(b, g, c // g, n, h, w)
    mask = core[..., 2 * n :].permute(0, 3, 4, 1, 2).contiguous().unsqueeze(2)  # (B, G, 1, K, H, W)
    out = sampled[:, :, :, 0] * mask[:, :, :, 0]  # the sum over kernel points, one point at a time: no
    for t in range(1, n):                          # (B, G, D, K, H, W) product tensor
        out.addcmul_(sampled[:, :, :, t], mask[:, :, :, t])  # in place: autograd needs only the factors
    return out.permute(0, 3, 4, 1, 2).reshape(b, h, w, c)
