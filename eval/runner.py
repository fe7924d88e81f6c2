"""The shared driver of the benchmark runners in this folder: prepared data + a model folder →
``dynrefer predict`` → ``dynrefer evaluate`` → report.

Every runner (``refcocog.py``, ``vg_caption.py``, ``vg_densecap.py``, ``ovad.py``, ``coco.py``)
states its protocol at the top and calls :func:`main` with its settings. Steps:

1. the ground-truth records of ``--split`` (default: the file's only split, else ``test``; all records when
   the file has no ``split``) are
   written as the prediction input ``OUT/input.jsonl`` (boxes, masks, ids — or, for dense
   captioning with ``--proposals``, the proposal file's records, scores kept);
2. :func:`dynrefer.inference.predict.run_predict` writes ``OUT/predictions.jsonl`` (resumable: a
   rerun continues where an interrupted one stopped; ``--devices N`` splits it with DDP);
3. :func:`dynrefer.metrics.evaluate.run_evaluation` scores it; the report (metrics in percent,
   plus the settings) goes to ``OUT/report.json`` and stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))


def _input_records(gt_path: Path, split: str | None, proposals: Path | None) -> list[dict]:
    from dynrefer.errors import InputError
    from dynrefer.records import read_jsonl

    source = read_jsonl(proposals if proposals is not None else gt_path)
    records = [r for r in source if split is None or r.get("split", split) == split]  # no split: keep
    if not records:
        raise InputError(f"no records of split {split!r} in '{proposals or gt_path}'")
    keep = ("id", "box", "mask", "score")
    return [{"image": r["image"], "width": r.get("width"), "height": r.get("height"),
             "regions": [{k: g[k] for k in keep if k in g} for g in r.get("regions", [])]}
            | ({"split": r["split"]} if "split" in r else {}) for r in records]


def resolve_split(data: Path, split: str | None) -> str | None:
    """The split to run: the one given; else the file's only split; else ``test`` when the file has one; else
    None when its records carry no split. Several splits and no ``test``: an error listing them."""
    from dynrefer.errors import InputError
    from dynrefer.records import iter_jsonl

    splits = sorted({r["split"] for r in iter_jsonl(data) if "split" in r})
    if split is not None or not splits:
        return split
    if len(splits) == 1:
        return splits[0]
    if "test" in splits:
        return "test"
    raise InputError(f"'{data}' has the splits {', '.join(splits)}: choose one with --split")


def run(task: str, *, model, data, out_dir, split=None, image_root=None, proposals=None, tasks=None,
        tag_threshold=None, all_scores=False, attributes_file=None, classes_file=None, devices=1, accelerator="cpu",
        batch_size=4, num_workers=2, dtype=None, strict=False) -> dict:
    """Predict and evaluate one benchmark; returns the report (also ``out_dir/report.json``)."""
    from dynrefer.inference.predict import run_predict
    from dynrefer.metrics.evaluate import run_evaluation
    from dynrefer.records import read_class_names, read_names, write_jsonl

    data, out_dir = Path(data), Path(out_dir)
    split = resolve_split(data, split)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = Path(image_root) if image_root else data.parent
    inputs = out_dir / "input.jsonl"
    write_jsonl(inputs, _input_records(data, split, Path(proposals) if proposals else None))
    classes = read_class_names(classes_file, "--classes") if classes_file else None
    attributes = read_names(attributes_file, "--attributes") if attributes_file else None
    predictions = out_dir / "predictions.jsonl"
    summary = run_predict(model, inputs, predictions, image_root=root, tasks=tasks, all_scores=all_scores,
                          classes=classes, attributes=attributes, tag_threshold=tag_threshold, devices=devices,
                          accelerator=accelerator, batch_size=batch_size, num_workers=num_workers, dtype=dtype)
    from dynrefer.records import iter_jsonl

    has_split = any("split" in r for r in iter_jsonl(data))
    report = run_evaluation(task, predictions, data, ovad_attributes=attributes_file if task == "ovad" else None,
                            strict=strict, split=split if has_split else None, image_root=root)
    report["settings"] = {"model": str(model), "data": str(data), "split": split, "proposals": proposals,
                          "tasks": list(tasks), "tag_threshold": tag_threshold, "regions": summary["regions"]}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report


def main(task: str, description: str, *, tasks, argv=None, tag_threshold=None, all_scores=False,
         proposals=False, attributes=False, classes=False) -> dict:
    """Command line of one runner (``--model``, ``--data``, ``--out-dir``, ...)."""
    from dynrefer.errors import run_script

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", required=True, help="model folder (save_pretrained output) or 'builtin'")
    p.add_argument("--data", required=True, help="ground-truth JSONL from 'dynrefer prepare'")
    p.add_argument("--out-dir", required=True, help="where input.jsonl, predictions.jsonl and report.json go")
    p.add_argument("--split", default=None, help="the ground-truth split to run (default: the file's only split, "
                                                 "else 'test')")
    p.add_argument("--image-root", default=None)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--batch-size", type=int, default=4, help="images per engine pass")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--dtype", default=None, choices=("bfloat16", "float16"))
    p.add_argument("--tag-threshold", type=float, default=tag_threshold)
    if proposals:
        p.add_argument("--proposals", default=None, help="predicted boxes (JSONL with region scores) instead of "
                                                         "the ground-truth boxes")
        p.add_argument("--strict", action="store_true", help="count the boxes of images without predictions")
    if attributes:
        p.add_argument("--attributes", required=True, help="OVAD attribute list (OUT.attributes.json of prepare)")
    if classes:
        p.add_argument("--classes", required=True, help="class list (OUT.categories.json of prepare, or one a line)")
    args = p.parse_args(argv)
    report = run_script(lambda: run(
        task, model=args.model, data=args.data, out_dir=args.out_dir, split=args.split, image_root=args.image_root,
        proposals=getattr(args, "proposals", None), tasks=tasks, tag_threshold=args.tag_threshold,
        all_scores=all_scores, attributes_file=getattr(args, "attributes", None),
        classes_file=getattr(args, "classes", None), devices=args.devices, accelerator=args.accelerator,
        batch_size=args.batch_size, num_workers=args.num_workers, dtype=args.dtype,
        strict=getattr(args, "strict", False)), p.prog)
    print(json.dumps(report, indent=2))
    return report
