"""``dynrefer fit|validate --config configs/....yaml``: LightningCLI over DynReferModule and
RegionDataModule (any ``--trainer.*``, ``--model.*``, ``--data.*`` option of Lightning's CLI)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from lightning.pytorch.cli import LightningCLI

from ..errors import DynReferError
from .data import RegionDataModule
from .module import DynReferModule


def run(argv: list[str]) -> int:
    """Run LightningCLI on ``argv``; a :class:`~dynrefer.errors.DynReferError` (a bad config value, a missing
    file) is one ``dynrefer: error:`` line and exit status 2, as for the other commands."""
    try:
        # sys.argv must stay as it is: Lightning's ddp launcher starts the other processes from it. Its warning
        # that both sys.argv and args are given is about scripts that call LightningCLI by hand, not this entry point.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            LightningCLI(
                DynReferModule,
                RegionDataModule,
                args=argv,
                seed_everything_default=42,
                save_config_kwargs={"overwrite": True},
                parser_kwargs={"prog": "dynrefer", "exit_on_error": False},  # errors raised: one line below
            )
    except (argparse.ArgumentError, DynReferError) as err:  # ArgumentError: an unknown option, a wrong type, ...
        if os.environ.get("DYNREFER_DEBUG") == "1":
            raise
        message = str(err).strip()
        if isinstance(err, argparse.ArgumentError):  # jsonargparse's messages can span lines
            message = " ".join(message.split()) + f" (dynrefer {argv[0]} --help lists the options)"
        print(f"dynrefer: error: {message}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    return 0
