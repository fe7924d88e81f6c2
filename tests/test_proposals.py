"""Proposals for "describe everything" (issue #30, first part): the file source, duplicates removed by NMS, and
``dynrefer describe --all`` with the dense-captioning score (the objectness)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dynrefer.cli import main
from dynrefer.errors import InputError
from dynrefer.proposals import FileProposals, Proposals, proposal_source


def _scene(tmp_path):
    from dynrefer.demo import example_scene

    image, truth = example_scene()
    path = tmp_path / "scene.png"
    image.save(path)
    return path, truth


def test_file_proposals_jsonl_and_coco_results(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"image": "imgs/a.png", "regions": [
        {"box": [1, 2, 30, 40], "score": 0.9}, {"box": [5, 5, 9, 9], "score": 1.7}]}) + "\n")
    got = FileProposals(tmp_path / "p.jsonl")(tmp_path / "imgs" / "a.png")
    assert got.boxes.tolist() == [[1, 2, 30, 40], [5, 5, 9, 9]] and got.scores.tolist() == [0.9, 1.0]  # clipped
    assert FileProposals(tmp_path / "p.jsonl")("elsewhere/a.png").boxes.shape == (2, 4)  # by file name
    (tmp_path / "r.json").write_text(json.dumps([{"image_id": 42, "bbox": [10, 20, 5, 6], "score": 0.5},
                                                 {"image_id": 7, "bbox": [0, 0, 1, 1], "score": 0.1}]))
    coco = proposal_source(f"file:{tmp_path / 'r.json'}")("/data/42.png")  # image_id = the file stem
    assert coco.boxes.tolist() == [[10, 20, 15, 26]] and coco.scores.tolist() == [0.5]
    with pytest.raises(InputError, match="hold nothing for image 'b.png'"):
        FileProposals(tmp_path / "p.jsonl")("b.png")
    with pytest.raises(InputError, match="unknown proposal source 'sam'; expected default, sam:CHECKPOINT or "):
        proposal_source("sam")
    with pytest.raises(InputError, match="no such file"):
        proposal_source(f"file:{tmp_path / 'missing.jsonl'}")


def test_select_removes_duplicates_and_keeps_the_best():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [0, 0, 10, 10.5], [100, 0, 120, 5]], float)
    p = Proposals(boxes, np.array([0.5, 0.9, 0.3, 0.2, 0.8]))
    kept = p.select(max_regions=10, nms_iou=0.5)
    assert kept.boxes.tolist() == [[1, 0, 11, 10], [100, 0, 120, 5], [50, 50, 60, 60]]
    assert kept.scores.tolist() == [0.9, 0.8, 0.3]
    assert len(p.select(max_regions=2).boxes) == 2
    assert len(Proposals(boxes).select().boxes) == 3  # without objectness: the source's order decides
    with pytest.raises(InputError, match="nms_iou"):
        p.select(nms_iou=0.0)


def test_describe_all_with_file_proposals(tmp_path, capsys):
    path, truth = _scene(tmp_path)
    boxes = [r["box"] for r in truth["regions"]]
    regions = [{"box": b, "score": 0.9 - 0.1 * i} for i, b in enumerate(boxes)]
    regions += [{"box": [b[0] + 1, b[1], b[2] + 1, b[3]], "score": 0.1} for b in boxes]  # near-duplicates
    (tmp_path / "proposals.jsonl").write_text(json.dumps({"image": "scene.png", "regions": regions}) + "\n")
    code = main(["describe", str(path), "--all", "--proposals", f"file:{tmp_path / 'proposals.jsonl'}",
                 "--viz", str(tmp_path / "all.png")])
    record = json.loads(capsys.readouterr().out)
    assert code == 0 and (tmp_path / "all.png").is_file()
    got = record["regions"]
    assert sorted(tuple(r["box"]) for r in got) == sorted(tuple(float(v) for v in b) for b in boxes)
    for r in got:
        assert r["score"] == r["objectness"]
    assert [r["score"] for r in got] == sorted((r["score"] for r in got), reverse=True)
    # each region's record is the one describe gives for the same box
    argv = ["describe", str(path)]
    for b in boxes:
        argv += ["--box", *map(str, b)]
    assert main(argv) == 0
    plain = {tuple(r["box"]): r for r in json.loads(capsys.readouterr().out)["regions"]}
    for r in got:
        assert r["caption"] == plain[tuple(r["box"])]["caption"]
        assert r["tags"] == plain[tuple(r["box"])]["tags"]


@pytest.mark.parametrize("extra, words", [
    (["--all", "--proposals", "sam"], "unknown proposal source 'sam'"),
    (["--all", "--proposals", "file:x.jsonl", "--box", "1", "1", "5", "5"], "leave out --box"),
    (["--proposals", "file:x.jsonl", "--box", "1", "1", "5", "5"], "--proposals is used by --all"),
])
def test_describe_all_usage_errors(tmp_path, capsys, extra, words):
    path, _ = _scene(tmp_path)
    assert main(["describe", str(path)] + extra) == 2
    assert words in capsys.readouterr().err


def test_proposal_files_are_checked_and_matched_as_review_found(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "a.png", "regions": [{"box": [1, 2, 3], "score": 0.5}]}) + "\n")
    with pytest.raises(InputError, match="line 1 region 0: box must be 4 finite numbers"):
        FileProposals(bad)
    bad.write_text(json.dumps({"image": "a.png", "regions": [{"box": [1, 2, 3, 4], "score": float("nan")}]}))
    with pytest.raises(InputError, match="score must be a finite number"):
        FileProposals(bad)
    (tmp_path / "two.jsonl").write_text("".join(json.dumps({"image": f"{s}/cat.png", "regions": [
        {"box": [1, 1, 9, 9]}]}) + "\n" for s in ("train", "val")))
    with pytest.raises(InputError, match="several records are named 'cat.png'"):
        FileProposals(tmp_path / "two.jsonl")("elsewhere/cat.png")
    assert len(FileProposals(tmp_path / "two.jsonl")(tmp_path / "val" / "cat.png").boxes) == 1  # by its path
    (tmp_path / "r.json").write_text(json.dumps([{"image_id": 397133, "bbox": [1, 1, 5, 5], "score": 0.5}]))
    assert len(FileProposals(tmp_path / "r.json")("000000397133.jpg").boxes) == 1  # COCO's zero-padded names
    outside = Proposals(np.array([[1, 1, 9, 9], [700, 1, 800, 9], [5, 5, 5, 9]], float), np.array([0.5, 0.9, 0.7]))
    assert outside.select(image_size=(600, 400)).boxes.tolist() == [[1, 1, 9, 9]]  # outside and empty left out
    # --all reads proposals as xyxy whatever --box-format says
    path, truth = _scene(tmp_path)
    box = truth["regions"][0]["box"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"image": "scene.png", "regions": [{"box": box}]}) + "\n")
    assert main(["describe", str(path), "--all", "--proposals", f"file:{tmp_path / 'p.jsonl'}",
                 "--box-format", "xywh"]) == 0
    assert json.loads(capsys.readouterr().out)["regions"][0]["box"] == [float(v) for v in box]


def test_the_default_proposer_finds_the_objects_of_generated_scenes():
    """Recall at IoU 0.5 of the first 100 proposals (after NMS at 0.5) on scenes of a seed the proposer was not
    tuned on (seed 7 was): every object of 12 scenes, at least 0.9 (the issue's target)."""
    from dynrefer_builtin.synthetic import generate_scene
    from torchvision.ops import box_iou

    from dynrefer.proposals import proposal_source

    source = proposal_source("default")
    found = total = 0
    for index in range(12):
        image, truth = generate_scene(11, index)
        kept = source(image).select(100, 0.5, image.size)
        assert 0 < len(kept.boxes) <= 100 and 0 < kept.scores.min() <= kept.scores.max() < 1  # probabilities
        gt = torch.tensor([r["box"] for r in truth["regions"]], dtype=torch.float64)
        best = box_iou(gt, torch.as_tensor(kept.boxes)).max(1).values
        found, total = found + int((best >= 0.5).sum()), total + len(gt)
    print(f"[proposals] default, seed 11, 12 scenes: recall@100 = {found}/{total}")
    assert found / total >= 0.9


def test_describe_all_with_the_default_proposer(tmp_path, capsys):
    path, truth = _scene(tmp_path)
    assert main(["describe", str(path), "--all", "--max-regions", "20"]) == 0
    regions = json.loads(capsys.readouterr().out)["regions"]
    assert 0 < len(regions) <= 20
    for r in regions:
        assert r["score"] == r["objectness"]
    from torchvision.ops import box_iou

    iou = box_iou(torch.tensor([r["box"] for r in truth["regions"]]), torch.tensor([r["box"] for r in regions]))
    assert bool((iou.max(1).values >= 0.5).all())  # every object of the scene is described
    # --viz draws every region (a text line each under the image), only the best K with --viz-top K
    from PIL import Image

    heights = {}
    for top in ("3", "0", None):
        extra = [] if top is None else ["--viz-top", top]
        assert main(["describe", str(path), "--all", "--max-regions", "20", "--viz", str(tmp_path / f"{top}.png"),
                     *extra, "--out", str(tmp_path / f"{top}.json")]) == 0
        heights[top] = Image.open(tmp_path / f"{top}.png").height
    assert heights[None] == heights["0"] and heights["0"] - heights["3"] == 16 * (len(regions) - 3)
    assert main(["describe", str(path), "--box", "1", "1", "9", "9", "--viz-top", "3"]) == 2


def test_point_picks_the_most_stable_proposal_containing_it(tmp_path, capsys):
    p = Proposals(np.array([[0, 0, 100, 100], [10, 10, 30, 30], [12, 12, 20, 20], [50, 50, 60, 60]], float),
                  np.array([0.9, 0.9, 0.4, 1.0]))
    assert p.at_point(15, 15).boxes.tolist() == [[10, 10, 30, 30]]  # 0.9 ties: the smaller of the two
    assert p.at_point(55, 55).boxes.tolist() == [[50, 50, 60, 60]]
    assert len(p.at_point(150, 5).boxes) == 0
    assert Proposals(p.boxes).at_point(15, 15).boxes.tolist() == [[12, 12, 20, 20]]  # no objectness: smallest
    path, truth = _scene(tmp_path)
    x1, y1, x2, y2 = truth["regions"][1]["box"]  # the small solid orange star
    assert main(["describe", str(path), "--point", str((x1 + x2) / 2), str((y1 + y2) / 2)]) == 0
    region = json.loads(capsys.readouterr().out)["regions"][0]
    bx = region["box"]
    assert bx[0] <= (x1 + x2) / 2 < bx[2] and bx[1] <= (y1 + y2) / 2 < bx[3] and region["caption"]
    assert main(["describe", str(path), "--point", "999", "5"]) == 2
    assert "outside the 256x256 image" in capsys.readouterr().err


def test_colour_contrast_equals_a_brute_force_count():
    """The integral-histogram contrast against counting the pixels of each box and its ring one by one."""
    from dynrefer.proposals.segments import colour_contrast

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    boxes = []
    for _ in range(60):
        x1, y1 = rng.uniform(0, 15), rng.uniform(0, 11)
        boxes.append([x1, y1, x1 + rng.uniform(0.5, 17 - x1), y1 + rng.uniform(0.5, 13 - y1)])
    boxes = np.asarray(boxes)
    got = colour_contrast(pixels, boxes, margins=(0.25, 1.0))
    code = ((pixels.astype(int) * 4 // 256) * [16, 4, 1]).sum(2)

    def hist(x1, y1, x2, y2):  # whole pixels, rounded outward, clipped to the image
        x1, y1 = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
        x2, y2 = min(17, int(np.ceil(x2))), min(13, int(np.ceil(y2)))
        return np.bincount(code[y1:y2, x1:x2].ravel(), minlength=64).astype(float)

    for m, margin in enumerate((0.25, 1.0)):
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            inner = hist(x1, y1, x2, y2)
            w, h = x2 - x1, y2 - y1
            ring = hist(x1 - margin * w, y1 - margin * h, x2 + margin * w, y2 + margin * h) - inner
            if ring.sum() == 0:
                assert got[m][k] == 0
                continue
            p, r = inner / max(inner.sum(), 1), ring / ring.sum()
            want = 0.5 * ((p - r) ** 2 / np.maximum(p + r, 1e-12)).sum()
            assert got[m][k] == pytest.approx(want, abs=1e-12)
