"""The view selection policies' arithmetic and argument checks (SPEC §1.1), apart from hashing and rendering:
the greedy objective and selection, random draws, the ``fixed`` policy's ``t`` values, and how many views a policy
gives a region (what a model's fusion is sized for). :mod:`dynrefer.view_selection` runs them over images."""

from __future__ import annotations

import numpy as np
import torch

from .errors import InputError
from .views import CANDIDATE_TS

POLICIES = ("greedy", "greedy_unique", "random", "fixed")
MAX_VIEWS = 1 + len(CANDIDATE_TS)


def greedy_scores(distances) -> np.ndarray:
    """``distance_i / t_i`` with ``t_i = (i + 1) / 10``, float64."""
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    t = (np.arange(d.size, dtype=np.float64) + 1) / 10
    return d / t


def greedy_select(distances, num_extra: int, *, unique: bool = False) -> list[int]:
    """Indices of the chosen candidates (selection order) for the greedy policies."""
    scores = greedy_scores(distances)
    if unique and num_extra > scores.size:
        raise ValueError(f"cannot choose {num_extra} distinct views from {scores.size} candidates")
    chosen: list[int] = []
    for _ in range(num_extra):
        idx = int(np.argmax(scores))  # first maximum
        chosen.append(idx)
        scores[idx] = -np.inf if unique else 0.0
    return chosen


def random_select(num_extra: int, num_candidates: int = len(CANDIDATE_TS), generator=None) -> list[int]:
    """``num_extra`` distinct candidate indices in random order."""
    if num_extra > num_candidates:
        raise ValueError(f"cannot choose {num_extra} distinct views from {num_candidates} candidates")
    return torch.randperm(num_candidates, generator=generator)[:num_extra].tolist()


def check_policy_args(policy: str, num_views: int, ts=None) -> list[float] | None:
    """Validate policy arguments; returns the fixed extra ``t`` list for ``fixed``."""
    if policy not in POLICIES:
        raise InputError(f"unknown view policy {policy!r}; expected one of {', '.join(POLICIES)}")
    if policy == "fixed":
        if ts is None:
            raise InputError("policy 'fixed' needs a list of t values")
        try:
            extra = [float(t) for t in ts]
        except (TypeError, ValueError):
            raise InputError(f"t values must be a list of numbers in [0, 1], got {ts!r}") from None
        if extra and extra[0] == 0.0:
            extra = extra[1:]
        bad = [t for t in extra if not (0.0 <= t <= 1.0) or t != t]
        if bad:
            raise InputError(f"view parameters t must lie in [0, 1], got {bad}")
        return extra
    if ts is not None:
        raise InputError(f"t values are only used by policy 'fixed', not {policy!r}")
    if not isinstance(num_views, int) or num_views < 1 or num_views > MAX_VIEWS:
        raise InputError(f"number of views must be an integer in [1, {MAX_VIEWS}], got {num_views!r}")
    return None


def views_of_policy(policy: str, num_views: int, ts=None) -> int:
    """How many views a region gets under ``policy``: ``1 + len(ts)`` for ``fixed`` (a leading
    ``t = 0`` in ``ts`` is view 0 itself), ``num_views`` otherwise (arguments checked by
    :func:`check_policy_args`)."""
    extra = check_policy_args(policy, num_views, ts)
    return num_views if extra is None else 1 + len(extra)


def check_model_views(policy: str, num_views: int, ts=None, *, where: str = "ts") -> None:
    """Raise :class:`~dynrefer.errors.InputError` unless ``policy`` / ``ts`` give every region the
    ``num_views`` views a model fuses (its fusion layer is sized for ``n``: SPEC §1.1)."""
    count = views_of_policy(policy, num_views, ts)
    if count != num_views:
        raise InputError(f"this model fuses {num_views} views per region, but policy 'fixed' with {where}="
                         f"{list(ts)} gives {count} (view 0 plus {count - 1}); give {num_views - 1} t value(s)")
