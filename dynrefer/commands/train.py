"""``dynrefer fit|validate --config configs/....yaml``: LightningCLI over DynReferModule and
RegionDataModule (any ``--trainer.*``, ``--model.*``, ``--data.*`` option of Lightning's CLI)."""

from __future__ import annotations

import argparse
import pickle
import re
import warnings

from lightning.pytorch.cli import LightningCLI

from ..errors import InputError
from ..train.data import RegionDataModule
from ..train.module import DynReferModule


def run(argv: list[str]) -> int:
    """Run LightningCLI on ``argv``. A bad option or config value is an :class:`~dynrefer.errors.InputError` (the
    ``dynrefer`` command reports it as one line, exit 2), and so is a checkpoint that pickles code."""
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
                parser_kwargs={"prog": "dynrefer", "exit_on_error": False},  # errors raised: one line
            )
    except argparse.ArgumentError as err:  # an unknown option, a wrong type, ...; jsonargparse's can span lines
        raise InputError(" ".join(str(err).split()) + f" (dynrefer {argv[0]} --help lists the options)") from None
    except pickle.UnpicklingError as err:  # torch.load(weights_only=True) met a pickled object: never run it
        raise InputError(f"refusing to load checkpoint {_ckpt_path(argv)!r}: {_unpickling_reason(err)}; only "
                         "checkpoints of tensors and plain data are loaded") from None
    return 0


def _ckpt_path(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--ckpt_path="):
            return arg.split("=", 1)[1]
        if arg == "--ckpt_path" and i + 1 < len(argv):
            return argv[i + 1]
    return "?"


def _unpickling_reason(err: Exception) -> str:
    """What torch's weights-only unpickler refused, without its advice to load with ``weights_only=False``
    (which would run the pickled code)."""
    found = re.search(r"(Unsupported global: GLOBAL [\w.]+|"
                      r"unsupported GLOBAL [\w.]+(?: whose module [\w.]+ is blocked)?|"
                      r"Unsupported operand \d+)", str(err))
    return found.group(1).strip() if found else "it pickles objects other than tensors and plain data"
