"""The ``dynrefer`` command line.

Every command prints JSON on stdout. The error contract (:func:`dynrefer.errors.report`): bad input gives
exactly one line on stderr, ``dynrefer: error: <what and where>``, and exit status 2; a bug gives one line
``dynrefer: internal error: ...`` and exit status 1 (``DYNREFER_DEBUG=1``: the full traceback instead).
Third-party notices (warnings, Lightning's and transformers' banners and progress bars) stay off stderr unless
``dynrefer --verbose COMMAND``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from pathlib import Path

from .errors import InputError, report

EXIT_USAGE = 2
LIGHTNING_COMMANDS = ("fit", "validate")
#: numbers argparse must read as values, not options: -5, -5.5, -.5, -1e30, -1.5E-3 (its own pattern knows no exponent)
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error contract (no usage block on stderr); negative numbers in exponent
    notation are values (``--box -1e30 -1e30 1e30 1e30``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str):  # noqa: D401 - argparse API
        raise _UsageError(message)


class _UsageError(InputError):
    """A command-line usage error: bad input (one line, exit 2)."""


def _add_views_parser(sub) -> None:
    p = sub.add_parser(
        "views",
        help="choose and show the multi-resolution views of regions of an image",
        description="Compute the views of each region (SPEC §1.1): geometry, pHash, the ten candidates "
        "with their greedy scores, and optionally a contact sheet PNG.",
    )
    p.add_argument("image", help="image file")
    p.add_argument(
        "--box",
        nargs=4,
        type=float,
        action="append",
        metavar=("X1", "Y1", "X2", "Y2"),
        required=True,
        help="a region box in pixels (repeat for several regions); see --box-format",
    )
    p.add_argument("--box-format", choices=["xyxy", "xywh"], default="xyxy")
    p.add_argument("--num-views", type=int, default=None, help="views per region including t = 0 (default 3)")
    p.add_argument(
        "--policy",
        choices=["greedy", "greedy_unique", "random", "fixed"],
        default=None,
        help="view selection policy (default greedy, or fixed when --t is given)",
    )
    p.add_argument("--t", type=float, nargs="+", default=None, metavar="T", help="the extra views' t for --policy fixed")
    p.add_argument("--size", type=int, default=224, help="view side in pixels (default 224)")
    p.add_argument("--hash", choices=["official", "imagehash"], default="official", help="pHash flavour")
    p.add_argument("--seed", type=int, default=0, help="seed of the random policy (default 0)")
    p.add_argument("--out", default=None, help="write a contact sheet PNG of the chosen views here")
    p.set_defaults(func=_cmd_views)


def _add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="describe regions of a generated scene and a bundled photo with the built-in "
                                    "model (needs the 'demo' extra)")
    p.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    p.add_argument("--model", default="builtin", help="'builtin' (default) or a model folder")
    p.set_defaults(func=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dynrefer", description="DynRefer: region-level vision-language understanding.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"dynrefer {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="show third-party warnings, notices and progress bars on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_views_parser(sub)
    _add_demo_parser(sub)
    from .data.command import register as register_synth
    from .describe_command import register as register_describe
    from .metrics.command import register as register_evaluate
    from .official_command import register as register_official
    from .predict_command import register as register_predict
    from .prepare.command import register as register_prepare

    register_describe(sub)
    register_predict(sub)
    register_synth(sub)
    register_prepare(sub)
    register_evaluate(sub)
    register_official(sub)
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"{name} with Lightning: dynrefer {name} --config CONFIG.yaml (see --help)",
                       add_help=False)
    return parser


def _policy_args(args) -> tuple[str, int, list[float] | None]:
    policy = args.policy or ("fixed" if args.t is not None else "greedy")
    if policy == "fixed":
        if args.t is None:
            raise _UsageError("--policy fixed needs --t T [T ...]")
        extra = [t for t in args.t]
        if extra and extra[0] == 0.0:
            extra = extra[1:]
        if args.num_views is not None and args.num_views != 1 + len(extra):
            raise _UsageError(f"--num-views {args.num_views} disagrees with the {len(extra)} extra view(s) given by --t")
        for t in extra:
            if not 0.0 <= t <= 1.0:
                raise _UsageError(f"--t values must lie in [0, 1], got {t}")
        return policy, 1 + len(extra), extra
    if args.t is not None:
        raise _UsageError(f"--t is only used by --policy fixed, not {policy}")
    num_views = 3 if args.num_views is None else args.num_views
    if not 1 <= num_views <= 11:
        raise _UsageError(f"--num-views must be between 1 and 11, got {num_views}")
    if policy in ("greedy_unique", "random") and num_views > 11:
        raise _UsageError(f"--num-views {num_views} exceeds the 10 candidates + view 0")
    return policy, num_views, None


def _cmd_views(args) -> int:
    from .view_records import run_views

    policy, num_views, ts = _policy_args(args)
    if not 8 <= args.size <= 4096:
        raise _UsageError(f"--size must be between 8 and 4096, got {args.size}")
    if args.out is not None and not str(args.out).lower().endswith(".png"):
        raise _UsageError(f"--out must name a .png file, got {args.out!r}")
    record = run_views(
        args.image,
        args.box,
        box_format=args.box_format,
        policy=policy,
        num_views=num_views,
        ts=ts,
        size=args.size,
        hash_flavour=args.hash,
        seed=args.seed,
        sheet=args.out,
    )
    print(json.dumps(record))
    return 0


def _cmd_demo(args) -> int:
    from .demo import format_table, run_demo

    summary = run_demo(Path(args.out), model=args.model)
    print(format_table(summary["regions"]))
    print(f"\nscene objects with the right category: {summary['scene']['category_correct']}")
    print(f"wrote {args.out}/: scene.json, scene_described.png, astronaut.json, astronaut_described.png, "
          "views.json, views_sheet.png, summary.json")
    return 0


LIGHTNING_NOTICE_LOGGERS = ("lightning.fabric.utilities.seed", "lightning.fabric.utilities.rank_zero",
                            "lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                            "lightning.fabric.accelerators.cuda")


def quiet_third_parties(quiet: bool = True) -> None:
    """Keep transformers' and Hugging Face's notices and progress bars, and Lightning's start-up lines, off
    stderr (a command prints its result and, on failure, one line); ``quiet=False`` (``--verbose``) lets Lightning's
    through again. Set before those libraries are imported; variables the user set win."""
    import logging

    if not quiet:
        for name in LIGHTNING_NOTICE_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # the loggers Lightning's notices come from (the package loggers are set to INFO when Lightning is imported;
    # these children keep the level set here): "Seed set to", "GPU available", tips, CUDA device lines
    for name in LIGHTNING_NOTICE_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def split_global_flags(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--verbose`` (before the command, or anywhere for fit / validate, whose options
    LightningCLI parses) and whether it was there."""
    verbose = False
    out = list(argv)
    while out and out[0] == "--verbose":
        out, verbose = out[1:], True
    if out and out[0] in LIGHTNING_COMMANDS and "--verbose" in out:
        out, verbose = [a for a in out if a != "--verbose"], True
    return out, verbose


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dynrefer`` console script; returns the exit status."""
    debug = os.environ.get("DYNREFER_DEBUG") == "1"
    argv, verbose = split_global_flags(sys.argv[1:] if argv is None else list(argv))
    quiet_third_parties(not verbose)
    with warnings.catch_warnings():
        if not (debug or verbose):
            warnings.simplefilter("ignore")
        try:
            if argv and argv[0] in LIGHTNING_COMMANDS:
                from .train.cli import run

                return run(argv)
            args = build_parser().parse_args(argv)
            return args.func(args)
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the error contract: one line, an exit status
            if debug:
                raise
            return report(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
