"""Benchmark: the official-size model (EVA-CLIP-g + Q-Former + Flan-T5-XL, 4.0 B parameters) on this CPU.

Random weights of the official configuration are saved once as a bfloat16 folder (``--folder``, ~8 GB; the
RAM tag list's size, 4,585 tags), then each precision choice runs in a fresh process: load the folder, describe
one region of a photo twice (the second call is the one timed), report seconds and the peak resident memory:

* ``bfloat16``: the folder as stored (weights and compute in bfloat16; the RoI step in float32);
* ``float32``: ``from_pretrained(dtype=torch.float32)``;
* ``float32+autocast``: float32 weights, ``dtype="bfloat16"`` autocast (the engine's / ``--dtype``).

One JSON line per choice. Needs ~20 GB of memory for the float32 runs. Usage:
``python scripts/bench_official_cpu.py [--folder DIR] [--choices bfloat16,float32,float32+autocast]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RUN = """
import json, resource, sys, time
import torch
from dynrefer.model.dynrefer import DynRefer
from dynrefer.inference.predictor import Predictor
choice, folder = sys.argv[1], sys.argv[2]
t = time.perf_counter()
model = DynRefer.from_pretrained(folder, dtype=None if choice == "bfloat16" else torch.float32)
load = time.perf_counter() - t
predictor = Predictor(model, dtype="bfloat16" if choice.endswith("autocast") else None)
from skimage import data
image = torch.from_numpy(data.astronaut()).permute(2, 0, 1).contiguous()
times = []
for _ in range(2):
    t = time.perf_counter()
    predictor.describe(image, [[150, 15, 300, 190]], tasks=("caption", "tags", "category"), classes=["person", "cup"])
    times.append(time.perf_counter() - t)
print(json.dumps({"choice": choice, "load_s": round(load, 1), "first_region_s": round(times[0], 1),
                  "region_s": round(times[1], 1),
                  "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                  "dtypes": sorted({str(p.dtype) for p in model.parameters()})}))
"""


def save_random(folder: Path) -> float:
    """Random official-size weights, built on the meta device and filled in place (no 4 B-parameter random
    initialisation), cast to bfloat16 and saved; returns the seconds."""
    import torch

    from dynrefer.model.config import official_config
    from dynrefer.model.dynrefer import DynRefer
    from dynrefer.model.io import _rebuild_buffer

    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("meta"):
        model = DynRefer(official_config())
    model = model.to(torch.bfloat16)  # still on the meta device: 8 GB are allocated below, never 16
    model.to_empty(device="cpu")
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("attn_mask"):
                tensor.copy_(_rebuild_buffer(name, tensor, torch.bfloat16))
            elif tensor.is_floating_point():
                if "norm" in name.lower() or name.endswith(("ln_1.weight", "ln_2.weight", "ln_final.weight")):
                    tensor.fill_(1.0 if name.endswith("weight") else 0.0)
                else:
                    tensor.normal_(0.0, 0.02)
        model.tag_names = [f"tag {i}" for i in range(4585)]
        model.tag_embeddings = torch.randn(4585, model.tag_embeddings.shape[1]).to(torch.bfloat16)
    model.save_pretrained(folder)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", default="/tmp/dynrefer_official_bf16")
    parser.add_argument("--choices", default="bfloat16,float32,float32+autocast")
    args = parser.parse_args()
    folder = Path(args.folder)
    if not (folder / "model.safetensors").is_file():
        print(json.dumps({"saved_s": round(save_random(folder), 1)}), flush=True)
    size_gb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**30
    print(json.dumps({"folder_gb": round(size_gb, 2)}), flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    for choice in args.choices.split(","):
        done = subprocess.run([sys.executable, "-c", RUN, choice, str(folder)], capture_output=True, text=True, env=env)
        line = done.stdout.strip().splitlines()[-1] if done.returncode == 0 else json.dumps(
            {"choice": choice, "error": done.stderr.strip()[-300:]})
        print(line, flush=True)


if __name__ == "__main__":
    main()
