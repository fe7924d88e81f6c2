"""``dynrefer evaluate`` (registered by :func:`dynrefer.cli.build_parser`).

``dynrefer evaluate {caption,densecap,ovad,recognition} --predictions P --ground-truth G [--out R.json]
[--ovad-attributes FILE] [--strict] [--split S] [--image-root DIR]`` prints the JSON report (SPEC §6,
metrics in percent) and writes it to ``--out`` when given.
"""

from __future__ import annotations

import json
from pathlib import Path

TASKS = ("caption", "densecap", "ovad", "recognition")


def register(subparsers) -> None:
    """Add the ``evaluate`` sub-command to the ``dynrefer`` parser."""
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate predictions against ground truth (captioning, dense captioning, OVAD, recognition)",
        description="Score predicted regions (project JSONL) against ground truth (project JSONL, from "
        "'dynrefer prepare') with the published protocols (docs/evaluation.md); prints the JSON report, "
        "metrics in percent. caption / ovad / recognition match regions by (image, id); densecap matches "
        "boxes within an image by IoU.",
    )
    p.add_argument("task", choices=TASKS, help="which protocol")
    p.add_argument("--predictions", required=True, metavar="P", help="predictions JSONL")
    p.add_argument("--ground-truth", required=True, metavar="G", help="ground-truth JSONL (dynrefer prepare)")
    p.add_argument("--out", default=None, metavar="R.json", help="also write the report here")
    p.add_argument("--ovad-attributes", default=None, metavar="FILE",
                   help="ovad: the OVAD annotation JSON (its 'attributes' key) or that list alone")
    p.add_argument("--strict", action="store_true",
                   help="every ground-truth image / region must be predicted (densecap: count the boxes of "
                   "unpredicted images in npos instead of skipping them)")
    p.add_argument("--split", default=None, metavar="S", help="use only ground-truth records of this split "
                                                       "(predictions of images of other "
                                                       "splits are left out, and counted in the report)")
    p.add_argument("--image-root", default=None, metavar="DIR",
                   help="folder that relative image paths of both files refer to (default: each file's folder)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..metrics.evaluate import run_evaluation

    report = run_evaluation(args.task, args.predictions, args.ground_truth, ovad_attributes=args.ovad_attributes,
                            strict=args.strict, split=args.split, image_root=args.image_root)
    text = json.dumps(report, indent=2, allow_nan=False)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        from ..records import write_text_atomic

        write_text_atomic(out, text + "\n")
    print(text)
    return 0
