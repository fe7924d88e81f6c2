"""Benchmark: DynRefer ``predict`` throughput and peak memory, random weights.

For the ``tiny`` and ``mid`` configs at n = 1, 2, 3 views, ``regions_per_image`` regions of
one image go through ``DynRefer.predict`` (caption with the official beam settings, tags,
attributes and category against small vocabularies). Each setting runs in its own
subprocess so that its peak memory (CUDA: ``max_memory_allocated``; CPU: the process's
peak resident set size) is its own. Prints a JSON list of rows
``{"config", "views", "regions_per_image", "regions_per_s", "peak_mb", "device"}``.

Usage: ``python scripts/bench_model.py [--configs tiny,mid] [--views 1,2,3] [--regions 8]
[--repeats 3] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def run_one(config: str, views: int, regions: int, repeats: int, device: str) -> dict:
    import resource

    import torch

    import dynrefer
    from dynrefer.model.config import DynReferConfig

    torch.manual_seed(0)
    cfg = DynReferConfig.from_name(config)
    cfg.views.num_views = views
    model = dynrefer.DynRefer(cfg, tags=[f"tag {i}" for i in range(64)]).to(device).eval()
    size = cfg.views.size
    batch = {
        "pixels": torch.randn(regions * views, 3, size, size, device=device),
        "boxes_in_view": torch.tensor([[size * 0.2, size * 0.1, size * 0.7, size * 0.9]], device=device).repeat(
            regions * views, 1
        ),
    }
    attributes = [f"color:{c}" for c in ("red", "green", "blue", "white", "black")]
    categories = ["circle", "square", "triangle", "star", "person", "car"]

    def step():
        model.predict(batch, attributes=attributes, categories=categories)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    best = sorted(times)[len(times) // 2]
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"config": config, "views": views, "regions_per_image": regions,
            "regions_per_s": round(regions / best, 3), "peak_mb": round(peak, 1), "device": device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="tiny,mid")
    parser.add_argument("--views", default="1,2,3")
    parser.add_argument("--regions", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", nargs=2, metavar=("CONFIG", "VIEWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.regions, args.repeats, args.device)))
        return
    rows = []
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for config in args.configs.split(","):
        for views in [int(v) for v in args.views.split(",")]:
            cmd = [sys.executable, __file__, "--one", config, str(views), "--regions", str(args.regions),
                   "--repeats", str(args.repeats), "--device", args.device]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise SystemExit(f"setting {config} n={views} failed:\n{done.stderr}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
