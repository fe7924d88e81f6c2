"""Benchmark: loading a model folder (``DynRefer.from_pretrained``): seconds and peak resident memory.

Saves a model of a named configuration (``--config mid`` by default: ViT-B/16 + a t5-base-sized LM, random
weights) into ``--folder`` once (``--dtype bfloat16`` saves it cast as a whole), then loads it in ``--runs``
fresh processes and reports the best time and the peak resident set (``ru_maxrss``) of the loading process, with
the folder's size and the time to read its files (the target: loading costs about that). One JSON object.

Usage: ``python scripts/bench_load.py [--config mid] [--folder DIR] [--dtype float32|bfloat16] [--runs 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOAD = """
import json, resource, sys, time
import torch
from dynrefer.model.dynrefer import DynRefer
t = time.perf_counter()
model = DynRefer.from_pretrained(sys.argv[1])
seconds = time.perf_counter() - t
dtypes = sorted({str(p.dtype) for p in model.parameters()})
print(json.dumps({"load_s": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "dtypes": dtypes}))
"""

BASE = """
import json, resource, time
import torch
from dynrefer.model.dynrefer import DynRefer
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def save(config: str, folder: Path, dtype: str) -> None:
    import torch

    from dynrefer.model.config import DynReferConfig
    from dynrefer.model.dynrefer import DynRefer

    torch.manual_seed(0)
    model = DynRefer(DynReferConfig.from_name(config), tags=[f"tag {i}" for i in range(64)])
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(folder)


def read_seconds(folder: Path) -> float:
    start = time.perf_counter()
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                while fh.read(1 << 24):
                    pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="mid")
    parser.add_argument("--folder", default=None, help="where the model is saved (default: a temporary folder)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder) if args.folder else Path(tmp) / "model"
        if not (folder / "model.safetensors").is_file():
            save(args.config, folder, args.dtype)
        size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
        runs = [json.loads(subprocess.run([sys.executable, "-c", LOAD, str(folder)], capture_output=True, text=True,
                                          env=env, check=True).stdout.strip().splitlines()[-1])
                for _ in range(args.runs)]
        base = json.loads(subprocess.run([sys.executable, "-c", BASE], capture_output=True, text=True, env=env,
                                         check=True).stdout.strip().splitlines()[-1])
        print(json.dumps({
            "config": args.config, "dtype": args.dtype, "folder_mb": round(size_mb, 1),
            "read_files_s": round(read_seconds(folder), 3),
            "load_s": round(min(r["load_s"] for r in runs), 3),
            "peak_rss_mb": round(min(r["peak_rss_mb"] for r in runs), 1),
            "imports_rss_mb": round(base["peak_rss_mb"], 1),
            "model_dtypes": runs[0]["dtypes"], "runs": args.runs,
        }))


if __name__ == "__main__":
    main()
