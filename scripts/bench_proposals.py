"""Benchmark: the default proposer (``describe --all`` without ``--proposals``).

Prints JSON rows: ``{"image", "size", "proposals_s", "proposals"}`` for the bundled photos resized to 640x480
(median of ``--repeats``), ``{"describe_all_s", ...}`` for ``describe --all`` end to end on one of them, and the
recall of the first 100 / 300 proposals at IoU 0.5 on ``--scenes`` generated scenes of seed 11 (not the seed the
proposer was tuned on), and how often a click at an object's box centre gives that object (``--point``: IoU >=
0.5).

Usage: ``python scripts/bench_proposals.py [--repeats 3] [--scenes 50]``
"""

from __future__ import annotations

import argparse
import json


def main() -> None:

    import torch
    from dynrefer_builtin.synthetic import generate_scene
    from PIL import Image
    from skimage import data
    from timing import median_seconds
    from torchvision.ops import box_iou

    from dynrefer.inference.predictor import Predictor
    from dynrefer.proposals import best_first, proposal_source

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scenes", type=int, default=50)
    args = p.parse_args()
    source = proposal_source("default")
    photos = {name: Image.fromarray(getattr(data, name)()).convert("RGB").resize((640, 480))
              for name in ("astronaut", "coffee", "chelsea", "rocket")}
    for name, image in photos.items():
        seconds = median_seconds(lambda image=image: source(image), args.repeats)
        print(json.dumps({"image": name, "size": [640, 480], "proposals_s": round(seconds, 3),
                          "proposals": len(source(image).select(100, 0.5, image.size).boxes)}), flush=True)
    predictor = Predictor("builtin")
    image = photos["coffee"]

    def describe_all():
        kept = source(image).select(100, 0.5, image.size)
        return best_first(predictor.describe(image, kept.regions()))

    seconds = median_seconds(describe_all, args.repeats)
    print(json.dumps({"describe_all_s": round(seconds, 3), "image": "coffee 640x480",
                      "regions": len(describe_all()["regions"])}), flush=True)
    found = {100: 0, 300: 0}
    total = 0
    for index in range(args.scenes):
        image, truth = generate_scene(11, index)
        gt = torch.tensor([r["box"] for r in truth["regions"]], dtype=torch.float64)
        total += len(gt)
        for k in found:
            kept = source(image).select(k, 0.5, image.size)
            found[k] += int((box_iou(gt, torch.as_tensor(kept.boxes)).max(1).values >= 0.5).sum())
    print(json.dumps({"scenes": args.scenes, "seed": 11, "objects": total,
                      **{f"recall_at_{k}": round(v / total, 4) for k, v in found.items()}}), flush=True)
    hits = clicks = 0  # click-to-region: a click at each object's box centre
    for index in range(args.scenes):
        image, truth = generate_scene(11, index)
        found_all = source(image).inside(image.size)
        for region in truth["regions"]:
            x1, y1, x2, y2 = region["box"]
            picked = found_all.at_point((x1 + x2) / 2, (y1 + y2) / 2)
            clicks += 1
            if len(picked.boxes):
                iou = box_iou(torch.tensor([region["box"]], dtype=torch.float64), torch.as_tensor(picked.boxes))
                hits += int(iou.max() >= 0.5)
    print(json.dumps({"click_at_box_centre_hit_at_iou_0.5": round(hits / clicks, 4), "clicks": clicks,
                      "scenes": args.scenes, "seed": 11}))



if __name__ == "__main__":
    from dynrefer.errors import run_script

    run_script(main, "bench_proposals.py")
