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


class UsageError(InputError):
    """A command-line usage error (a bad option or option value): bad input, one line, exit 2."""


class ImageLoadError(InputError):
    """An image could not be loaded or converted; the message names the source and the reason."""


class RegionError(InputError):
    """A region (box, polygon, mask, RLE) is invalid; the message names the region and the reason."""


class Interrupted(DynReferError):
    """Work stopped on a signal (SIGINT / SIGTERM) at a safe point; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


#: OSError numbers that come from the user's files or machine (a missing or unwritable path, a full disk):
#: reported as bad input, one line and exit 2, like an :class:`InputError`.
USER_ERRNOS = frozenset({"ENOENT", "EACCES", "EPERM", "EROFS", "EISDIR", "ENOTDIR", "EEXIST", "ENOSPC", "EDQUOT",
                         "ENAMETOOLONG", "ENOTEMPTY", "EMFILE", "ENFILE", "EFBIG", "EXDEV"})
EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 1, 130
#: optional dependencies by top-level module: the extra (``pip install 'dynrefer[EXTRA]'``) that installs each
EXTRAS = {"lightning": "train", "jsonargparse": "train", "pycocoevalcap": "eval", "skimage": "demo", "spacy": "nlp",
          "en_core_web_sm": "nlp", "fastapi": "serve", "uvicorn": "serve", "starlette": "serve",
          "multipart": "serve", "python_multipart": "serve", "segment_anything": "proposals",
          "faiss": "search"}


def missing_extra(err: BaseException) -> str | None:
    """The one-line message for an ``ImportError`` of a module an extra provides (else None)."""
    import importlib.util

    name = getattr(err, "name", None) or ""
    if not isinstance(err, ModuleNotFoundError) or name not in EXTRAS:
        return None  # a submodule or a name missing from an installed package: a version problem or a bug
    try:
        if importlib.util.find_spec(name) is not None:
            return None  # installed (hidden by the import system or broken): not a missing extra
    except (ImportError, ValueError):  # ``sys.modules[name] = None`` and the like: not importable
        pass
    extra = EXTRAS[name]
    return f"this needs the '{extra}' extra (module '{name}' is not installed): pip install 'dynrefer[{extra}]'"


def report(err: BaseException, prog: str = "dynrefer") -> int:
    """The command line's error contract: print one line for ``err`` on stderr and return the exit status.

    Bad input (:class:`DynReferError`, an ``OSError`` of :data:`USER_ERRNOS`, a module of a missing extra):
    ``PROG: error: ...``, exit 2 (an :class:`Interrupted`: its own code); Ctrl+C: exit 130; anything else is a
    bug: ``PROG: internal error: ...``, exit 1 (``DYNREFER_DEBUG=1`` shows the traceback: the caller re-raises
    then).
    """
    import errno
    import sys

    message = " ".join(str(err).split())
    if isinstance(err, DynReferError):
        print(f"{prog}: error: {message or type(err).__name__}", file=sys.stderr)
        return getattr(err, "exit_code", EXIT_INPUT)
    if isinstance(err, KeyboardInterrupt):
        print(f"{prog}: error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    extra = missing_extra(err)
    if extra is not None:
        print(f"{prog}: error: {extra}", file=sys.stderr)
        return EXIT_INPUT
    if isinstance(err, OSError) and errno.errorcode.get(err.errno or -1) in USER_ERRNOS:
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_INPUT
    print(f"{prog}: internal error: {type(err).__name__}: {message} (a bug; DYNREFER_DEBUG=1 shows the traceback: "
          "please report it with that)", file=sys.stderr)
    return EXIT_INTERNAL


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
