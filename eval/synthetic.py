"""Evaluate a model on the held-out split of generated scenes (SPEC §4).

Protocol: every region of every record of the split is described with its ground-truth box
(``Predictor.describe``, the model's own view policy, all scores). Reported, in percent:
``category`` top-1 accuracy; ``attribute_map`` (mean over attributes of the binary AP over
regions annotated positive or negative, as OVAD); ``tag_f1`` (micro F1 of the tags above the
model's threshold against the region's tags); ``caption`` BLEU / METEOR / ROUGE-L / CIDEr
(pycocoevalcap, keyed by region; needs Java, ``--no-caption-metrics`` skips it); ``parts``:
per-part caption accuracy (size, colour, pattern, shape, position, relation, neighbour: the
caption read back by ``dynrefer_builtin.scene_eval.caption_parts``) with the majority-class
baseline of each part.

Usage: ``python eval/synthetic.py --model DIR --data runs/builtin/scenes/scenes.jsonl
[--split test] [--max-images N] [--policy greedy|random|fixed|greedy_unique] [--t ...]
[--hash-flavour official|imagehash] [--seed S] [--tag-threshold T]
[--out report.json] [--no-caption-metrics]``

Tag threshold: the tags above it are the control string of the caption (SPEC §1.4), so it
shapes the captions as well as ``tag_f1``. ``--tune-tag-threshold`` picks it on the *val* split
(``tune_tag_threshold``: the grid value with the best mean caption-part accuracy, ties to the
smaller threshold) and, with ``--write``, stores it in the model folder's ``config.json``;
``projects/builtin/train_builtin.py`` does this for the built-in model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dynrefer_builtin.scene_benchmark import TAG_THRESHOLDS, evaluate, tune_tag_threshold, write_tag_threshold

__all__ = ["TAG_THRESHOLDS", "evaluate", "tune_tag_threshold", "write_tag_threshold"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--policy", default=None)
    parser.add_argument("--t", type=float, nargs="+", default=None)
    parser.add_argument("--hash-flavour", choices=("official", "imagehash"), default=None)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random policy's draws")
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-caption-metrics", action="store_true")
    parser.add_argument("--tag-threshold", type=float, default=None, help="override the model's tag threshold")
    parser.add_argument("--tune-tag-threshold", action="store_true",
                        help="pick the tag threshold on the val split (best mean caption-part accuracy)")
    parser.add_argument("--write", action="store_true", help="with --tune-tag-threshold: save it in MODEL/config.json")
    args = parser.parse_args()
    if args.tune_tag_threshold:
        best, rows = tune_tag_threshold(args.model, args.data, max_images=args.max_images or 50)
        if args.write:
            write_tag_threshold(args.model, best)
        print(json.dumps({"tag_threshold": best, "grid": rows}, indent=1))
        return
    report = evaluate(args.model, args.data, split=args.split, max_images=args.max_images, policy=args.policy,
                      ts=args.t, caption_metrics=not args.no_caption_metrics, hash_flavour=args.hash_flavour,
                      seed=args.seed, tag_threshold=args.tag_threshold)
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    from dynrefer.errors import run_script

    run_script(main, "synthetic.py")
