"""Deformable alignment (SPEC §1.3 item 3): torchvision-based module vs. a slow DCNv4-semantics reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dynrefer.model.align import DeformableAlignment, packed_offset_mask_width


def _bilinear(img: torch.Tensor, py: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """Sample channels-last ``img`` (B, H, W, D) at pixel locations ``py``, ``px`` (B, Ho, Wo).

    Bilinear at integer pixel centres; a location outside ``(-1, H) x (-1, W)`` gives 0 and corners outside
    the map count as 0 (DCNv4 ``ms_deform_attn_im2col_bilinear``).
    """
    b, h, w, _ = img.shape
    inside = (py > -1) & (py < h) & (px > -1) & (px < w)
    y0, x0 = torch.floor(py), torch.floor(px)
    ly, lx = py - y0, px - x0  # differentiable w.r.t. the locations (floor has zero gradient)
    batch = torch.arange(b, device=img.device).view(b, 1, 1)
    out = torch.zeros(*py.shape, img.shape[-1], dtype=img.dtype, device=img.device)
    for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            valid = inside & (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
            yi, xi = yy.clamp(0, h - 1).long(), xx.clamp(0, w - 1).long()
            weight = torch.where(valid, wy * wx, torch.zeros_like(wy))
            out = out + weight[..., None] * img[batch, yi, xi]
    return out


def reference_forward(mod: DeformableAlignment, view: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """The DCNv4 layer written out from the packed ``offset_mask`` output, with explicit bilinear sampling.

    Packed layout per group g (DCNv4 ``forward_kernel_dcn_reg``): ``[g*3K + 2p]`` = dx, ``[g*3K + 2p + 1]`` =
    dy, ``[g*3K + 2K + p]`` = modulation, ``p = ix*k + iy``; location ``q - pad + (ix, iy) + (dx, dy)``.
    """
    b, c, h, w = view.shape
    g, k = mod.groups, mod.kernel_size
    n, d, pad = k * k, c // g, (k - 1) // 2
    dw = mod.offset_mask_dw  # Conv2d(2C, C, groups=C) over cat[view, reference], view first (official)
    hidden = F.conv2d(torch.cat([view, ref], 1), dw.weight, dw.bias, padding=dw.padding, groups=c)
    packed = hidden.permute(0, 2, 3, 1) @ mod.offset_mask.weight.T + mod.offset_mask.bias  # (B, H, W, P)
    core = packed[..., : 3 * g * n].reshape(b, h, w, g, 3 * n)
    x = view.permute(0, 2, 3, 1) @ mod.value_proj.weight.T + mod.value_proj.bias
    x = x.reshape(b, h, w, g, d)
    qy = torch.arange(h, dtype=view.dtype).view(1, h, 1)
    qx = torch.arange(w, dtype=view.dtype).view(1, 1, w)
    groups_out = []
    for gi in range(g):
        acc = torch.zeros(b, h, w, d, dtype=view.dtype)
        for ix in range(k):
            for iy in range(k):
                p = ix * k + iy
                dx, dy, m = core[..., gi, 2 * p], core[..., gi, 2 * p + 1], core[..., gi, 2 * n + p]
                px = qx - pad + ix + dx
                py = qy - pad + iy + dy
                acc = acc + m[..., None] * _bilinear(x[..., gi, :], py, px)
        groups_out.append(acc)
    s = torch.cat(groups_out, dim=-1)  # (B, H, W, C), group-major channels
    out = s @ mod.output_proj.weight.T + mod.output_proj.bias
    return out.permute(0, 3, 1, 2)


def _randomise(mod: DeformableAlignment, offset_px: float = 2.5, seed: int = 0) -> None:
    """Non-zero offsets (a few pixels, fractional, some out of bounds) and modulation."""
    gen = torch.Generator().manual_seed(seed)
    n, g = mod.num_points, mod.groups
    with torch.no_grad():
        wt = torch.randn(mod.offset_mask.weight.shape, generator=gen, dtype=torch.float64)
        bias = torch.randn(mod.offset_mask.bias.shape, generator=gen, dtype=torch.float64)
        rows = torch.arange(wt.shape[0])
        is_offset = (rows < 3 * g * n) & ((rows % (3 * n)) < 2 * n)
        scale = torch.where(is_offset, offset_px, 1.0) / math.sqrt(wt.shape[1])
        mod.offset_mask.weight.copy_(wt * scale[:, None])
        mod.offset_mask.bias.copy_(bias * torch.where(is_offset, offset_px, 0.5))
        mod.output_proj.bias.copy_(torch.randn(mod.output_proj.bias.shape, generator=gen) * 0.1)
        mod.value_proj.bias.copy_(torch.randn(mod.value_proj.bias.shape, generator=gen) * 0.1)


@pytest.mark.parametrize("sampler", ["grid_sample", "deform_conv2d"])
@pytest.mark.parametrize(("groups", "kernel", "hw"), [(4, 3, (6, 5)), (2, 5, (4, 7)), (4, 1, (3, 3)), (1, 3, (1, 1))])
def test_matches_slow_reference_forward_and_backward(groups, kernel, hw, sampler):
    torch.manual_seed(0)
    c, b = 8, 2
    mod = DeformableAlignment(c, groups=groups, kernel_size=kernel).double()
    mod.sampler = sampler
    _randomise(mod)
    view = torch.randn(b, c, *hw, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(b, c, *hw, dtype=torch.float64, requires_grad=True)
    packed = mod.packed_offset_mask(view, ref).detach()
    offs = packed[..., : 3 * groups * kernel**2].unflatten(-1, (groups, -1))[..., : 2 * kernel**2]
    assert offs.abs().max() > 2 and (offs.frac().abs() > 1e-3).float().mean() > 0.9  # sizable, fractional

    out = mod(view, ref)
    expected = reference_forward(mod, view, ref)
    assert out.shape == (b, c, *hw)
    assert expected.abs().max() > 1e-2
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)

    cot = torch.randn(out.shape, dtype=torch.float64)
    inputs = [view, ref, *mod.parameters()]
    got = torch.autograd.grad((out * cot).sum(), inputs)
    want = torch.autograd.grad((expected * cot).sum(), inputs)
    for (name, _), gg, ww in zip([("view", 0), ("ref", 0), *mod.named_parameters()], got, want):
        torch.testing.assert_close(gg, ww, rtol=0, atol=1e-8, msg=lambda m, name=name: f"{name}: {m}")
    # Both the offset rows and the modulation rows of offset_mask are exercised.
    assert got[2 + [n for n, _ in mod.named_parameters()].index("offset_mask.weight")].abs().sum() > 0


def test_cpu_uses_grid_sample_and_it_equals_deform_conv2d(monkeypatch):
    import dynrefer.model.align as align_module

    torch.manual_seed(4)
    mod = DeformableAlignment(32, groups=4)
    _randomise(mod, seed=7, offset_px=4.0)
    view, ref = torch.randn(2, 6, 32, 8, 8)
    mod.sampler = "deform_conv2d"
    expected = mod(view, ref)
    mod.sampler = "auto"

    def refuse(*args, **kwargs):
        raise AssertionError("deform_conv2d called on CPU with sampler='auto'")

    monkeypatch.setattr(align_module, "deform_conv2d", refuse)
    got = mod(view, ref)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)


def test_packed_layout_is_dcnv4():
    """One group, one kernel point at a time, integer shifts: pins x-major points and (dx, dy) order."""
    c, k = 4, 3
    mod = DeformableAlignment(c, groups=1, kernel_size=k).double()
    with torch.no_grad():
        mod.value_proj.weight.copy_(torch.eye(c))
        mod.output_proj.weight.copy_(torch.eye(c))
    view = torch.randn(1, c, 5, 6, dtype=torch.float64)
    padded = F.pad(view, (2, 2, 2, 2))  # zero outside the map

    def shifted(sy: int, sx: int) -> torch.Tensor:  # out(q) = view(q + (sy, sx))
        return padded[..., 2 + sy : 2 + sy + 5, 2 + sx : 2 + sx + 6]

    cases = [  # (ix, iy, dx, dy) -> sampled at q + (iy - 1 + dy, ix - 1 + dx)
        (1, 1, 0, 0), (2, 1, 0, 0), (1, 2, 0, 0), (0, 2, 0, 0), (1, 1, 1, 0), (1, 1, 0, -1), (2, 0, -1, 1),
    ]
    for ix, iy, dx, dy in cases:
        p = ix * k + iy
        with torch.no_grad():
            mod.offset_mask.bias.zero_()
            mod.offset_mask.bias[2 * p] = dx
            mod.offset_mask.bias[2 * p + 1] = dy
            mod.offset_mask.bias[2 * k * k + p] = 1.0
        out = mod(view, torch.randn_like(view))
        torch.testing.assert_close(out, shifted(iy - 1 + dy, ix - 1 + dx), rtol=0, atol=1e-12)


def test_zero_at_init_and_gradients_at_step0():
    """At init offset_mask is zero, so every modulation m and offset is 0 and the output is exactly
    output_proj(0) = 0. Backward at step 0, exactly:
      * non-zero: output_proj.bias (dL/dout) and the *modulation* rows of offset_mask (weight and bias):
        dL/dm = <dL/ds, x(p + p_k)> with x = value_proj(view) != 0;
      * exactly zero: the *offset* rows and the padding rows of offset_mask (dL/doffset carries a factor m = 0),
        value_proj (dL/dx = m * ... = 0), output_proj.weight (its input s = 0), offset_mask_dw (its output
        feeds offset_mask through a zero weight) and both inputs.
    After one optimiser step m != 0 and everything except the padding rows receives a gradient.
    """
    torch.manual_seed(1)
    c, g, k = 16, 4, 3
    n = k * k
    mod = DeformableAlignment(c, groups=g, kernel_size=k)
    assert mod.offset_mask.weight.shape == (packed_offset_mask_width(g, k), c) == (112, c)
    view = torch.randn(2, c, 6, 7, requires_grad=True)
    ref = torch.randn(2, c, 6, 7, requires_grad=True)
    out = mod(view, ref)
    assert torch.equal(out, torch.zeros_like(out))
    (out * torch.randn_like(out)).sum().backward()

    rows = torch.arange(mod.offset_mask.weight.shape[0])
    is_mask = (rows < 3 * g * n) & ((rows % (3 * n)) >= 2 * n)
    wg, bg = mod.offset_mask.weight.grad, mod.offset_mask.bias.grad
    assert (wg[is_mask].abs().sum(1) > 0).all() and (bg[is_mask] != 0).all()
    assert torch.count_nonzero(wg[~is_mask]) == 0 and torch.count_nonzero(bg[~is_mask]) == 0
    assert (mod.output_proj.bias.grad != 0).all()
    for name in ("output_proj.weight", "value_proj.weight", "value_proj.bias", "offset_mask_dw.weight",
                 "offset_mask_dw.bias"):
        assert torch.count_nonzero(mod.get_parameter(name).grad) == 0, name
    assert torch.count_nonzero(view.grad) == 0 and torch.count_nonzero(ref.grad) == 0

    torch.optim.SGD(mod.parameters(), lr=0.1).step()
    mod.zero_grad()
    out = mod(view.detach(), ref.detach())
    assert out.abs().max() > 0
    (out * torch.randn_like(out)).sum().backward()
    for name, prm in mod.named_parameters():
        assert prm.grad.abs().sum() > 0, name
    assert (mod.offset_mask.weight.grad[~is_mask & (rows < 3 * g * n)].abs().sum(1) > 0).all()
    assert torch.count_nonzero(mod.offset_mask.weight.grad[3 * g * n :]) == 0  # padding rows: never used


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_identity_init_passes_the_view_through(kernel):
    """init="identity": modulation 1 at the centre point of every group and 0 elsewhere, offsets 0, so the
    output equals output_proj(value_proj(view)) exactly, whatever the reference; the slow reference agrees."""
    torch.manual_seed(3)
    c, g = 16, 4
    mod = DeformableAlignment(c, groups=g, kernel_size=kernel, init="identity").double()
    view, ref = torch.randn(2, c, 5, 6, dtype=torch.float64), torch.randn(2, c, 5, 6, dtype=torch.float64)
    offset, mask = mod.unpack_offset_mask(mod.packed_offset_mask(view, ref))
    assert torch.count_nonzero(offset) == 0
    centre = (kernel // 2) * kernel + kernel // 2
    expected = torch.zeros_like(mask)
    expected[:, [gi * kernel * kernel + centre for gi in range(g)]] = 1.0
    assert torch.equal(mask, expected)
    passed = mod.output_proj(mod.value_proj(view.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
    torch.testing.assert_close(mod(view, ref), passed, rtol=0, atol=1e-12)
    torch.testing.assert_close(mod(view, ref), reference_forward(mod, view, ref), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="init"):
        DeformableAlignment(8, groups=2, init="ones")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hw", [(1, 1), (3, 1), (5, 7), (16, 16)])
def test_shapes_and_dtypes(dtype, hw):
    mod = DeformableAlignment(16, groups=4).to(dtype)
    _randomise(mod, seed=3)
    view = torch.randn(3, 16, *hw, dtype=dtype)
    out = mod(view, torch.randn_like(view))
    assert out.shape == view.shape and out.dtype == dtype and torch.isfinite(out).all()
    assert out.abs().max() > 0


def test_float32_matches_float64_and_bfloat16_runs():
    torch.manual_seed(2)
    mod = DeformableAlignment(16, groups=4).double()
    _randomise(mod, seed=5)
    view, ref = torch.randn(2, 2, 16, 5, 6, dtype=torch.float64)
    expected = mod(view, ref)
    got32 = mod.float()(view.float(), ref.float())
    torch.testing.assert_close(got32.double(), expected, rtol=1e-4, atol=1e-4)
    got16 = mod.bfloat16()(view.bfloat16(), ref.bfloat16())  # no bf16 kernel in torchvision: sampled in fp32
    assert got16.dtype == torch.bfloat16
    assert (got16.double() - expected).abs().max() < 0.1 * expected.abs().max()


def test_meta_construction_official_size():
    c = 1408
    with torch.device("meta"):
        mod = DeformableAlignment(c)
    mod2 = DeformableAlignment(c, device="meta")
    for m in (mod, mod2):
        shapes = {name: tuple(p.shape) for name, p in m.named_parameters()}
        assert all(p.is_meta for p in m.parameters())
        assert shapes == {
            "value_proj.weight": (c, c), "value_proj.bias": (c,),
            "offset_mask_dw.weight": (c, 2, 3, 3), "offset_mask_dw.bias": (c,),
            "offset_mask.weight": (112, c), "offset_mask.bias": (112,),
            "output_proj.weight": (c, c), "output_proj.bias": (c,),
        }
        assert sum(p.numel() for p in m.parameters()) == 2 * (c * c + c) + (c * 18 + c) + (112 * c + 112)
    out = mod(torch.empty(2, c, 16, 16, device="meta"), torch.empty(2, c, 16, 16, device="meta"))
    assert out.shape == (2, c, 16, 16) and out.is_meta


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="multiple of groups"):
        DeformableAlignment(10, groups=4)
    with pytest.raises(ValueError, match="odd"):
        DeformableAlignment(8, kernel_size=2)
    mod = DeformableAlignment(8, groups=2)
    with pytest.raises(ValueError, match="B, 8, H, W"):
        mod(torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 5))


def test_offset_hidden_rounds_once_in_half_precision():
    """A bfloat16 module computes the offset convolution in float32 and rounds once, like the grouped
    convolution it replaces (three bfloat16 roundings doubled the error)."""
    torch.manual_seed(5)
    c = 16
    mod = DeformableAlignment(c, groups=4)
    with torch.no_grad():
        mod.offset_mask_dw.bias.normal_()
    view, ref = torch.randn(2, 3, c, 5, 6)
    dw = mod.offset_mask_dw
    exact = F.conv2d(torch.cat([view, ref], 1).double(), dw.weight.double(), dw.bias.double(), padding=dw.padding,
                     groups=c).permute(0, 2, 3, 1)
    torch.testing.assert_close(mod.offset_mask_hidden(view, ref).double(), exact, rtol=0, atol=1e-5)
    half = mod.to(torch.bfloat16)
    got = half.offset_mask_hidden(view.bfloat16(), ref.bfloat16())
    assert got.dtype == torch.bfloat16
    want = F.conv2d(torch.cat([view, ref], 1).bfloat16().double(), half.offset_mask_dw.weight.double(),
                    half.offset_mask_dw.bias.double(), padding=dw.padding, groups=c).permute(0, 2, 3, 1).bfloat16()
    assert (got == want).float().mean() > 0.99  # one rounding of the float32 sum: equal but for rare ties
