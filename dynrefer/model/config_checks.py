"""Checking configuration dicts against the config dataclasses (:mod:`dynrefer.model.config`): every key and type,
with errors naming the offending key; merging overrides.

Why not jsonargparse (Lightning's CLI parses ``fit`` / ``validate`` options with it): model folders and
``from_pretrained`` read ``config.json`` in the core install, where jsonargparse (the ``train`` extra) may be
absent, and the messages here name the key path of nested configs (``language.num_beams``) as the command-line
errors do.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

from ..errors import InputError


class ConfigError(InputError):
    """A configuration value or key is invalid; the message names the key."""


def overrides_from_json(text: str) -> dict:
    """A JSON object of config overrides (a command's ``--overrides``); ``ConfigError`` when the text is not
    JSON or not an object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"not JSON: {err}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"must be a JSON object, got {text!r}")
    return value


def merge_dicts(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` merged in recursively (nested dicts merged, other values replaced),
    e.g. config overrides on ``DynReferConfig.to_dict()``."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge_dicts(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (inner,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return isinstance(value, hint)


def _build(cls, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key(s): {', '.join(where + k for k in unknown)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        path = f"{prefix}.{key}" if prefix else key
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, path)
            continue
        if not _type_ok(value, hint):
            expected = getattr(hint, "__name__", str(hint)).replace("typing.", "")
            raise ConfigError(f"{path}: expected {expected}, got {type(value).__name__} ({value!r})")
        kwargs[key] = float(value) if hint is float else value
    return cls(**kwargs)
