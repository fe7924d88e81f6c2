"""Benchmark: views + greedy selection + rendering, batched engine vs a per-region reference loop.

For 1, 16 and 64 regions on a real photo (scikit-image's coffee, 600×400), both paths run in
the same process on the same decoded image tensor, after a warm-up:

* batched: :func:`dynrefer.view_selection.select_views` (all candidate crops of all regions
  hashed in one call, the chosen views of all regions rendered in one call);
* reference: a loop over regions, each hashing its 11 crops one at a time with
  :func:`dynrefer.phash.phash_official_single`, running the greedy rule and rendering its
  views with the reference renderer (PIL crop + bicubic resize per view).

Prints one JSON row per setting, with the ratio measured in this run, e.g.
``{"regions_per_image": 16, "batched_regions_per_s": x, "reference_regions_per_s": y,
"speedup": x / y, "same_views": true}``.

Usage: ``python scripts/bench_views.py [--regions 1,16,64] [--repeats 5] [--num-views 3]``
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from timing import median_seconds

from dynrefer.phash import bits_to_hex, hamming, phash_official_single, rgb_to_gray_official
from dynrefer.view_selection import greedy_select, select_views
from dynrefer.views import CANDIDATE_TS, render_crops, view_geometry


def random_boxes(width: int, height: int, count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(count):
        w = rng.uniform(8, width / 2)
        h = rng.uniform(8, height / 2)
        x1 = rng.uniform(0, width - w)
        y1 = rng.uniform(0, height - h)
        boxes.append([x1, y1, x1 + w, y1 + h])
    return np.asarray(boxes)


def reference_loop(image: torch.Tensor, boxes: np.ndarray, num_views: int):
    """One region at a time, single-crop hashing and the reference renderer."""
    size = (int(image.shape[2]), int(image.shape[1]))
    gray = rgb_to_gray_official(image)
    out = []
    for box in boxes:
        geom = view_geometry(box, size, (0.0,) + CANDIDATE_TS)
        hashes = [bits_to_hex(phash_official_single(gray[y1:y2, x1:x2])) for x1, y1, x2, y2 in geom.crops]
        dist = [hamming(hashes[0], h) for h in hashes[1:]]
        ts = [0.0] + [CANDIDATE_TS[i] for i in greedy_select(dist, num_views - 1)]
        chosen = view_geometry(box, size, ts)
        pixels = render_crops(image, chosen.crops, renderer="reference")
        out.append((ts, pixels))
    return out


def timed(fn, repeats: int) -> float:
    return median_seconds(fn, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--regions", default="1,16,64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-views", type=int, default=3)
    args = parser.parse_args()
    from skimage import data

    image = torch.from_numpy(data.coffee()).permute(2, 0, 1).contiguous()
    for k in [int(v) for v in args.regions.split(",")]:
        boxes = random_boxes(image.shape[2], image.shape[1], k, seed=k)
        batched = select_views(image, boxes, num_views=args.num_views)
        reference = reference_loop(image, boxes, args.num_views)
        same = all(rv.ts == ts and torch.equal(rv.pixels, px) for rv, (ts, px) in zip(batched, reference))
        t_batched = timed(lambda: select_views(image, boxes, num_views=args.num_views), args.repeats)
        t_reference = timed(lambda: reference_loop(image, boxes, args.num_views), args.repeats)
        row = {
            "regions_per_image": k,
            "batched_regions_per_s": round(k / t_batched, 2),
            "reference_regions_per_s": round(k / t_reference, 2),
            "speedup": round(t_reference / t_batched, 2),
            "same_views": same,
            "image": "skimage coffee 600x400",
            "threads": torch.get_num_threads(),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
