"""``dynrefer synth --out DIR --num-images N --seed S`` (the synthetic scene benchmark, SPEC §4).

Writes ``DIR/images/*.png``, ``DIR/scenes.jsonl`` (SPEC §5, every split in one file) and
``DIR/vocab.json``, and prints a JSON summary on stdout. Bad input raises
:class:`~dynrefer.errors.InputError` (the CLI prints it as one line and exits with 2).
"""

from __future__ import annotations

import json

from .synthetic import DEFAULT_SPLITS, generate_dataset, parse_splits


def register(subparsers) -> None:
    """Add the ``synth`` sub-command to the ``dynrefer`` parser."""
    p = subparsers.add_parser(
        "synth",
        help="generate the synthetic scene benchmark (images + JSONL + vocabulary)",
        description="Generate procedural scenes whose region captions need detail (fine surface patterns on "
        "small objects) and context (position, relative size, nearest neighbour). Each image depends only on "
        "(seed, index), whatever the number of workers.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (images/, scenes.jsonl, vocab.json)")
    p.add_argument("--num-images", type=int, required=True, metavar="N", help="number of images")
    p.add_argument("--seed", type=int, required=True, metavar="S", help="dataset seed (non-negative integer)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--workers", type=int, default=2, help="generator processes (default 2)")
    p.add_argument(
        "--splits",
        default=",".join(f"{v:g}" for v in DEFAULT_SPLITS),
        metavar="TRAIN,VAL,TEST",
        help="fractions of the images in train, val and test, by index (default 0.8,0.1,0.1)",
    )
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args) -> int:
    splits = parse_splits(args.splits)
    summary = generate_dataset(
        args.out, args.num_images, args.seed, size=args.size, workers=args.workers, splits=splits
    )
    print(json.dumps(summary, indent=2))
    return 0
