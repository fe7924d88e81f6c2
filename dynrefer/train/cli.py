"""``dynrefer fit|validate --config configs/....yaml``: LightningCLI over DynReferModule and
RegionDataModule (any ``--trainer.*``, ``--model.*``, ``--data.*`` option of Lightning's CLI)."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from .data import RegionDataModule
from .module import DynReferModule


def run(argv: list[str]) -> int:
    LightningCLI(
        DynReferModule,
        RegionDataModule,
        args=argv,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "dynrefer"},
    )
    return 0
