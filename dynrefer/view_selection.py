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
from .view_policies import (  # noqa: F401 - the policies, re-exported
    MAX_VIEWS,
    POLICIES,
    check_model_views,
    check_policy_args,
    greedy_scores,
    greedy_select,
    random_select,
    views_of_policy,
)
from .views import CANDIDATE_TS, DEFAULT_SIZE, ViewGeometry, render_crops, view_geometries


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
    if describe_candidates is None:
        describe_candidates = greedy
    # 1. policy: the views' t of the policies that need no hashes
    chosen = _policy_ts(policy, len(boxes), num_views - 1, extra_fixed, base_t, generator)
    candidates: list[list[dict]] = [[] for _ in boxes]
    selected_hashes: list[list[str] | None] = [None for _ in boxes]
    if (greedy or describe_candidates) and len(boxes):
        # 2. hashing: every candidate (and, for the other policies, the chosen views) of every region
        hashed = _hash_candidates(image, boxes, image_size, chosen, size, hash_flavour)
        picks_of = []
        if greedy:  # the greedy search over the hashes
            picks_of = [greedy_select(d, num_views - 1, unique=policy == "greedy_unique") for d in hashed.distances]
            chosen = [[0.0] + [CANDIDATE_TS[i] for i in picks] for picks in picks_of]
        if describe_candidates:  # hex strings and candidate records: only when asked for (the engine is not)
            selected_hashes, candidates = _candidate_records(hashed, chosen, picks_of)
    results = []
    for r, geometry in enumerate(view_geometries(boxes, image_size, chosen, size) if len(boxes) else []):
        results.append(RegionViews(geometry=geometry, phash=selected_hashes[r], candidates=candidates[r]))
    if render and results:  # 3. rendering
        _render(image, results, size, renderer)
    return results


def _policy_ts(policy: str, count: int, num_extra: int, extra_fixed, base_t: float, generator):
    """Per region the views' ``t`` of the ``fixed`` and ``random`` policies (None for greedy: from the hashes)."""
    if policy == "fixed":
        return [[base_t] + list(extra_fixed) for _ in range(count)]
    if policy == "random":
        return [[base_t] + [CANDIDATE_TS[i] for i in random_select(num_extra, generator=generator)]
                for _ in range(count)]
    return [None] * count


@dataclass
class _Hashed:
    """The candidates' hashes of R regions: ``geometries`` (per region, view 0 then the 10 candidates),
    ``unique_bits`` (U, 64) of the unique crops, ``inverse`` (crop → unique row; the chosen views' crops follow
    the candidates' for the policies that hash nothing), ``distances`` (R, 10) Hamming to each view 0."""

    geometries: list
    unique_bits: np.ndarray
    inverse: np.ndarray
    distances: list[list[int]]


def _hash_candidates(image, boxes, image_size, chosen, size: int, hash_flavour: str) -> _Hashed:
    all_ts = (0.0,) + CANDIDATE_TS
    geometries = view_geometries(boxes, image_size, all_ts, size)
    crops = [g.crops for g in geometries]
    if chosen[0] is not None:  # the fixed / random views, hashed for their records
        crops += [g.crops for g in view_geometries(boxes, image_size, chosen, size)]
    unique, inverse = np.unique(np.concatenate(crops), axis=0, return_inverse=True)
    gray = rgb_to_gray_official(image) if hash_flavour == "official" else None
    unique_bits = phash_bits(image, unique, hash_flavour, gray=gray)
    inverse = inverse.reshape(-1)
    # Hamming distance of every candidate to its region's view 0, vectorised.
    cand_bits = unique_bits[inverse[: len(boxes) * len(all_ts)]].reshape(len(boxes), len(all_ts), -1)
    distances = (cand_bits[:, 1:] != cand_bits[:, :1]).sum(axis=2).tolist()
    return _Hashed(geometries, unique_bits, inverse, distances)


def _candidate_records(hashed: _Hashed, chosen, picks_of) -> tuple[list[list[str]], list[list[dict]]]:
    """The selected views' hex hashes and the candidate records (``RegionViews.candidates``) of every region."""
    per_region = len(CANDIDATE_TS) + 1
    unique_hex = [bits_to_hex(b) for b in hashed.unique_bits]
    hashes = [unique_hex[i] for i in hashed.inverse]
    offset = len(hashed.geometries) * per_region
    selected, candidates = [], []
    for r, g in enumerate(hashed.geometries):
        region_hashes = hashes[r * per_region : (r + 1) * per_region]
        dist = hashed.distances[r]
        if picks_of:
            selected.append([region_hashes[0]] + [region_hashes[i + 1] for i in picks_of[r]])
        else:
            selected.append(hashes[offset : offset + len(chosen[r])])
            offset += len(chosen[r])
        scores = greedy_scores(dist)
        candidates.append([
            {
                "t": CANDIDATE_TS[i],
                "box_t": [float(v) for v in g.box_t[i + 1]],
                "crop": [int(v) for v in g.crops[i + 1]],
                "phash": region_hashes[i + 1],
                "distance": dist[i],
                "score": float(scores[i]),
            }
            for i in range(len(CANDIDATE_TS))
        ])
    return selected, candidates


def _render(image, results: list[RegionViews], size: int, renderer: str) -> None:
    """Render every region's views in one call (``RegionViews.pixels``)."""
    pixels = render_crops(image, np.concatenate([rv.geometry.crops for rv in results]), size, renderer=renderer)
    start = 0
    for rv in results:
        n = len(rv.geometry.ts)
        rv.pixels = pixels[start : start + n]
        start += n
