"""The ``dynrefer`` command line.

Every command prints JSON on stdout. The error contract (:func:`dynrefer.errors.report`): bad input gives
exactly one line on stderr, ``dynrefer: error: <what and where>``, and exit status 2; a bug gives one line
``dynrefer: internal error: ...`` and exit status 1 (``DYNREFER_DEBUG=1``: the full traceback instead).
Third-party notices (warnings, Lightning's and transformers' banners and progress bars) stay off stderr unless
``dynrefer --verbose COMMAND``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings

from .commands import LIGHTNING_COMMANDS, register_all
from .errors import UsageError, report

#: numbers argparse must read as values, not options: -5, -5.5, -.5, -1e30, -1.5E-3 (its own pattern knows no exponent)
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error contract (no usage block on stderr); negative numbers in exponent
    notation are values (``--box -1e30 -1e30 1e30 1e30``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The ``dynrefer`` parser: global flags and every sub-command of :mod:`dynrefer.commands`."""
    from . import __version__

    parser = _Parser(prog="dynrefer", description="DynRefer: region-level vision-language understanding.")
    parser.add_argument("--version", action="version", version=f"dynrefer {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="show third-party warnings, notices and progress bars on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    register_all(sub)
    return parser


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
                from .commands.train import run

                return run(argv)
            args = build_parser().parse_args(argv)
            return args.func(args)
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the error contract: one line, an exit status
            if debug:
                raise
            return report(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
