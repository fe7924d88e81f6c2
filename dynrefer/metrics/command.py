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
    p.add_argument("--split", default=None, metavar="S", help="use only ground-truth records of this split (predictions of images of other "
                                                       "splits are left out, and counted in the report)")
    p.add_argument("--image-root", default=None, metavar="DIR",
                   help="folder that relative image paths of both files refer to (default: each file's folder)")
    p.set_defaults(func=_run)


def run_evaluation(task: str, predictions, ground_truth, *, ovad_attributes=None, strict: bool = False,
                   split: str | None = None, image_root=None, meteor=None) -> dict:
    """Evaluate JSONL files (paths) and return the report."""
    from ..errors import InputError
    from ..records import read_jsonl
    from . import EVALUATORS
    from .captioning import JAVA_CAPTIONING
    from .common import align_images, require_java
    from .meteor import JAVA_METEOR

    if ovad_attributes is not None and task != "ovad":
        raise InputError(f"--ovad-attributes is only used by 'ovad', not {task!r}")
    if task == "caption":  # fail before reading large files
        require_java(JAVA_CAPTIONING)
    elif task == "densecap" and meteor is None:
        require_java(JAVA_METEOR)
    preds, gts = read_jsonl(predictions), read_jsonl(ground_truth)
    preds = align_images(preds, gts, image_root or Path(predictions).parent, image_root or Path(ground_truth).parent)
    kwargs = {"strict": strict, "split": split, "predictions_name": f"'{predictions}'",
              "ground_truth_name": f"'{ground_truth}'"}
    if task == "ovad":
        kwargs["attributes"] = ovad_attributes
    if task in ("caption", "densecap") and meteor is not None:
        kwargs["meteor"] = meteor
    evaluator = EVALUATORS[task](**kwargs)
    evaluator.unknown_image_hint = (" (images match as written, or as paths relative to each file's folder"
                                    + (" / --image-root)" if image_root is None else f" / '{image_root}')"))
    evaluator.process(preds, gts)
    report = {"task": task, **evaluator.evaluate()}
    if evaluator.skipped_other_split:
        report["predicted_images_of_other_splits"] = evaluator.skipped_other_split  # left out of the scores
    return report


def _run(args) -> int:
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
