"""Check reduced precision: the same regions described in float32 and in each reduced precision the device runs,
one region at a time and in batches, and how far the results move.

Regions: the boxes of generated scenes (``dynrefer_builtin.synthetic``), ``--regions`` of them (default 100).
Precisions: ``float32``; ``bfloat16-autocast`` / ``float16-autocast`` (float32 weights, ``torch.autocast``: the
engine's ``dtype=``); ``bfloat16`` / ``float16`` (the model cast as a whole: weights and compute; the RoI step runs
in float32 anyway). Each runs alone (one region a call) and in batches of ``--batch`` regions (whole images
grouped). One JSON line per precision::

    {"precision": .., "device": .., "regions": 100, "labels_batch_independent": x, "labels_same_as_float32": y,
     "captions_batch_independent": z, "captions_same_as_float32": w, "attribute_max_diff": v, "regions_per_s": r,
     "peak_mb": m (CUDA)}

labels = the category and the tag set; shares in [0, 1]; "same as float32" compares batched runs;
``attribute_max_diff`` is the largest attribute-score difference from float32 (batched). Targets:
``labels_batch_independent`` 1.0 for float32 and at least 0.98 for bfloat16.

Usage: ``python scripts/check_precision.py [--device cpu|cuda] [--model builtin|DIR] [--regions 100]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from dynrefer.errors import InputError, run_script

CAST = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def scene_regions(count: int, seed: int = 0, size: int = 256) -> list[tuple]:
    """``count`` (image tensor, box) pairs from generated scenes, scene by scene."""
    from dynrefer_builtin.synthetic import generate_scene

    from dynrefer.images import load_image

    out, index = [], 0
    while len(out) < count:
        image, record = generate_scene(seed, index, size)
        pixels = load_image(image)
        out += [(index, pixels, region["box"]) for region in record["regions"]][: count - len(out)]
        index += 1
    return out


def supported(device: torch.device) -> list[str]:
    """The precisions ``device`` runs (autocast kinds probed with a small product)."""
    names = ["float32"]
    for dtype in ("bfloat16", "float16"):
        try:
            with torch.autocast(device_type=device.type, dtype=CAST[dtype]):
                torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
            names.append(f"{dtype}-autocast")
        except (RuntimeError, AssertionError):
            pass
    names.append("bfloat16")
    if device.type == "cuda":  # float16 weights on a CPU: kernels missing or very slow
        names.append("float16")
    return names


def _labels(region: dict) -> tuple:
    return (region["category"][0] if region.get("category") else None, frozenset(t for t, _ in region["tags"]))


def describe_all(predictor, regions, batch: int) -> list[dict]:
    """Regions described ``batch`` at a time (``batch`` 1: alone), images grouped within a batch."""
    results = []
    for start in range(0, len(regions), batch):
        chunk = regions[start : start + batch]
        order, boxes = [], {}
        for index, pixels, box in chunk:
            if index not in boxes:
                order.append((index, pixels))
                boxes[index] = []
            boxes[index].append(box)
        records = predictor.describe_many([p for _, p in order], [boxes[i] for i, _ in order])
        results += [r for record in records for r in record["regions"]]
    return results


def run(model: str, device: torch.device, count: int, batch: int) -> list[dict]:
    from dynrefer.inference.predictor import Predictor
    from dynrefer.model.dynrefer import DynRefer
    from dynrefer.model.io import resolve_model_dir

    regions = scene_regions(count)
    folder = resolve_model_dir(model)
    lines, reference = [], None
    for precision in supported(device):
        net = DynRefer.from_pretrained(folder).eval().to(device)
        autocast = precision.endswith("-autocast")
        if not autocast and precision != "float32":
            net = net.to(CAST[precision])
        predictor = Predictor(net, dtype=precision.split("-")[0] if autocast else None)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        alone = describe_all(predictor, regions, 1)
        start = time.perf_counter()
        batched = describe_all(predictor, regions, batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        if reference is None:
            reference = batched
        n = len(regions)
        share = lambda pairs: round(sum(a == b for a, b in pairs) / n, 4)  # noqa: E731
        line = {
            "precision": precision, "device": str(device), "regions": n,
            "labels_batch_independent": share((_labels(a), _labels(b)) for a, b in zip(alone, batched)),
            "labels_same_as_float32": share((_labels(a), _labels(b)) for a, b in zip(batched, reference)),
            "captions_batch_independent": share((a["caption"], b["caption"]) for a, b in zip(alone, batched)),
            "captions_same_as_float32": share((a["caption"], b["caption"]) for a, b in zip(batched, reference)),
            "attribute_max_diff": round(max((abs(s - dict(b["attributes"])[name]) for a, b in zip(batched, reference)
                                             for name, s in a["attributes"]), default=0.0), 6),
            "regions_per_s": round(n / seconds, 2),
        }
        if device.type == "cuda":
            line["peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        lines.append(line)
        print(json.dumps(line), flush=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--model", default="builtin", help="'builtin' (default) or a model folder")
    parser.add_argument("--regions", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32, help="regions per batched call (default 32)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible to PyTorch here")
    if args.regions < 1 or args.batch < 1:
        raise InputError("--regions and --batch must be at least 1")
    run(args.model, device, args.regions, args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, "check_precision"))
