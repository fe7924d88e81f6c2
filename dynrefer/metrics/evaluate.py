"""Scoring prediction files against ground-truth files (``dynrefer evaluate``'s work, callable from Python)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..records import read_jsonl
from .captioning import JAVA_CAPTIONING
from .common import align_images, require_java
from .meteor import JAVA_METEOR


def run_evaluation(task: str, predictions, ground_truth, *, ovad_attributes=None, strict: bool = False,
                   split: str | None = None, image_root=None, meteor=None) -> dict:
    """Evaluate JSONL files (paths) and return the report."""
    from . import EVALUATORS

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
