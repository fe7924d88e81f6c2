"""Benchmark: the batched engine vs a naive loop and an official-style pipeline.

Settings: the built-in model (``builtin``) and the mid-size config (``mid``, random weights) at
1, 4, 16 and 64 regions per image (scikit-image's coffee photo, 600×400, random boxes), greedy
pHash views with n = 3 (whatever the model's own view policy), all four tasks. The three
pipelines run in the same process, with the same loaded model and the same decoded image
tensor, after one warm-up run each; the median of ``runs`` timed runs is reported, the runs of
the three interleaved (a shared machine's speed drifts; interleaving keeps the ratios fair):

* ``engine``: ``Predictor.describe`` with every region at once (:mod:`dynrefer.inference.engine`: all
  candidate crops of all regions hashed in one call, each unique crop rendered and encoded
  once, all regions through the heads and the beam search together);
* ``naive``: one region at a time through ``Predictor.describe``;
* ``official_style``: per region, the 11 candidate crops hashed one at a time
  (``phash_official_single``: OpenCV resize + SciPy DCT, as the reference implementation),
  the greedy rule, each view rendered with PIL crop + bicubic (``renderer="reference"``); then
  every region's views (no deduplication) through the model and captions generated in chunks
  of 20 regions with transformers' ``generate``, as the official inference does (the engine
  decodes T5 with :mod:`dynrefer.model.heads.beam`: the same beam search, same captions).

Each row: ``{"config", "regions_per_image", "engine_regions_per_s", "naive_regions_per_s",
"official_style_regions_per_s", "speedup", "speedup_vs_official_style", "unique_crops",
"total_crops", "peak_mb", "runs", "same_captions"}``; ``peak_mb``: the peak resident memory
of the process during one engine call made after the timed runs (CPU: the kernel's high-water mark,
reset before the call) or ``max_memory_allocated`` (CUDA). For ``mid`` also ``{"config": "mid", "flops": ...}``:
the encoder stage's achieved
FLOP/s (FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode``; median of 5 runs) over the FLOP/s
of a large ``torch.matmul`` measured in the same run (its fastest of 5; the encoder, engine and matmul runs
interleaved),
and the same figure for the whole engine pass.

Usage: ``python scripts/bench_predict.py [--configs builtin,mid] [--regions 1,4,16,64]
[--runs 10] [--mid-regions 1,4,16] [--mid-runs 1] [--device cpu|cuda]``. The default run takes
under 12 minutes on a 2-core CPU: one ``mid`` run of the three pipelines at 64 regions takes
about four minutes there (ViT-B/16 at 224 px, ~0.3 s a view), hence its own, smaller defaults
(on a GPU: ``--mid-regions 1,4,16,64 --mid-runs 10``).
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np
import psutil
import torch
from bench_views import random_boxes  # scripts/ is on sys.path when run as a script
from timing import interleaved

from dynrefer.inference.predictor import Predictor
from dynrefer.phash import bits_to_hex, hamming, phash_official_single, rgb_to_gray_official
from dynrefer.view_selection import greedy_select
from dynrefer.views import CANDIDATE_TS, render_crops, view_geometry


def official_style(predictor: Predictor, image: torch.Tensor, boxes, chunk: int = 20) -> list[str]:
    """Per-region hashing / greedy / PIL rendering, then the model in chunks of 20 regions."""
    model = predictor.model
    cfg = model.config.views
    size = (int(image.shape[2]), int(image.shape[1]))
    gray = rgb_to_gray_official(image)
    all_ts = (0.0,) + CANDIDATE_TS
    pixels, biv = [], []
    for box in boxes:
        cand = view_geometry(box, size, all_ts, cfg.size)
        hashes = []
        for x1, y1, x2, y2 in cand.crops:
            hashes.append(bits_to_hex(phash_official_single(gray[y1:y2, x1:x2])))
        distances = [hamming(hashes[0], h) for h in hashes[1:]]
        ts = [0.0] + [CANDIDATE_TS[i] for i in greedy_select(distances, cfg.num_views - 1)]
        geom = view_geometry(box, size, ts, cfg.size)
        pixels.append(render_crops(image, geom.crops, cfg.size, renderer="reference"))
        biv.append(torch.as_tensor(geom.box_in_view, dtype=torch.float32))
    captions = []
    with torch.inference_mode():
        for start in range(0, len(boxes), chunk):
            batch = {"pixels": torch.cat(pixels[start:start + chunk]).to(predictor.device),
                     "boxes_in_view": torch.cat(biv[start:start + chunk]).to(predictor.device)}
            out = model.predict(batch, attributes=list(model.attributes) or None,
                                categories=list(model.categories) or None, search="generate")
            captions += out.captions
    return captions


class PeakMemory:
    """Peak resident memory (MB) of this process while the context is open, or CUDA's peak.

    On Linux the kernel's own high-water mark is reset on entry (``/proc/self/clear_refs``) and
    read on exit (``VmHWM``): exact, and no cost to what runs inside. Elsewhere a thread samples
    the RSS every 2 ms, which slows a 2-core CPU by ~10 %: :func:`bench_setting` therefore measures
    memory in a call of its own, outside the timed runs."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0.0
        self._thread = None

    @staticmethod
    def _kernel_peak() -> float | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            if self._kernel_peak() is not None:
                return self
        except OSError:
            pass
        self._stop = threading.Event()
        proc = psutil.Process()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, proc.memory_info().rss / 2**20)
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device) / 2**20)
        elif self._thread is None:
            self.peak = max(self.peak, self._kernel_peak() or 0.0)
        else:
            self._stop.set()
            self._thread.join()
            self._thread = None


def timed(fns: dict, runs: int, times: dict | None = None) -> dict:
    """Median seconds and last result of each function, runs interleaved (:func:`timing.interleaved`)."""
    return interleaved(fns, runs, times=times)


def build(config: str, device: str) -> Predictor:
    from dynrefer_builtin.synthetic import vocabulary

    import dynrefer
    from dynrefer.model.config import DynReferConfig

    if config == "builtin":
        return Predictor("builtin", device=device)
    torch.manual_seed(0)
    vocab = vocabulary()
    model = dynrefer.DynRefer(DynReferConfig.from_name(config), tags=vocab["tags"], categories=vocab["categories"],
                              attributes=vocab["attributes"])
    return Predictor(model, device=device)


def bench_setting(predictor: Predictor, config: str, image: torch.Tensor, k: int, runs: int) -> dict:
    boxes = random_boxes(int(image.shape[2]), int(image.shape[1]), k, seed=k).tolist()
    plan = predictor.engine.plan([image], [boxes], policy="greedy")
    out = timed({"engine": lambda: predictor.describe(image, boxes, policy="greedy"),
                 "naive": lambda: [predictor.describe(image, [b], policy="greedy") for b in boxes],
                 "official": lambda: official_style(predictor, image, boxes)}, runs)
    with PeakMemory(predictor.device) as mem:  # its own call: no measuring inside the timed runs
        predictor.describe(image, boxes, policy="greedy")
    (t_engine, rec), (t_naive, _), (t_official, official_captions) = out["engine"], out["naive"], out["official"]
    engine_captions = [r["caption"] for r in rec["regions"]]
    row = {"config": config, "regions_per_image": k, "engine_regions_per_s": k / t_engine,
           "naive_regions_per_s": k / t_naive, "official_style_regions_per_s": k / t_official}
    row.update(speedup=t_naive / t_engine, speedup_vs_official_style=t_official / t_engine,
               unique_crops=plan.unique_crops, total_crops=plan.total_crops, peak_mb=round(mem.peak, 1), runs=runs,
               same_captions=float(np.mean([a == b for a, b in zip(engine_captions, official_captions)])))
    return {key: round(v, 3) if isinstance(v, float) else v for key, v in row.items()}


def matmul_step(device: torch.device, n: int = 2048):
    """(a function computing one n×n float32 matmul, its FLOPs)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return (lambda: (torch.matmul(a, b), torch.cuda.synchronize() if device.type == "cuda" else None)), 2 * n**3


def flops_row(predictor: Predictor, image: torch.Tensor, k: int = 16, repeats: int = 5) -> dict:
    """Achieved FLOP/s of the encoder stage and of a whole engine pass (median runs), over the matmul's
    *fastest* run: the limit is what the machine reaches at best (on a shared machine a median matmul
    measured in a slow moment would give fractions above 1)."""
    from torch.utils.flop_counter import FlopCounterMode

    model, device = predictor.model, predictor.device
    boxes = random_boxes(int(image.shape[2]), int(image.shape[1]), k, seed=k).tolist()
    pixels = predictor.engine.batch([image], predictor.engine.plan([image], [boxes], policy="greedy"))["pixels"]
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            model.encode_views(pixels, predictor.engine.encoder_batch_size)
        encoder_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        predictor.describe(image, boxes, policy="greedy")
    total_flops = counter.get_total_flops()
    matmul, matmul_flops = matmul_step(device)
    times: dict = {}
    with torch.inference_mode():  # the three interleaved, so that all see the same machine speed
        out = timed({"encoder": lambda: model.encode_views(pixels, predictor.engine.encoder_batch_size),
                     "all": lambda: predictor.describe(image, boxes, policy="greedy"), "matmul": matmul}, repeats,
                    times=times)
    (t_enc, _), (t_all, _) = out["encoder"], out["all"]
    limit = matmul_flops / min(times["matmul"])
    return {"config": "mid", "flops": {
        "regions_per_image": k, "encoder_views": int(pixels.shape[0]), "matmul_gflop_per_s": round(limit / 1e9, 2),
        "encoder_gflop": round(encoder_flops / 1e9, 2), "encoder_gflop_per_s": round(encoder_flops / t_enc / 1e9, 2),
        "encoder_fraction_of_matmul": round(encoder_flops / t_enc / limit, 3),
        "pipeline_gflop": round(total_flops / 1e9, 2), "pipeline_gflop_per_s": round(total_flops / t_all / 1e9, 2),
        "pipeline_fraction_of_matmul": round(total_flops / t_all / limit, 3)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="builtin,mid")
    parser.add_argument("--regions", default="1,4,16,64")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--mid-runs", type=int, default=1)
    parser.add_argument("--mid-regions", default="1,4,16", help="regions per image for mid (default 1,4,16)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from skimage import data

    image = torch.from_numpy(data.coffee()).permute(2, 0, 1).contiguous()
    rows = []
    for config in [c.strip() for c in args.configs.split(",") if c.strip()]:
        predictor = build(config, args.device)
        runs = args.mid_runs if config == "mid" else args.runs
        counts = args.mid_regions if config == "mid" else args.regions
        for k in [int(v) for v in counts.split(",")]:
            rows.append(bench_setting(predictor, config, image, k, runs))
            print(json.dumps(rows[-1]), flush=True)
        if config == "mid":
            rows.append(flops_row(predictor, image))
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"device": args.device, "torch_threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
