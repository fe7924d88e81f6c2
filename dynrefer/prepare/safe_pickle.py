"""Reading pickles that may come from anywhere (e.g. RefCOCOg's ``refs(umd).p``) safely.

A pickle can name any importable callable and call it while loading; that is how a
malicious file runs code. :class:`PlainUnpickler` refuses every class or function reference
(``find_class`` always raises), so only plain data loads: dicts, lists, tuples, sets,
strings, bytes, numbers, booleans and ``None``. Python 2 strings are decoded as UTF-8.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

from ..errors import InputError

# What a corrupt or truncated pickle can raise while loading.
_LOAD_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
    AttributeError,
    struct.error,
    UnicodeDecodeError,
    RecursionError,
)


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle references a class or function (it is not plain data)."""


class PlainUnpickler(pickle.Unpickler):
    """An unpickler that loads only plain containers and scalars; any class or function
    reference (``GLOBAL``, ``STACK_GLOBAL``, ``INST``, ``OBJ``, extension codes) is refused."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        raise RefusedGlobal(
            f"it references {module}.{name}; only plain data (dicts, lists, strings, numbers) is allowed"
        )

    def persistent_load(self, pid):  # noqa: D401 - pickle API
        raise pickle.UnpicklingError("it uses persistent ids; only plain data is allowed")


def loads_plain(data: bytes):
    """Unpickle ``data`` admitting plain data only (raises ``pickle.UnpicklingError`` etc.)."""
    return PlainUnpickler(io.BytesIO(data), encoding="utf-8").load()


def load_plain_pickle(path, what: str = "pickle"):
    """Load a pickle file admitting plain data only.

    Raises:
        InputError: the file is missing, truncated or corrupt, or references any class or
            function; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        found = "is a directory" if path.is_dir() else "no such file"
        raise InputError(f"cannot read '{path}' ({what}): {found}")
    data = path.read_bytes()
    if not data:
        raise InputError(f"cannot read '{path}' ({what}): the file is empty")
    try:
        return loads_plain(data)
    except RefusedGlobal as exc:
        raise InputError(f"refusing to load '{path}' ({what}): {exc}") from None
    except _LOAD_ERRORS as exc:
        reason = "truncated (the file ends early)" if isinstance(exc, EOFError) else f"{type(exc).__name__}: {exc}"
        raise InputError(f"cannot read '{path}' ({what}): not a valid pickle, {reason}") from None
