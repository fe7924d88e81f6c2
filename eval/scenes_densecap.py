"""Describe everything on generated scenes: dense-captioning mAP with ground-truth boxes and with proposals, and
proposal recall (issue #30; docs/proposals.md).

Protocol: ``--scenes`` generated scenes of seed ``--seed`` (default 11; the default proposer was tuned on seed
7), 256x256, every object with its captions (SPEC §4). Three runs of ``predict`` (tasks: caption), each scored by
the dense-captioning mAP of SPEC §6 (``dynrefer.metrics.densecap``, METEOR 1.5: needs Java):

* ``gt_boxes``: every ground-truth box is described; the score is the caption score (the published protocol);
* ``default``: ``--proposals default`` (at most ``--max-regions`` after NMS at 0.5); score = the
  objectness (the proposal's own confidence);
* ``file_gt``: ``--proposals file:`` a file holding exactly the ground-truth boxes, no scores (NMS off): must
  equal ``gt_boxes`` (a check of the wiring, printed as ``file_equals_gt``).

And the recall at IoU 0.5 of the default source's first 100 and 300 proposals (after NMS at 0.5). The report
(``OUT/report.json`` and stdout) gives each run's ``map`` and ``det_map`` in percent, the recalls, and
``default_over_gt`` (the issue's target: at least 0.6).

    python eval/scenes_densecap.py --out-dir runs/eval_scenes_densecap [--model builtin] [--scenes 50]
        [--seed 11] [--max-regions 100]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))


def write_scenes(folder: Path, scenes: int, seed: int) -> list[dict]:
    """``folder/s{i}.png`` and the ground-truth records (``box``, ``captions``) of scenes 0..scenes-1."""
    from dynrefer_builtin.synthetic import generate_scene

    folder.mkdir(parents=True, exist_ok=True)
    truth = []
    for index in range(scenes):
        image, record = generate_scene(seed, index)
        image.save(folder / f"s{index:04d}.png")
        truth.append({"image": f"s{index:04d}.png", "width": record["width"], "height": record["height"],
                      "regions": [{"id": r["id"], "box": r["box"], "captions": r["captions"]}
                                  for r in record["regions"]]})
    return truth


def proposal_recall(folder: Path, truth: list[dict], ks=(100, 300), iou: float = 0.5) -> dict:
    """Share of ground-truth boxes with a default proposal at IoU >= ``iou`` among the first k (after NMS)."""
    import torch
    from torchvision.ops import box_iou

    from dynrefer.proposals import proposal_source

    source = proposal_source("default")
    found, total = dict.fromkeys(ks, 0), 0
    for record in truth:
        image = folder / record["image"]
        proposals = source(image)
        gt = torch.tensor([r["box"] for r in record["regions"]], dtype=torch.float64)
        total += len(gt)
        for k in ks:
            kept = proposals.select(k, 0.5, (record["width"], record["height"]))
            if len(kept.boxes):
                found[k] += int((box_iou(gt, torch.as_tensor(kept.boxes)).max(1).values >= iou).sum())
    return {f"recall_at_{k}": round(found[k] / max(total, 1), 4) for k in ks} | {"objects": total}


def run(model="builtin", out_dir="runs/eval_scenes_densecap", scenes: int = 50, seed: int = 11,
        max_regions: int = 100, num_workers: int = 0, meteor=None, progress: bool = False) -> dict:
    """The three runs and the recall (see the module docstring); returns the report."""
    from dynrefer.inference.predict import run_predict
    from dynrefer.metrics.evaluate import run_evaluation
    from dynrefer.records import write_jsonl

    out = Path(out_dir)
    folder = out / "scenes"
    truth = write_scenes(folder, scenes, seed)
    gt_file = folder / "truth.jsonl"
    write_jsonl(gt_file, truth)
    boxes_only = [{"image": r["image"], "regions": [{"id": g["id"], "box": g["box"]} for g in r["regions"]]}
                  for r in truth]
    write_jsonl(folder / "gt_boxes.jsonl", boxes_only)
    write_jsonl(folder / "no_regions.jsonl", [{"image": r["image"], "width": r["width"], "height": r["height"]}
                                              for r in truth])
    most = max(len(r["regions"]) for r in truth)
    runs = {"gt_boxes": (folder / "gt_boxes.jsonl", {}),
            "default": (folder / "no_regions.jsonl", {"proposals": "default", "max_regions": max_regions}),
            "file_gt": (folder / "no_regions.jsonl", {"proposals": f"file:{folder / 'gt_boxes.jsonl'}",
                                                      "max_regions": most, "nms_iou": 1.0})}
    report = {"settings": {"model": str(model), "scenes": scenes, "seed": seed, "max_regions": max_regions}}
    for name, (data, options) in runs.items():
        predictions = out / f"{name}.jsonl"
        predictions.unlink(missing_ok=True)  # the scenes were just written: an earlier run's may be other scenes
        summary = run_predict(model, data, predictions, image_root=folder, tasks=("caption",),
                              num_workers=num_workers, progress=progress, **options)
        scores = run_evaluation("densecap", predictions, gt_file, image_root=folder, meteor=meteor)
        report[name] = {"map": scores["map"], "det_map": scores["det_map"], "regions": summary["regions"]}
    report["file_equals_gt"] = report["file_gt"]["map"] == report["gt_boxes"]["map"]
    gt_map = report["gt_boxes"]["map"]
    report["default_over_gt"] = round(report["default"]["map"] / gt_map, 3) if gt_map else None
    report["proposals"] = proposal_recall(folder, truth)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv=None) -> dict:
    from dynrefer.errors import run_script

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="builtin", help="'builtin' or a model folder")
    p.add_argument("--out-dir", required=True, help="where the scenes, predictions and report.json go")
    p.add_argument("--scenes", type=int, default=50)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--max-regions", type=int, default=100, help="default proposals per image")
    p.add_argument("--num-workers", type=int, default=0)
    args = p.parse_args(argv)
    report = run_script(lambda: run(args.model, args.out_dir, args.scenes, args.seed, args.max_regions,
                                    args.num_workers, progress=sys.stderr.isatty()), p.prog)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
