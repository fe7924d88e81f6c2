"""``dynrefer evaluate`` (registered by :func:`dynrefer.cli.build_parser`)."""

from __future__ import annotations


def register(subparsers) -> None:
    """Add the ``evaluate`` sub-command to the ``dynrefer`` parser."""
    p = subparsers.add_parser("evaluate", help="evaluate predictions against ground truth (not available yet)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    raise ValueError("'dynrefer evaluate' is not implemented yet")
