"""Benchmark: how long ``dynrefer describe`` and ``dynrefer predict`` take to give a first answer.

Every measurement runs in a fresh interpreter (the imports are the point), best of ``--runs`` (default 3), all in
this one run so that the figures compare:

* ``floor_s``: ``import torch`` and transformers' T5 classes, which any command that loads the model pays;
* ``describe``: the wall time of ``dynrefer describe IMAGE --box ...`` with the built-in model (``total_s``,
  ``beyond_floor_s`` = total − floor) and, from one instrumented process, its split: ``imports_s`` (the command's
  modules), ``model_load_s`` (``Predictor("builtin")``), ``first_region_s`` (one region described);
* ``predict``: the same for ``dynrefer predict`` over a one-region JSONL (``--num-workers 0``).

Prints one JSON object. Usage: ``python scripts/bench_startup.py [--runs 3]``
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

FLOOR = "import torch\nfrom transformers import T5Config, T5ForConditionalGeneration\n"

DESCRIBE_SPLIT = """
import time, json, sys
t0 = time.perf_counter()
from dynrefer.cli import main
from dynrefer.commands.describe import run
from dynrefer.inference.predictor import Predictor
from dynrefer.images import load_image
t1 = time.perf_counter()
predictor = Predictor("builtin")
t2 = time.perf_counter()
predictor.describe(load_image(sys.argv[1]), [[40, 30, 200, 220]])
t3 = time.perf_counter()
print(json.dumps({"imports_s": t1 - t0, "model_load_s": t2 - t1, "first_region_s": t3 - t2}))
"""

PREDICT_SPLIT = """
import time, json, sys
t0 = time.perf_counter()
from dynrefer.cli import main
from dynrefer.inference.predict import run_predict
t1 = time.perf_counter()
run_predict("builtin", sys.argv[1], sys.argv[2], num_workers=0, progress=False)
t2 = time.perf_counter()
print(json.dumps({"imports_s": t1 - t0, "model_load_and_first_region_s": t2 - t1}))
"""


def timed(argv: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench_startup: {' '.join(argv[:4])} failed: {done.stderr.strip()[-500:]}")
    return elapsed, done.stdout


def best(runs: int, argv: list[str], env: dict) -> float:
    return min(timed(argv, env)[0] for _ in range(runs))


def best_split(runs: int, argv: list[str], env: dict) -> dict:
    splits = [json.loads(timed(argv, env)[1].strip().splitlines()[-1]) for _ in range(runs)]
    return {key: round(min(s[key] for s in splits), 3) for key in splits[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from PIL import Image
        from skimage import data

        image = tmp / "astronaut.png"
        Image.fromarray(data.astronaut()).save(image)
        jsonl = tmp / "in.jsonl"
        jsonl.write_text(json.dumps({"image": image.name, "regions": [{"box": [40, 30, 200, 220]}]}) + "\n")
        floor = best(args.runs, [py, "-c", FLOOR], env)
        describe_total = best(args.runs, [py, "-m", "dynrefer", "describe", str(image), "--box", "40", "30", "200",
                                          "220"], env)
        predict_total = min(
            timed([py, "-m", "dynrefer", "predict", "--data", str(jsonl), "--out", str(tmp / f"o{i}.jsonl"),
                   "--num-workers", "0"], env)[0] for i in range(args.runs))
        describe_split = best_split(args.runs, [py, "-c", DESCRIBE_SPLIT, str(image)], env)
        predict_split = min((json.loads(timed([py, "-c", PREDICT_SPLIT, str(jsonl), str(tmp / f"s{i}.jsonl")],
                                              env)[1].strip().splitlines()[-1]) for i in range(args.runs)),
                            key=lambda s: s["imports_s"] + s["model_load_and_first_region_s"])
    print(json.dumps({
        "floor_s": round(floor, 3),
        "describe": {"total_s": round(describe_total, 3), "beyond_floor_s": round(describe_total - floor, 3),
                     **describe_split},
        "predict": {"total_s": round(predict_total, 3), "beyond_floor_s": round(predict_total - floor, 3),
                    **{k: round(v, 3) for k, v in predict_split.items()}},
        "runs": args.runs,
    }))


if __name__ == "__main__":
    main()
