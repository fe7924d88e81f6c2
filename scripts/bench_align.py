"""Benchmark: the deformable alignment's two samplers, ``grid_sample`` against torchvision's ``deform_conv2d``.

Both compute the same bilinear sampling (``dynrefer.model.align``); on CPU the module uses
``grid_sample`` because torchvision's CPU ``deform_conv2d`` runs single-threaded im2col loops.
Settings: the built-in model's shape (``--maps 32``: 16 regions × 2 extra views, 128 channels, 8×8
RoI maps, 4 groups, 3×3) and the official size (``--official``: 1408 channels, 16×16), random
parameters with offsets of a few pixels; forward only (``inference_mode``) and forward + backward.
Prints one JSON object: median milliseconds of ``--runs`` runs after a warm-up, the speed-up
``deform_conv2d / grid_sample`` of each, and the largest output difference between the two.

Usage: ``python scripts/bench_align.py [--maps 32] [--runs 20] [--official] [--device cpu]``
"""

from __future__ import annotations

import argparse
import json

import torch
from timing import median_seconds

from dynrefer.model.align import DeformableAlignment


def median_ms(fn, runs: int, device: torch.device) -> float:
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    return 1000 * median_seconds(fn, runs, sync=sync)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--maps", type=int, default=32)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--official", action="store_true", help="1408 channels, 16x16 maps")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    c, hw = (1408, 16) if args.official else (128, 8)
    torch.manual_seed(0)
    mod = DeformableAlignment(c).to(device)
    with torch.no_grad():
        mod.offset_mask.weight.normal_(0, 0.05)
        mod.offset_mask.bias.normal_(0, 1.0)
    view = torch.randn(args.maps, c, hw, hw, device=device)
    ref = torch.randn_like(view)
    row = {"device": args.device, "maps": args.maps, "channels": c, "size": hw,
           "torch_threads": torch.get_num_threads()}
    outputs = {}
    for sampler in ("deform_conv2d", "grid_sample"):
        mod.sampler = sampler
        with torch.inference_mode():
            outputs[sampler] = mod(view, ref)
            row[f"{sampler}_forward_ms"] = round(median_ms(lambda: mod(view, ref), args.runs, device), 2)
        x = view.clone().requires_grad_(True)
        row[f"{sampler}_train_step_ms"] = round(
            median_ms(lambda: mod(x, ref).square().mean().backward(), args.runs, device), 2)
    row["forward_speedup"] = round(row["deform_conv2d_forward_ms"] / row["grid_sample_forward_ms"], 2)
    row["train_step_speedup"] = round(row["deform_conv2d_train_step_ms"] / row["grid_sample_train_step_ms"], 2)
    row["max_abs_difference"] = float((outputs["deform_conv2d"] - outputs["grid_sample"]).abs().max())
    print(json.dumps(row))


if __name__ == "__main__":
    main()
