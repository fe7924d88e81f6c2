"""View selection policies and the multi-region view engine (SPEC §1.1).

Every policy returns the view parameters of one region with ``t = 0`` first:

* ``greedy`` (inference, official): ``score_i = hamming(pHash(view_0), pHash(view_ti)) / t_i``
  with ``t_i = (i + 1) / 10`` in float64; take the first maximum, record it, set its score to
  0, repeat ``n − 1`` times. When every remaining score is 0 the first candidate
  (``t = 0.1``) is taken again, so a view can repeat (``[0, 0.1, 0.1]``): the reference
  behaviour, reproduced.
* ``greedy_unique``: the same objective, never repeating a candidate.
* ``random`` (training): ``n − 1`` candidates drawn uniformly without replacement, in random
  order, from a ``torch.Generator``.
* ``fixed``: a given list of ``t`` values.

:func:`select_views` runs a policy for all regions of one image at once: all candidate
crops of all regions are hashed in one batched call (identical crops once), and the chosen
views of all regions are rendered in one batched call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import InputError
from .phash import FLAVOURS, bits_to_hex, phash_bits, rgb_to_gray_official
from .views import CANDIDATE_TS, DEFAULT_SIZE, ViewGeometry, render_crops, view_geometries

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


def check_hash_flavour(flavour: str) -> None:
    """``flavour`` must be one of :data:`~dynrefer.phash.FLAVOURS`."""
    if flavour not in FLAVOURS:
        raise InputError(f"unknown pHash flavour {flavour!r}; expected one of {', '.join(FLAVOURS)}")


def _check_image(image) -> tuple[int, int]:
    """(W, H) of a (3, H, W) uint8 tensor, else :class:`~dynrefer.errors.InputError`."""
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        what = (f"a {tuple(image.shape)} {image.dtype} tensor" if isinstance(image, torch.Tensor)
                else type(image).__name__)
        raise InputError(f"select_views needs a (3, H, W) uint8 RGB tensor (dynrefer.images.load_image makes one), "
                         f"got {what}")
    return int(image.shape[2]), int(image.shape[1])


def _check_boxes(boxes, image_size: tuple[int, int]) -> np.ndarray:
    """(R, 4) float64 xyxy boxes that are finite, not inverted and touch the image, else
    :class:`~dynrefer.errors.InputError` naming the first bad one (``parse_regions`` also clips them
    and applies the minimum size; this only rejects what would give meaningless views)."""
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"boxes must be numbers, (R, 4) xyxy: {err}") from None
    if arr.size % 4 or (arr.ndim > 1 and arr.shape[-1] != 4):
        raise InputError(f"boxes must be (R, 4) xyxy, got shape {arr.shape}")
    arr = arr.reshape(-1, 4)
    w, h = image_size
    bad = ~np.isfinite(arr).all(axis=1)
    bad |= (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    bad |= (arr[:, 2] <= 0) | (arr[:, 3] <= 0) | (arr[:, 0] >= w) | (arr[:, 1] >= h)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"box {i} {arr[i].tolist()} is not finite, inverted or outside the {w}x{h} image "
                         "(dynrefer.regions.parse_regions checks, clips and sizes region boxes)")
    return arr


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


@dataclass
class RegionViews:
    """Selected views of one region, plus the candidates when a greedy policy ran.

    Attributes:
        geometry: geometry of the selected views (view 0 first, selection order).
        phash: hex pHash of each selected view (``None`` for policies that hash nothing).
        candidates: for greedy policies, one dict per candidate ``t`` with ``t``,
            ``box_t``, ``crop``, ``phash``, ``distance`` (Hamming to view 0) and ``score``.
        pixels: (n, 3, S, S) rendered views (CLIP-normalised), when rendering was asked.
    """

    geometry: ViewGeometry
    phash: list[str] | None = None
    candidates: list[dict] = field(default_factory=list)
    pixels: torch.Tensor | None = None

    @property
    def ts(self) -> list[float]:
        return [float(t) for t in self.geometry.ts]


def select_views(
    image: torch.Tensor,
    boxes,
    *,
    num_views: int = 3,
    policy: str = "greedy",
    ts=None,
    size: int = DEFAULT_SIZE,
    hash_flavour: str = "official",
    generator: torch.Generator | None = None,
    render: bool = True,
    renderer: str = "batched",
    describe_candidates: bool | None = None,
    base_t: float = 0.0,
) -> list[RegionViews]:
    """Choose (and render) the views of every region of one image.

    Args:
        image: (3, H, W) uint8 RGB tensor.
        boxes: (R, 4) region boxes, xyxy float pixels, already validated
            (:func:`dynrefer.regions.parse_regions`).
        num_views: n, views per region including view 0 (``fixed`` uses ``1 + len(ts)``).
        policy: one of :data:`POLICIES`.
        ts: the extra views' ``t`` values for ``fixed``.
        size: view side S.
        hash_flavour: ``"official"`` or ``"imagehash"``.
        generator: random source of the ``random`` policy.
        render: also render the selected views (``RegionViews.pixels``).
        renderer: ``"batched"`` or ``"reference"`` (see :func:`dynrefer.views.render_crops`).
        base_t: the ``t`` of view 0 (default 0, the region itself; SPEC §1.1). Another value
            (e.g. 1.0: a whole-image-only ablation) is for the ``fixed`` and ``random`` policies.
        describe_candidates: hash every candidate and the selected views and fill
            ``RegionViews.candidates`` / ``phash``; default: only for greedy policies (which
            need the hashes anyway).

    Returns:
        One :class:`RegionViews` per box, in input order.
    """
    extra_fixed = check_policy_args(policy, num_views, ts)
    check_hash_flavour(hash_flavour)
    image_size = _check_image(image)
    boxes = _check_boxes(boxes, image_size)
    greedy = policy in ("greedy", "greedy_unique")
    base_t = float(base_t)
    if not 0.0 <= base_t <= 1.0:
        raise InputError(f"base_t must lie in [0, 1], got {base_t}")
    if base_t != 0.0 and greedy and num_views > 1:
        raise InputError(f"policy {policy!r} compares views with the t = 0 view; base_t={base_t} "
                         "needs 'fixed' or 'random'")
    num_extra = num_views - 1
    if describe_candidates is None:
        describe_candidates = greedy
    chosen: list[list[float] | None] = []
    for _ in boxes:
        if policy == "fixed":
            chosen.append([base_t] + list(extra_fixed))
        elif policy == "random":
            chosen.append([base_t] + [CANDIDATE_TS[i] for i in random_select(num_extra, generator=generator)])
        else:
            chosen.append(None)  # decided below from the hashes
    candidates: list[list[dict]] = [[] for _ in boxes]
    selected_hashes: list[list[str] | None] = [None for _ in boxes]
    if (greedy or describe_candidates) and len(boxes):
        all_ts = (0.0,) + CANDIDATE_TS
        cand_geoms = view_geometries(boxes, image_size, all_ts, size)
        crops = [g.crops for g in cand_geoms]
        if not greedy:  # the fixed / random views, hashed for their records
            crops += [g.crops for g in view_geometries(boxes, image_size, chosen, size)]
        crops = np.concatenate(crops)
        unique, inverse = np.unique(crops, axis=0, return_inverse=True)
        gray = rgb_to_gray_official(image) if hash_flavour == "official" else None
        unique_bits = phash_bits(image, unique, hash_flavour, gray=gray)
        inverse = inverse.reshape(-1)
        # Hamming distance of every candidate to its region's view 0, vectorised.
        cand_bits = unique_bits[inverse[: len(boxes) * len(all_ts)]].reshape(len(boxes), len(all_ts), -1)
        distances = (cand_bits[:, 1:] != cand_bits[:, :1]).sum(axis=2).tolist()
        picks_of: list[list[int]] = []
        if greedy:
            for r, dist in enumerate(distances):
                picks_of.append(greedy_select(dist, num_extra, unique=policy == "greedy_unique"))
                chosen[r] = [0.0] + [CANDIDATE_TS[i] for i in picks_of[r]]
        if describe_candidates:  # hex strings and candidate records: only when asked for (the engine is not)
            unique_hex = [bits_to_hex(b) for b in unique_bits]
            hashes = [unique_hex[i] for i in inverse]
            offset = len(boxes) * len(all_ts)
            for r, g in enumerate(cand_geoms):
                region_hashes = hashes[r * len(all_ts) : (r + 1) * len(all_ts)]
                dist = distances[r]
                if greedy:
                    selected_hashes[r] = [region_hashes[0]] + [region_hashes[i + 1] for i in picks_of[r]]
                else:
                    n = len(chosen[r])
                    selected_hashes[r] = hashes[offset : offset + n]
                    offset += n
                scores = greedy_scores(dist)
                candidates[r] = [
                    {
                        "t": CANDIDATE_TS[i],
                        "box_t": [float(v) for v in g.box_t[i + 1]],
                        "crop": [int(v) for v in g.crops[i + 1]],
                        "phash": region_hashes[i + 1],
                        "distance": dist[i],
                        "score": float(scores[i]),
                    }
                    for i in range(len(CANDIDATE_TS))
                ]
    results = []
    for r, geometry in enumerate(view_geometries(boxes, image_size, chosen, size) if len(boxes) else []):
        rv = RegionViews(geometry=geometry, phash=selected_hashes[r])
        rv.candidates = candidates[r]
        results.append(rv)
    if render and results:
        crops = np.concatenate([rv.geometry.crops for rv in results])
        pixels = render_crops(image, crops, size, renderer=renderer)
        start = 0
        for rv in results:
            n = len(rv.geometry.ts)
            rv.pixels = pixels[start : start + n]
            start += n
    return results
