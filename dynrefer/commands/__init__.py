"""The ``dynrefer`` sub-commands, one module each (transformers' ``commands/`` layout).

Each module has ``register(subparsers)``, which adds its parser and sets ``func`` (the function that runs it and
returns the exit status); heavy imports happen inside that function, so that ``dynrefer --help`` and the error
contract stay fast. :mod:`dynrefer.cli` builds the parser from :data:`COMMANDS` and keeps the error contract.
``fit`` / ``validate`` are LightningCLI's (:mod:`dynrefer.commands.train`): their options are Lightning's own.
"""

from __future__ import annotations

import sys
from importlib import import_module

#: command modules, in the order ``dynrefer --help`` lists them
COMMANDS = ("describe", "views", "predict", "evaluate", "prepare", "convert_official", "serve", "index", "search",
            "demo")
#: the entry-point group through which other installed packages add commands (the built-in model's project adds
#: ``synth``): ``NAME = "module:register"``
ENTRY_POINT_GROUP = "dynrefer.commands"
#: commands whose options LightningCLI parses (:func:`dynrefer.commands.train.run`)
LIGHTNING_COMMANDS = ("fit", "validate")


def register_all(subparsers) -> None:
    """Add every sub-command's parser to ``subparsers``."""
    from importlib.metadata import entry_points

    for name in COMMANDS:
        import_module(f"{__name__}.{name}").register(subparsers)
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        if point.name in subparsers.choices or point.name in LIGHTNING_COMMANDS:
            continue  # a package cannot replace a core command
        try:
            point.load()(subparsers)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break every command: skipped, named
            print(f"dynrefer: warning: the '{point.name}' command of {point.value} could not be loaded "
                  f"({type(exc).__name__}: {exc}); it is left out", file=sys.stderr)
    for name in LIGHTNING_COMMANDS:
        subparsers.add_parser(name, help=f"{name} with Lightning: dynrefer {name} --config CONFIG.yaml (see --help)",
                              add_help=False)
