"""View selection policies (SPEC §1.1): greedy pHash selection, random and fixed views, and select_views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynrefer.errors import InputError
from dynrefer.phash import hamming, phash_official_single, phash_views, rgb_to_gray_official
from dynrefer.view_selection import (
    MAX_VIEWS,
    POLICIES,
    check_model_views,
    check_policy_args,
    greedy_scores,
    greedy_select,
    random_select,
    select_views,
    views_of_policy,
)
from dynrefer.views import CANDIDATE_TS, render_crops, view_geometry

# ----------------------------------------------------------------------------- literal reference loop


def literal_greedy(distances, num_extra: int) -> list[int]:
    """The official greedy loop, literally: scores d / ((i + 1) / 10), first maximum, zero it, repeat."""
    scores = []
    for i in range(10):
        scores.append(float(distances[i]) / ((i + 1) / 10))
    picks = []
    for _ in range(num_extra):
        best = 0
        for i in range(1, 10):
            if scores[i] > scores[best]:
                best = i
        picks.append(best)
        scores[best] = 0.0
    return picks


def literal_greedy_unique(distances, num_extra: int) -> list[int]:
    """Same objective, never choosing a candidate twice."""
    scores = [float(distances[i]) / ((i + 1) / 10) for i in range(10)]
    used = [False] * 10
    picks = []
    for _ in range(num_extra):
        best = None
        for i in range(10):
            if used[i]:
                continue
            if best is None or scores[i] > scores[best]:
                best = i
        picks.append(best)
        used[best] = True
    return picks


# ----------------------------------------------------------------------------- greedy policy


def test_greedy_scores_are_float64_distance_over_t():
    d = [3, 0, 64, 7, 1, 2, 21, 5, 9, 64]
    scores = greedy_scores(d)
    assert scores.dtype == np.float64 and scores.shape == (10,)
    for i in range(10):
        assert scores[i] == d[i] / ((i + 1) / 10)
        assert scores[i] == d[i] / CANDIDATE_TS[i]
    assert CANDIDATE_TS == tuple((i + 1) / 10 for i in range(10))


def test_greedy_matches_literal_loop_on_random_distances():
    rng = np.random.default_rng(0)
    for _ in range(300):
        d = rng.integers(0, 65, 10).tolist()
        for n in range(1, 12):
            got = greedy_select(d, n - 1)
            assert got == literal_greedy(d, n - 1), (d, n)
            if n - 1 <= 10:
                assert greedy_select(d, n - 1, unique=True) == literal_greedy_unique(d, n - 1), (d, n)


def test_greedy_matches_literal_loop_on_tie_heavy_distances():
    rng = np.random.default_rng(1)
    for _ in range(500):
        d = rng.integers(0, 4, 10).tolist()
        for n in (2, 3, 5, 11):
            assert greedy_select(d, n - 1) == literal_greedy(d, n - 1), d
            assert greedy_select(d, n - 1, unique=True) == literal_greedy_unique(d, n - 1), d


def test_exact_ties_go_to_the_smaller_t():
    # d = 2 at t = 0.1 and d = 4 at t = 0.2: both score 20 exactly in float64.
    d = [2, 4, 0, 0, 0, 0, 0, 0, 0, 0]
    assert 2 / 0.1 == 4 / 0.2
    assert greedy_select(d, 1) == [0] == literal_greedy(d, 1)
    assert greedy_select(d, 2) == [0, 1] == literal_greedy(d, 2)
    # d = 1 at 0.1, 2 at 0.2, 4 at 0.4, 5 at 0.5, 10 at 1.0: all score 10.
    d = [1, 2, 0, 4, 5, 0, 0, 0, 0, 10]
    assert greedy_select(d, 5) == literal_greedy(d, 5)
    assert greedy_select(d, 5)[0] == 0


def test_rounding_makes_21_over_0_7_beat_3_over_0_1():
    assert 21 / 0.7 > 3 / 0.1  # float64: 30.000000000000004 > 30.0
    d = [3, 0, 0, 0, 0, 0, 21, 0, 0, 0]
    assert greedy_select(d, 1) == [6] == literal_greedy(d, 1)  # t = 0.7 first
    assert greedy_select(d, 2) == [6, 0] == literal_greedy(d, 2)
    assert greedy_select(d, 2, unique=True) == [6, 0]


def test_all_zero_distances_repeat_for_greedy_and_not_for_greedy_unique():
    zeros = [0] * 10
    for k in range(0, 11):
        assert greedy_select(zeros, k) == [0] * k == literal_greedy(zeros, k)
        assert greedy_select(zeros, k, unique=True) == list(range(k))
    ts = [CANDIDATE_TS[i] for i in greedy_select(zeros, 4)]
    assert ts == [0.1, 0.1, 0.1, 0.1]
    ts_unique = [CANDIDATE_TS[i] for i in greedy_select(zeros, 10, unique=True)]
    assert ts_unique == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def test_greedy_repeats_after_exhausting_nonzero_scores():
    d = [0, 0, 0, 0, 8, 0, 0, 0, 0, 0]
    assert greedy_select(d, 3) == [4, 0, 0] == literal_greedy(d, 3)
    assert greedy_select(d, 3, unique=True) == [4, 0, 1]


def test_greedy_select_does_not_modify_its_input_and_rejects_too_many_unique():
    d = np.array([5, 1, 0, 9, 3, 3, 0, 2, 1, 7])
    before = d.copy()
    greedy_select(d, 5)
    assert np.array_equal(d, before)
    with pytest.raises(ValueError, match="distinct"):
        greedy_select(d, 11, unique=True)


# ----------------------------------------------------------------------------- random and fixed


def test_random_select_reproducible_distinct_and_covering():
    g1 = torch.Generator().manual_seed(123)
    g2 = torch.Generator().manual_seed(123)
    draws1 = [random_select(2, generator=g1) for _ in range(400)]
    draws2 = [random_select(2, generator=g2) for _ in range(400)]
    assert draws1 == draws2
    seen = set()
    orders = set()
    for picks in draws1:
        assert len(picks) == 2 and len(set(picks)) == 2
        assert all(isinstance(i, int) and 0 <= i < 10 for i in picks)
        seen.update(picks)
        orders.add(tuple(picks))
    assert seen == set(range(10))
    # Order varies: both (a, b) and (b, a) occur for some pair.
    assert any((b, a) in orders for a, b in orders)
    assert len(orders) > 45
    # A different seed gives a different sequence.
    g3 = torch.Generator().manual_seed(124)
    assert [random_select(2, generator=g3) for _ in range(400)] != draws1
    # All candidates, each once.
    full = random_select(10, generator=torch.Generator().manual_seed(5))
    assert sorted(full) == list(range(10))
    assert random_select(0, generator=g1) == []
    with pytest.raises(ValueError, match="distinct"):
        random_select(11)


def test_select_views_random_policy(photos):
    photo = photos["coffee"]
    boxes = [photo.boxes["medium"], photo.boxes["tiny_2x3"], photo.boxes["tall"]]
    res1 = select_views(photo.tensor, boxes, num_views=4, policy="random",
                        generator=torch.Generator().manual_seed(7), render=False)
    res2 = select_views(photo.tensor, boxes, num_views=4, policy="random",
                        generator=torch.Generator().manual_seed(7), render=False)
    assert [r.ts for r in res1] == [r.ts for r in res2]
    for r in res1:
        assert r.ts[0] == 0.0 and len(r.ts) == 4
        assert all(t in CANDIDATE_TS for t in r.ts[1:])
        assert len(set(r.ts[1:])) == 3
        assert r.pixels is None and r.phash is None and r.candidates == []


def test_fixed_policy_keeps_t0_first(photos):
    photo = photos["chelsea"]
    box = photo.boxes["medium"]
    for ts, want in (([0.3, 0.6], [0.0, 0.3, 0.6]), ([0.0, 0.5], [0.0, 0.5]), ([1.0], [0.0, 1.0]), ([], [0.0])):
        res = select_views(photo.tensor, [box], policy="fixed", ts=ts, render=False)
        assert res[0].ts == want
        geom = view_geometry(box, photo.size, want)
        assert np.array_equal(res[0].geometry.crops, geom.crops)
    assert check_policy_args("fixed", 3, [0.0, 0.2]) == [0.2]
    assert check_policy_args("fixed", 3, (0.4, 0.2)) == [0.4, 0.2]


@pytest.mark.parametrize(
    "policy,num_views,ts,pattern",
    [
        ("best", 3, None, "unknown view policy"),
        ("Greedy", 3, None, "unknown view policy"),
        ("greedy", 0, None, "number of views"),
        ("greedy", MAX_VIEWS + 1, None, "number of views"),
        ("greedy_unique", -1, None, "number of views"),
        ("random", 12, None, "number of views"),
        ("random", 2.5, None, "number of views"),
        ("fixed", 3, None, "needs a list of t"),
        ("fixed", 3, [0.2, 1.5], r"\[0, 1\]"),
        ("fixed", 3, [-0.1], r"\[0, 1\]"),
        ("fixed", 3, [float("nan")], r"\[0, 1\]"),
        ("greedy", 3, [0.2], "only used by policy 'fixed'"),
        ("random", 3, [0.2], "only used by policy 'fixed'"),
    ],
)
def test_policy_validation_errors(photos, policy, num_views, ts, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_policy_args(policy, num_views, ts)
    photo = photos["chelsea"]
    with pytest.raises(ValueError, match=pattern):
        select_views(photo.tensor, [photo.boxes["medium"]], num_views=num_views, policy=policy, ts=ts)


@pytest.mark.parametrize("boxes, pattern", [
    ([[50, 50, 10, 10]], "box 0 .* inverted or outside"),
    ([[0, 0, 20, 20], [600, 600, 700, 700]], "box 1 .* outside the"),
    ([[float("nan"), 0, 10, 10]], "not finite"),
    ([[1, 2, 3]], r"\(R, 4\)"),
    ([["a", 1, 2, 3]], "must be numbers"),
])
def test_select_views_rejects_boxes_that_give_meaningless_views(photos, boxes, pattern):
    with pytest.raises(InputError, match=pattern):
        select_views(photos["chelsea"].tensor, boxes)


def test_select_views_names_a_wrong_image_layout(photos):
    hwc = photos["chelsea"].tensor.permute(1, 2, 0)
    with pytest.raises(InputError, match=r"\(3, H, W\) uint8 .* got a \(300, 451, 3\)"):
        select_views(hwc, [[1, 2, 30, 40]])
    with pytest.raises(InputError, match="torch.float32"):
        select_views(photos["chelsea"].tensor.float() / 255, [[1, 2, 30, 40]])


def test_views_of_policy_and_model_check():
    assert views_of_policy("greedy", 3) == 3
    assert views_of_policy("fixed", 3, [0.5, 1.0]) == 3 and views_of_policy("fixed", 3, [0.0, 0.5, 1.0]) == 3
    assert views_of_policy("fixed", 1, []) == 1
    check_model_views("fixed", 3, [0.0, 0.5, 1.0])
    with pytest.raises(InputError, match=r"fuses 3 views per region, but policy 'fixed' with ts=\[0.5\] gives 2"):
        check_model_views("fixed", 3, [0.5])
    with pytest.raises(InputError, match="views.fixed_ts=.* gives 4"):
        check_model_views("fixed", 3, [0.1, 0.2, 0.3], where="views.fixed_ts")


def test_valid_policy_args_and_hash_flavour(photos):
    for policy in POLICIES:
        if policy != "fixed":
            for n in (1, 3, MAX_VIEWS):
                assert check_policy_args(policy, n) is None
    photo = photos["chelsea"]
    with pytest.raises(ValueError, match="flavour"):
        select_views(photo.tensor, [photo.boxes["medium"]], hash_flavour="sha1")


# ----------------------------------------------------------------------------- select_views end to end


REGIONS = ("medium", "tiny_2x3", "tall", "thin_horizontal", "near_bottom_right", "subpixel", "whole")


def _check_greedy_region(photo, gray, box, rv, policy, n, size=224):
    geom_all = view_geometry(box, photo.size, (0.0,) + CANDIDATE_TS)
    c0 = geom_all.crops[0]
    h0 = phash_official_single(gray[c0[1] : c0[3], c0[0] : c0[2]])
    assert len(rv.candidates) == 10
    distances = []
    for i, cand in enumerate(rv.candidates):
        assert cand["t"] == CANDIDATE_TS[i] == (i + 1) / 10
        c = geom_all.crops[i + 1]
        assert cand["crop"] == c.tolist()
        assert cand["box_t"] == geom_all.box_t[i + 1].tolist()
        hc = phash_official_single(gray[c[1] : c[3], c[0] : c[2]])
        assert cand["phash"] == phash_views(photo.tensor, c[None], "official")[0]
        assert cand["distance"] == hamming(h0, hc)
        assert cand["score"] == cand["distance"] / cand["t"]
        distances.append(cand["distance"])
    picks = literal_greedy(distances, n - 1) if policy == "greedy" else literal_greedy_unique(distances, n - 1)
    want_ts = [0.0] + [CANDIDATE_TS[i] for i in picks]
    assert rv.ts == want_ts
    assert rv.phash[0] == phash_views(photo.tensor, c0[None], "official")[0]
    assert rv.phash[1:] == [rv.candidates[i]["phash"] for i in picks]
    geom = view_geometry(box, photo.size, want_ts, size=size)
    assert np.array_equal(rv.geometry.crops, geom.crops)
    np.testing.assert_array_equal(rv.geometry.box_in_view, geom.box_in_view)
    return distances


@pytest.mark.parametrize("policy", ["greedy", "greedy_unique"])
def test_select_views_greedy_end_to_end(photos, policy):
    photo = photos["astronaut"]
    gray = rgb_to_gray_official(photo.tensor)
    boxes = [photo.boxes[k] for k in REGIONS]
    n = 3
    res = select_views(photo.tensor, boxes, num_views=n, policy=policy)
    assert len(res) == len(boxes)
    nonzero = 0
    for name, box, rv in zip(REGIONS, boxes, res):
        assert rv.ts[0] == 0.0 and len(rv.ts) == n
        distances = _check_greedy_region(photo, gray, box, rv, policy, n)
        nonzero += any(distances)
        assert rv.pixels.shape == (n, 3, 224, 224) and rv.pixels.dtype == torch.float32
        assert torch.equal(rv.pixels, render_crops(photo.tensor, rv.geometry.crops, 224))
        if name == "whole":
            assert distances == [0] * 10
            assert rv.ts == ([0.0, 0.1, 0.1] if policy == "greedy" else [0.0, 0.1, 0.2])
    assert nonzero >= 3  # real regions of a photo have informative distances
    # Each region alone gives the same result as all regions together.
    for box, rv in zip(boxes, res):
        alone = select_views(photo.tensor, [box], num_views=n, policy=policy)[0]
        assert alone.ts == rv.ts
        assert alone.phash == rv.phash
        assert alone.candidates == rv.candidates
        assert np.array_equal(alone.geometry.crops, rv.geometry.crops)
        assert torch.equal(alone.pixels, rv.pixels)


def test_select_views_more_views_and_reference_renderer(photos):
    photo = photos["rocket"]
    gray = rgb_to_gray_official(photo.tensor)
    boxes = [photo.boxes["medium_int"], photo.boxes["tiny_1px"]]
    res = select_views(photo.tensor, boxes, num_views=6, policy="greedy", size=64, renderer="reference")
    for box, rv in zip(boxes, res):
        _check_greedy_region(photo, gray, box, rv, "greedy", 6, size=64)
        assert rv.pixels.shape == (6, 3, 64, 64)
        assert torch.equal(rv.pixels, render_crops(photo.tensor, rv.geometry.crops, 64))
        assert rv.geometry.size == 64
    # num_views = 1: only view 0, nothing hashed.
    one = select_views(photo.tensor, boxes, num_views=1, policy="greedy", render=False)
    assert [r.ts for r in one] == [[0.0], [0.0]]
    assert all(r.pixels is None for r in one)
    # No regions at all.
    assert select_views(photo.tensor, np.zeros((0, 4)), num_views=3) == []


def test_select_views_imagehash_flavour(photos):
    import imagehash
    from PIL import Image

    photo = photos["chelsea"]
    pil = Image.fromarray(photo.array)
    boxes = [photo.boxes["medium"], photo.boxes["tiny_2x3"], photo.boxes["whole"]]
    res = select_views(photo.tensor, boxes, num_views=3, policy="greedy", hash_flavour="imagehash", render=False)
    for box, rv in zip(boxes, res):
        crops = view_geometry(box, photo.size, (0.0,) + CANDIDATE_TS).crops
        hashes = [str(imagehash.phash(pil.crop(tuple(int(v) for v in c)))) for c in crops]
        distances = [hamming(hashes[0], h) for h in hashes[1:]]
        assert [c["phash"] for c in rv.candidates] == hashes[1:]
        assert [c["distance"] for c in rv.candidates] == distances
        picks = literal_greedy(distances, 2)
        assert rv.ts == [0.0] + [CANDIDATE_TS[i] for i in picks]
        assert rv.phash == [hashes[0]] + [hashes[1 + i] for i in picks]
