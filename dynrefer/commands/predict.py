"""``dynrefer predict``: describe every region of a JSONL dataset into a predictions JSONL.

    dynrefer predict --model builtin|DIR --data IN.jsonl --out OUT.jsonl [--tasks caption,tags,...]
                     [--image-root DIR] [--devices N] [--accelerator cpu|gpu|auto] [--config C.yaml]
                     [--all-scores] [--classes a,b,c] [--attributes a,b,c] [--tag-threshold T]
                     [--batch-size IMAGES] [--num-workers W] [--encoder-batch-size V] [--dtype auto|bfloat16|float16]
                     [--proposals default|file:PATH [--max-regions K] [--nms-iou IOU]]

Runs through Lightning's ``Trainer.predict`` (several devices: DDP splits the images);
resumable — a rerun skips the regions already written (see :mod:`dynrefer.inference.predict`).
``--config`` is a YAML file whose ``predict:`` section (or top level) holds any of these options
with underscores (``tag_threshold: 0.8``, ``classes: [...]``, or ``classes_file`` /
``attributes_file``: one name per line or a JSON list); command-line options win.
``--proposals`` gives the records that list no region the regions of a proposal source (describe everything;
docs/proposals.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import InputError
from ..records import read_class_names, read_names

DEFAULTS = {
    "model": "builtin", "data": None, "out": None, "tasks": "caption,tags,attributes,category", "image_root": None,
    "devices": 1, "accelerator": "cpu", "all_scores": False, "classes": None, "attributes": None,
    "classes_file": None, "attributes_file": None, "tag_threshold": None, "batch_size": 4, "num_workers": 2,
    "encoder_batch_size": None, "dtype": None, "progress": None, "allow_empty": False, "proposals": None,
    "max_regions": 100, "nms_iou": 0.5, "classes_from": None, "min_similarity": None,
}  # fmt: skip


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="describe every region of a JSONL dataset (resumable, multi-device)",
                              description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None, help="YAML file with defaults for these options")
    p.add_argument("--model", default=None, help="'builtin' (default) or a model folder")
    p.add_argument("--data", default=None, help="input JSONL (SPEC §5)")
    p.add_argument("--out", default=None, help="predictions JSONL to write")
    p.add_argument("--tasks", default=None, help="comma-separated: caption,tags,attributes,category (default: all)")
    p.add_argument("--image-root", default=None, help="image paths are relative to this (default: the JSONL's folder)")
    p.add_argument("--devices", type=int, default=None, help="processes / devices (DDP when > 1)")
    p.add_argument("--accelerator", default=None, help="cpu (default), gpu (= cuda), mps or auto")
    p.add_argument("--all-scores", action="store_true", default=None, help="every tag and every class with its score")
    p.add_argument("--classes", default=None, help="comma-separated class names (default: the model's)")
    p.add_argument("--attributes", default=None, help="comma-separated attribute names (default: the model's)")
    p.add_argument("--tag-threshold", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="images per engine pass (default 4)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader workers: decode the images, parse the regions, plan and render the views "
                        "(default 2)")
    p.add_argument("--encoder-batch-size", type=int, default=None,
                   help="views per encoder call (default: 256 on a GPU, sized to the cache on CPU)")
    p.add_argument("--dtype", default=None, choices=("auto", "bfloat16", "float16"),
                   help="autocast precision; auto: bfloat16 on a GPU that has it, float32 elsewhere "
                        "(docs/precision.md)")
    p.add_argument("--allow-empty", action="store_true", default=None,
                   help="accept a dataset with no region at all (an empty output; by default an error)")
    p.add_argument("--proposals", default=None, metavar="SOURCE",
                   help="records without regions get proposals: default (segmentation, no weights) or file:PATH "
                        "(JSONL records or COCO results); score = the proposal's objectness")
    p.add_argument("--max-regions", type=int, default=None, help="with --proposals: at most this many per image (100)")
    p.add_argument("--nms-iou", type=float, default=None, help="with --proposals: duplicates above this IoU go (0.5)")
    p.add_argument("--classes-from", default=None, metavar="EXAMPLES.jsonl",
                   help="few-shot classes: SPEC §5 records whose regions carry 'category'; each region's category is "
                        "the nearest class, or null below --min-similarity (docs/search.md)")
    p.add_argument("--min-similarity", type=float, default=None, help="with --classes-from: the floor (0.7)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="the progress bar (regions, regions/s) on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=run)


def resolve_options(args) -> dict:
    """Defaults ← ``--config`` ← command line; names lists resolved; required options checked."""
    opts = dict(DEFAULTS)
    if args.config:
        import yaml

        path = Path(args.config)
        if not path.is_file():
            raise InputError(f"cannot read --config '{path}': no such file")
        loaded = yaml.safe_load(path.read_text()) or {}
        loaded = loaded.get("predict", loaded) if isinstance(loaded, dict) else loaded
        if not isinstance(loaded, dict):
            raise InputError(f"--config '{path}': expected a mapping of options")
        unknown = sorted(set(loaded) - set(DEFAULTS))
        if unknown:
            raise InputError(f"--config '{path}': unknown option(s) {', '.join(unknown)}")
        base = path.parent
        for key in ("classes_file", "attributes_file"):
            if loaded.get(key) and not Path(loaded[key]).is_absolute() and (base / loaded[key]).exists():
                loaded[key] = str(base / loaded[key])
        opts.update(loaded)
    for key, value in vars(args).items():
        if key in opts and value is not None:
            opts[key] = value
    for key in ("data", "out"):
        if not opts[key]:
            raise InputError(f"--{key} is required (or set it in --config)")
    for key in ("classes_file", "attributes_file"):
        if opts[key] and not Path(opts[key]).is_file():
            raise InputError(f"cannot read {key} '{opts[key]}': no such file")
    for key in ("classes", "attributes"):
        value = opts[key]
        if isinstance(value, str):
            opts[key] = [t.strip() for t in value.split(",") if t.strip()]
        if opts[key] is None and opts[f"{key}_file"]:
            read = read_class_names if key == "classes" else read_names
            opts[key] = read(opts[f"{key}_file"], f"{key}_file")
    for key in ("devices", "batch_size", "encoder_batch_size"):  # encoder_batch_size None: chosen for the device
        if opts[key] is not None and int(opts[key]) < 1:
            raise InputError(f"--{key.replace('_', '-')} must be at least 1, got {opts[key]}")
    accelerator = str(opts["accelerator"])
    if accelerator not in ACCELERATORS:
        raise InputError(f"--accelerator must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}")
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"--accelerator {accelerator}: no CUDA GPU is visible to PyTorch here (use cpu or auto)")
    given = {k for k, v in vars(args).items() if v is not None} | set(loaded_keys(args))
    if opts["proposals"] is None and given & {"max_regions", "nms_iou"}:
        raise InputError("--max-regions and --nms-iou are used with --proposals")
    if opts["classes_from"] is not None and opts["classes"] is not None:
        raise InputError("give --classes or --classes-from, not both")
    if int(opts["num_workers"]) < 0:
        raise InputError(f"--num-workers must be 0 or more, got {opts['num_workers']}")
    return opts


ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")


def loaded_keys(args) -> list[str]:
    """The options ``--config`` sets (its ``predict:`` section or top level)."""
    if not args.config:
        return []
    import yaml

    loaded = yaml.safe_load(Path(args.config).read_text()) or {}
    loaded = loaded.get("predict", loaded) if isinstance(loaded, dict) else {}
    return list(loaded) if isinstance(loaded, dict) else []


def run(args) -> int:
    from ..inference.engine import check_tasks
    from ..inference.predict import run_predict

    opts = resolve_options(args)
    summary = run_predict(opts["model"], opts["data"], opts["out"], image_root=opts["image_root"],
                          tasks=check_tasks(opts["tasks"]), all_scores=bool(opts["all_scores"]),
                          classes=opts["classes"], attributes=opts["attributes"], tag_threshold=opts["tag_threshold"],
                          devices=int(opts["devices"]), accelerator=opts["accelerator"],
                          batch_size=int(opts["batch_size"]), num_workers=int(opts["num_workers"]),
                          encoder_batch_size=_optional_int(opts["encoder_batch_size"]), dtype=opts["dtype"],
                          progress=sys.stderr.isatty() if opts["progress"] is None else bool(opts["progress"]),
                          allow_empty=bool(opts["allow_empty"]), proposals=opts["proposals"],
                          max_regions=int(opts["max_regions"]), nms_iou=float(opts["nms_iou"]),
                          classes_from=opts["classes_from"], min_similarity=_optional_float(opts["min_similarity"]))
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        print(json.dumps(summary))  # once: a DDP launcher runs this command in every process
    return 0


def _optional_float(value):
    return None if value is None else float(value)


def _optional_int(value):
    return None if value is None else int(value)
