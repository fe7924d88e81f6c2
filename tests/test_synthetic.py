"""The synthetic scene generator: determinism, annotations that match the pixels, coverage of the
vocabulary, splits, the ``synth`` command, bad input, and the detail property (fine patterns on
small objects survive a t = 0 crop but not the whole image at 64 px)."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
from dynrefer_builtin.command import register
from dynrefer_builtin.scene_shapes import COLORS
from dynrefer_builtin.synthetic import (
    CATEGORIES,
    COLOR_NAMES,
    PATTERNS,
    POSITION_PHRASES,
    POSITIONS,
    RELATION_PHRASES,
    RELATIONS,
    SIZE_WORDS,
    SIZES,
    generate_dataset,
    generate_scene,
    parse_splits,
    split_counts,
)
from PIL import Image
from scipy import ndimage

from dynrefer.errors import InputError
from dynrefer.records import normalize_caption, read_jsonl

BICUBIC = Image.Resampling.BICUBIC


@pytest.fixture(scope="module")
def scenes():
    """200 scenes with their visible-pixel coverage maps stored sparsely (box crop only)."""
    out = []
    for i in range(200):
        image, record, coverage = generate_scene(5, i, return_masks=True)
        crops = []
        for region, cov in zip(record["regions"], coverage, strict=True):
            x1, y1, x2, y2 = region["box"]
            y0, x0 = max(0, math.floor(y1) - 2), max(0, math.floor(x1) - 2)
            crops.append((x0, y0, cov[y0 : math.ceil(y2) + 2, x0 : math.ceil(x2) + 2].copy(), float(cov.sum())))
        out.append((image, record, crops))
    return out


def test_scene_is_deterministic():
    a_img, a_rec = generate_scene(7, 3)
    b_img, b_rec = generate_scene(7, 3)
    assert a_img.tobytes() == b_img.tobytes()
    assert a_rec == b_rec
    c_img, _ = generate_scene(7, 4)
    assert c_img.tobytes() != a_img.tobytes()
    assert generate_scene(8, 3)[0].tobytes() != a_img.tobytes()
    assert a_img.size == (256, 256) and a_img.mode == "RGB"
    assert a_rec["image"] is None and a_rec["width"] == a_rec["height"] == 256
    small, rec = generate_scene(7, 3, size=128)
    assert small.size == (128, 128) and all(0 <= v <= 128 for r in rec["regions"] for v in r["box"])


def test_dataset_does_not_depend_on_workers(tmp_path):
    a = generate_dataset(tmp_path / "a", 10, seed=5, workers=1, progress=False)
    b = generate_dataset(tmp_path / "b", 10, seed=5, workers=2, progress=False)
    assert a["splits"] == b["splits"]
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 12
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    # the stored PNG holds exactly the pixels of generate_scene
    rec = read_jsonl(tmp_path / "a" / "scenes.jsonl")[4]
    img, ref = generate_scene(5, 4)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / rec["image"])), np.asarray(img))
    assert rec["regions"] == ref["regions"]


def test_boxes_are_tight_on_visible_pixels(scenes):
    for image, record, crops in scenes:
        size = image.size[0]
        assert 2 <= len(record["regions"]) <= 7
        assert [r["id"] for r in record["regions"]] == list(range(len(record["regions"])))
        for region, (x0, y0, cov, total) in zip(record["regions"], crops, strict=True):
            x1, y1, x2, y2 = region["box"]
            assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
            rows = np.flatnonzero((cov > 0).any(axis=1)) + y0
            cols = np.flatnonzero((cov > 0).any(axis=0)) + x0
            # visible pixels touch every edge of the box, and none lie outside it
            assert (cols[0], cols[-1] + 1, rows[0], rows[-1] + 1) == (
                math.floor(x1),
                math.ceil(x2),
                math.floor(y1),
                math.ceil(y2),
            ), region
            assert abs(float(cov.sum()) - total) < 1e-3  # all coverage is inside the crop
            assert region["visible"] >= 0.6
            # sub-pixel exactness: the coverage of the edge columns matches the box's fractions
            assert cov[:, cols[0] - x0].max() <= math.floor(x1) + 1 - x1 + 1e-6


def test_captions_match_the_annotations(scenes):
    for _, record, _ in scenes:
        regions = record["regions"]
        centres = [((r["box"][0] + r["box"][2]) / 2, (r["box"][1] + r["box"][3]) / 2) for r in regions]
        diameters = [r["diameter"] for r in regions]
        for i, region in enumerate(regions):
            parts = region["parts"]
            cap = region["captions"][0]
            assert all(c == normalize_caption(c) for c in region["captions"])
            assert parts["shape"] == region["category"]
            assert f"color:{parts['color']}" in region["attributes"]
            assert f"pattern:{parts['pattern']}" in region["attributes"]
            assert f"position:{parts['position']}" in region["attributes"]
            assert len(region["attributes"]) + len(region["negative_attributes"]) == len(COLORS) + 4 + 3 + 9
            assert not set(region["attributes"]) & set(region["negative_attributes"])
            head = f"the {parts['size']} {parts['pattern']} {parts['color']} {parts['shape']} "
            assert cap.startswith(head), cap
            # position: the 3×3 cell of the box centre
            cx, cy = centres[i]
            cell = POSITIONS[3 * min(2, int(3 * cy / 256)) + min(2, int(3 * cx / 256))]
            assert parts["position"] == cell and POSITION_PHRASES[cell] in cap
            # relative size
            if parts["size"] == "largest":
                assert diameters[i] == max(diameters)
            elif parts["size"] == "smallest":
                assert diameters[i] == min(diameters)
            else:
                assert f"size:{parts['size']}" in region["attributes"]
            # neighbour: the nearest other box centre, in the direction stated
            dists = [math.dist(centres[i], c) if j != i else math.inf for j, c in enumerate(centres)]
            j = parts["neighbour_id"]
            assert dists[j] == min(dists)
            nb = regions[j]
            assert parts["neighbour"] == f"{nb['parts']['color']} {nb['category']}"
            dx, dy = centres[j][0] - cx, centres[j][1] - cy
            expected = {"left of": dx > 0, "right of": dx < 0, "above": dy > 0, "below": dy < 0}
            assert expected[parts["relation"]]
            assert (abs(dx) >= abs(dy)) == (parts["relation"] in ("left of", "right of"))
            assert f"size:{parts['neighbour_size']}" in nb["attributes"]
            neighbour_phrase = f"{parts['neighbour_size']} {parts['neighbour']}"
            assert cap.endswith(f"{RELATION_PHRASES[parts['relation']]} the {neighbour_phrase}"), cap
            # tags are words of the captions: the content words are all there
            for word in (parts["color"], parts["pattern"], parts["shape"], parts["size"], *parts["neighbour"].split()):
                assert word in region["tags"]
            assert all(t in " ".join(region["captions"]).split() for t in region["tags"])


def test_colour_names_survive_the_jitter(scenes):
    names = list(COLORS)
    palette = np.array([COLORS[n] for n in names], dtype=float)
    total = wrong = 0
    for image, record, crops in scenes:
        pixels = np.asarray(image, dtype=float)
        for region, (x0, y0, cov, _) in zip(record["regions"], crops, strict=True):
            inside = cov >= 0.999
            if inside.sum() < 20:
                continue
            ys, xs = np.nonzero(inside)
            mean = pixels[ys + y0, xs + x0].mean(axis=0)
            total += 1
            wrong += names[int(np.linalg.norm(palette - mean, axis=1).argmin())] != region["parts"]["color"]
    assert total > 500
    assert wrong / total < 0.01, (wrong, total)


def test_every_value_occurs(scenes):
    counts = {k: Counter() for k in ("shape", "color", "pattern", "size", "position", "relation")}
    sizes = Counter()
    for _, record, _ in scenes:
        for region in record["regions"]:
            for k, counter in counts.items():
                counter[region["parts"][k]] += 1
            sizes[region["attributes"][2]] += 1
    assert set(counts["shape"]) == set(CATEGORIES) and len(CATEGORIES) >= 10
    assert {"circle", "square", "triangle"} <= set(CATEGORIES)
    assert set(counts["color"]) == set(COLOR_NAMES) and len(COLOR_NAMES) >= 8
    assert set(counts["pattern"]) == set(PATTERNS)
    assert set(counts["size"]) == set(SIZE_WORDS)
    assert set(counts["position"]) == set(POSITIONS)
    assert set(counts["relation"]) == set(RELATIONS)
    assert set(sizes) == {f"size:{s}" for s in SIZES}
    # roughly balanced categories and patterns
    assert min(counts["shape"].values()) > 0.4 * max(counts["shape"].values())
    assert min(counts["pattern"].values()) > 0.6 * max(counts["pattern"].values())


def _hf_energy(gray: np.ndarray, mask: np.ndarray) -> float:
    return float((ndimage.laplace(gray.astype(np.float64))[mask] ** 2).mean())


def test_fine_patterns_need_high_resolution(scenes):
    """t = 0 (the object's box at 64 px) keeps the pattern; the whole image at 64 px loses it."""
    ratios = {"patterned": [], "solid": []}
    for image, record, crops in scenes[:80]:
        blurred = image.resize((64, 64), BICUBIC).resize(image.size, BICUBIC).convert("L")
        gray = image.convert("L")
        for region, (x0, y0, cov, _) in zip(record["regions"], crops, strict=True):
            if region["diameter"] > 26 or region["visible"] < 0.9:
                continue
            x1, y1, x2, y2 = region["box"]
            box = (math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2))
            local = (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)
            inside = Image.fromarray(cov).crop(local).resize((64, 64), Image.Resampling.BILINEAR)
            mask = ndimage.binary_erosion(np.asarray(inside) > 0.999, iterations=4)
            if mask.sum() < 50:
                continue
            t0 = _hf_energy(np.asarray(gray.crop(box).resize((64, 64), BICUBIC)), mask)
            t1 = _hf_energy(np.asarray(blurred.crop(box).resize((64, 64), BICUBIC)), mask)
            ratios["solid" if region["parts"]["pattern"] == "solid" else "patterned"].append(t0 / t1)
    patterned, solid = np.array(ratios["patterned"]), np.array(ratios["solid"])
    assert len(patterned) >= 30 and len(solid) >= 10
    # measured on this data: median ≈ 40, minimum ≈ 5 for patterned; median ≈ 2 for solid (grain)
    assert np.median(patterned) > 15
    assert np.percentile(patterned, 5) > 4
    assert np.median(patterned) > 5 * np.median(solid)


def test_splits():
    assert parse_splits("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    assert split_counts(100, (0.8, 0.1, 0.1)) == [80, 10, 10]
    assert split_counts(3, (0.8, 0.1, 0.1)) == [1, 1, 1]
    assert split_counts(10, (1.0, 0.0, 0.0)) == [10, 0, 0]
    assert sum(split_counts(17, (0.7, 0.2, 0.1))) == 17
    for bad in ("0.8,0.1", "a,b,c", "0.5,0.5,0.5", "-0.1,0.6,0.5", "nan,0.5,0.5", ""):
        with pytest.raises(InputError):
            parse_splits(bad)


def _run_cli(argv):
    from dynrefer.cli import _Parser

    parser = _Parser(prog="dynrefer")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_writes_the_dataset(tmp_path, capsys):
    out = tmp_path / "synth"
    argv = ["synth", "--out", str(out), "--num-images", "12", "--seed", "3", "--workers", "2", "--size", "128"]
    assert _run_cli(argv + ["--splits", "0.5,0.25,0.25"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 12
    assert {k: v["images"] for k, v in summary["splits"].items()} == {"train": 6, "val": 3, "test": 3}
    assert summary["regions"] == sum(v["regions"] for v in summary["splits"].values())
    records = read_jsonl(summary["jsonl"])
    assert [r["split"] for r in records] == ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    assert sum(len(r["regions"]) for r in records) == summary["regions"]
    for r in records:
        with Image.open(out / r["image"]) as im:
            assert im.size == (r["width"], r["height"]) == (128, 128)
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["categories"] == list(CATEGORIES) and "color:red" in vocab["attributes"]
    assert {"pattern:striped", "size:small"} <= set(vocab["attributes"])
    assert all(t in vocab["tags"] for r in records for reg in r["regions"] for t in reg["tags"])


@pytest.mark.parametrize(
    "extra",
    [
        ["--num-images", "0"],
        ["--num-images", "-3"],
        ["--num-images", "2", "--splits", "0.8,0.1"],
        ["--num-images", "2", "--splits", "0.9,0.9,0.1"],
        ["--num-images", "2", "--size", "8"],
        ["--num-images", "2", "--workers", "0"],
        ["--num-images", "2", "--seed", "-1"],
    ],
)
def test_cli_bad_arguments(tmp_path, extra):
    argv = ["synth", "--out", str(tmp_path / "x"), "--seed", "0", *extra]
    with pytest.raises(InputError):
        _run_cli(argv)


def test_api_bad_arguments(tmp_path):
    with pytest.raises(InputError):
        generate_dataset(tmp_path, 0, 0)
    with pytest.raises(InputError):
        generate_scene(-1, 0)
    with pytest.raises(InputError):
        generate_scene(0, -1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError):
        generate_dataset(tmp_path / "file", 1, 0)
