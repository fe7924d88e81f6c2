"""``dynrefer fit|validate --config configs/....yaml``: LightningCLI over DynReferModule and
RegionDataModule (any ``--trainer.*``, ``--model.*``, ``--data.*`` option of Lightning's CLI)."""

from __future__ import annotations

import os
import sys
from unittest import mock

from lightning.pytorch.cli import LightningCLI

from ..errors import DynReferError

from .data import RegionDataModule
from .module import DynReferModule


def run(argv: list[str]) -> int:
    """Run LightningCLI on ``argv``; a :class:`~dynrefer.errors.DynReferError` (a bad config value, a missing
    file) is one ``dynrefer: error:`` line and exit status 2, as for the other commands."""
    try:
        # the arguments are passed explicitly: an empty sys.argv keeps LightningCLI from warning that it sees both
        with mock.patch.object(sys, "argv", sys.argv[:1]):
            LightningCLI(
                DynReferModule,
                RegionDataModule,
                args=argv,
                seed_everything_default=42,
                save_config_kwargs={"overwrite": True},
                parser_kwargs={"prog": "dynrefer"},
            )
    except DynReferError as err:
        if os.environ.get("DYNREFER_DEBUG") == "1":
            raise
        print(f"dynrefer: error: {str(err).strip()}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    return 0
