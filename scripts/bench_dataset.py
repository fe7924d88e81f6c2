"""Benchmark: ``dynrefer predict`` over a dataset, views prepared in the DataLoader workers or in the main process.

``run_predict`` (Lightning ``Trainer.predict``, one process) over ``--images`` generated JSONL
records (crops of scikit-image's four photos, ``--regions`` random boxes each, PNG files in a
temporary folder) with the built-in model, in two modes that differ in one thing only:

* ``workers``: the ``--workers`` DataLoader workers decode each image, parse its regions and
  plan and render its views (``prepare_in_workers=True``, the default of ``dynrefer predict``);
  the main process runs the model;
* ``main``: the workers only decode the images; planning and rendering run in the main process,
  between the model's batches (``prepare_in_workers=False``).

The two modes alternate (``--repeats`` runs each, after one warm-up run each) so that a shared
machine's drifting speed affects both; the median wall time of each gives regions/s and the
ratio. The outputs of the two modes are checked equal (captions identical, scores within 1e-4).

Usage: ``python scripts/bench_dataset.py [--images 24] [--regions 16] [--workers 2]
[--batch-size 4] [--repeats 3]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_dataset(root: Path, images: int, regions: int, seed: int = 0) -> Path:
    from skimage import data

    photos = [data.coffee(), data.astronaut(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(images):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        x0, y0 = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))  # a different crop each image
        photo = photo[y0:, x0:]
        h, w = photo.shape[:2]
        Image.fromarray(np.ascontiguousarray(photo)).save(root / "img" / f"{i}.png")
        boxes = []
        for j in range(regions):
            bw, bh = rng.uniform(8, w / 2), rng.uniform(8, h / 2)
            x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            boxes.append({"id": j, "box": [round(x1, 2), round(y1, 2), round(x1 + bw, 2), round(y1 + bh, 2)]})
        lines.append(json.dumps({"image": f"img/{i}.png", "width": w, "height": h, "regions": boxes}))
    path = root / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def same_predictions(a: Path, b: Path) -> bool:
    def regions(path):
        return {(r["image"], g["id"]): g for r in map(json.loads, path.read_text().splitlines()) for g in r["regions"]}

    ra, rb = regions(a), regions(b)
    return set(ra) == set(rb) and all(
        ra[k]["caption"] == rb[k]["caption"] and ra[k]["views"] == rb[k]["views"]
        and abs(ra[k]["caption_score"] - rb[k]["caption_score"]) < 1e-4 for k in ra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--regions", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import logging

    from dynrefer.inference.predict import run_predict

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_dataset(root, args.images, args.regions)
        times: dict[str, list[float]] = {"workers": [], "main": []}
        for r in range(args.repeats + 1):  # run 0 of each mode is the warm-up
            for mode in times:
                out = root / f"{mode}.jsonl"
                out.unlink(missing_ok=True)
                t0 = time.perf_counter()
                run_predict("builtin", data, out, batch_size=args.batch_size, num_workers=args.workers,
                            progress=False, prepare_in_workers=mode == "workers")
                if r:
                    times[mode].append(time.perf_counter() - t0)
        same = same_predictions(root / "workers.jsonl", root / "main.jsonl")
    total = args.images * args.regions
    med = {mode: statistics.median(v) for mode, v in times.items()}
    print(json.dumps({"images": args.images, "regions_per_image": args.regions, "workers": args.workers,
                      "batch_size": args.batch_size, "repeats": args.repeats,
                      "workers_regions_per_s": round(total / med["workers"], 2),
                      "main_regions_per_s": round(total / med["main"], 2),
                      "speedup": round(med["main"] / med["workers"], 3),
                      "seconds": {m: [round(t, 2) for t in v] for m, v in times.items()},
                      "same_predictions": same}))


if __name__ == "__main__":
    main()
