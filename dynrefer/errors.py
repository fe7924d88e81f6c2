"""Project exceptions.

Every error caused by bad user input is a :class:`InputError`; its message names the
offending input (a file, a region index, an argument) and says what is wrong with it.
The CLI prints such errors as one line, ``dynrefer: error: <message>``, and exits with 2.
"""

from __future__ import annotations


class DynReferError(Exception):
    """Base class of every error raised on purpose by dynrefer."""


class InputError(DynReferError, ValueError):
    """An input (image, region, argument, file) is invalid; the message says which and why."""


class ImageLoadError(InputError):
    """An image could not be loaded or converted; the message names the source and the reason."""


class RegionError(InputError):
    """A region (box, polygon, mask, RLE) is invalid; the message names the region and the reason."""


class Interrupted(DynReferError):
    """Work stopped on a signal (SIGINT / SIGTERM) at a safe point; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


def run_script(main, name: str):
    """Run a script's ``main()`` and return its result; a :class:`DynReferError` becomes one line
    ``NAME: error: ...`` on stderr and exit status 2 (the CLI's contract, for the scripts in ``eval/``
    and ``scripts/``)."""
    import sys

    try:
        return main()
    except DynReferError as err:
        print(f"{name}: error: {str(err).strip()}", file=sys.stderr)
        raise SystemExit(getattr(err, "exit_code", 2)) from None
