"""End-to-end tests of the ``dynrefer`` command line (views, demo, the error contract)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dynrefer.cli import main
from dynrefer.phash import bits_to_hex, hamming, phash_official_single, rgb_to_gray_official
from dynrefer.views import CANDIDATE_TS

BOXES = [[150, 15, 300, 190], [278, 338, 330, 378], [0, 0, 512, 512]]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("cli") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def box_args(boxes):
    args = []
    for b in boxes:
        args += ["--box", *b]
    return args


def test_views_record(photo, capsys, tmp_path):
    sheet = tmp_path / "sheet.png"
    code, out, err = run_cli(["views", photo, *box_args(BOXES), "--out", sheet], capsys)
    assert code == 0 and err == ""
    record = json.loads(out)
    assert record["image"] == str(photo)
    assert (record["width"], record["height"]) == (512, 512)
    assert [r["id"] for r in record["regions"]] == [0, 1, 2]
    gray = rgb_to_gray_official(np.asarray(Image.open(photo)))
    for region, box in zip(record["regions"], BOXES):
        assert region["box"] == [float(v) for v in box]
        views = region["views"]
        assert len(views) == 3 and views[0]["t"] == 0.0
        assert views[0]["crop"] == box and views[0]["box_in_view"] == [0.0, 0.0, 224.0, 224.0]
        assert all(isinstance(v, int) for view in views for v in view["crop"])
        cands = region["candidates"]
        assert [c["t"] for c in cands] == list(CANDIDATE_TS)
        h0 = views[0]["phash"]
        x1, y1, x2, y2 = box
        assert h0 == bits_to_hex(phash_official_single(gray[y1:y2, x1:x2]))
        for c in cands:
            assert len(c["phash"]) == 16
            assert c["distance"] == hamming(h0, c["phash"])
            assert c["score"] == c["distance"] / c["t"]
        # Views after view 0 are the greedy choice over the candidates' scores.
        scores = [c["score"] for c in cands]
        best = max(range(10), key=lambda i: (scores[i], -i))
        assert views[1]["t"] == CANDIDATE_TS[best]
        assert views[1]["phash"] == cands[best]["phash"]
    whole = record["regions"][2]
    assert [v["t"] for v in whole["views"]] == [0.0, 0.1, 0.1]  # official repeated-view quirk
    assert all(c["distance"] == 0 for c in whole["candidates"])
    with Image.open(sheet) as img:
        assert img.width >= 4 * 224 and img.height >= 3 * 224


def test_views_policies(photo, capsys):
    code, out, _ = run_cli(["views", photo, "--box", 10, 20, 50, 40, "--box-format", "xywh", "--t", 0.3, 0.7], capsys)
    assert code == 0
    region = json.loads(out)["regions"][0]
    assert region["box"] == [10.0, 20.0, 60.0, 60.0]
    assert [v["t"] for v in region["views"]] == [0.0, 0.3, 0.7]
    code, out, _ = run_cli(["views", photo, *box_args(BOXES[:1]), "--policy", "greedy_unique", "--num-views", 5],
                           capsys)
    ts = [v["t"] for v in json.loads(out)["regions"][0]["views"]]
    assert len(ts) == 5 and len(set(ts)) == 5 and ts[0] == 0.0
    runs = []
    for _ in range(2):
        code, out, _ = run_cli(["views", photo, *box_args(BOXES[:1]), "--policy", "random", "--seed", 3], capsys)
        runs.append([v["t"] for v in json.loads(out)["regions"][0]["views"]])
    assert runs[0] == runs[1] and runs[0][0] == 0.0 and len(set(runs[0][1:])) == 2
    code, out, _ = run_cli(["views", photo, *box_args(BOXES[:1]), "--hash", "imagehash", "--size", 64], capsys)
    region = json.loads(out)["regions"][0]
    assert region["views"][0]["box_in_view"] == [0.0, 0.0, 64.0, 64.0]


@pytest.mark.parametrize(
    "args, reason",
    [
        (["views", "{missing}", "--box", 1, 1, 5, 5], "does-not-exist.png"),
        (["views", "{text}", "--box", 1, 1, 5, 5], "not-an-image.png"),
        (["views", "{photo}", "--box", 50, 50, 10, 60], "inverted"),
        (["views", "{photo}", "--box", 600, 600, 700, 700], "outside"),
        (["views", "{photo}", "--box", "nan", 1, 5, 5], "region 0"),
        (["views", "{photo}", "--box", 1, 1, 5], "--box"),
        (["views", "{photo}", "--box", 1, 1, 5, "x"], "invalid float"),
        (["views", "{photo}", "--box", 1, 1, 5, 5, "--policy", "best"], "invalid choice"),
        (["views", "{photo}", "--box", 1, 1, 5, 5, "--num-views", 0], "--num-views"),
        (["views", "{photo}", "--box", 1, 1, 5, 5, "--num-views", 12], "--num-views"),
        (["views", "{photo}", "--box", 1, 1, 5, 5, "--policy", "greedy", "--t", 0.5], "--t"),
        (["views", "{photo}", "--box", 1, 1, 5, 5, "--t", 1.5], "[0, 1]"),
        (["views", "{photo}", "--box", 1, 1, 5, 5, "--policy", "fixed"], "--t"),
        (["views", "{photo}", "--box", 1, 1, 5, 5, "--out", "sheet.jpg"], ".png"),
        (["views", "{photo}"], "--box"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_one_line(args, reason, photo, tmp_path, capsys):
    text = tmp_path / "not-an-image.png"
    text.write_text("hello")
    paths = {"{missing}": tmp_path / "does-not-exist.png", "{text}": text, "{photo}": photo}
    code, out, err = run_cli([paths.get(a, a) if isinstance(a, str) else a for a in args], capsys)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dynrefer: error: ")
    assert reason in lines[0]


@pytest.mark.slow
def test_console_script_error_and_demo(photo, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    bad = subprocess.run(
        [sys.executable, "-m", "dynrefer", "views", str(tmp_path / "nope.jpg"), "--box", "1", "1", "5", "5"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("dynrefer: error: ")
    assert "nope.jpg" in bad.stderr
    out_dir = tmp_path / "demo"
    demo = subprocess.run(
        [sys.executable, "-m", "dynrefer", "demo", "--out", str(out_dir)], capture_output=True, text=True, env=env
    )
    assert demo.returncode == 0, demo.stderr
    summary = json.loads((out_dir / "summary.json").read_text())
    names = [r["region"] for r in summary["regions"]]
    assert names[-4:] == ["face", "mission patch", "name tag", "shuttle model"]
    assert all(name in demo.stdout for name in names)  # the printed table
    scene = json.loads((out_dir / "scene.json").read_text())
    assert len(scene["regions"]) == len(names) - 4 >= 2
    for key in ("caption", "caption_score", "tags", "attributes", "category"):
        assert all(key in r for r in scene["regions"])
    photo = json.loads((out_dir / "astronaut.json").read_text())
    assert [r["box"] for r in photo["regions"]] == [[150, 15, 300, 190], [132, 345, 210, 425], [278, 338, 330, 378],
                                                   [355, 0, 470, 285]]
    record = json.loads((out_dir / "views.json").read_text())
    assert len(record["regions"]) == 4 and record["image"] == photo["image"] == "astronaut.png"
    for name in ("scene_described.png", "astronaut_described.png"):
        with Image.open(out_dir / name) as picture:
            assert picture.size[0] == 900
    with Image.open(out_dir / "views_sheet.png") as sheet:
        assert sheet.size[0] > 224 * 3


def test_run_script_turns_input_errors_into_one_line_and_status_2(capsys):
    import pytest

    from dynrefer.errors import InputError, run_script

    def bad():
        raise InputError("no records of split 'x' in data.jsonl")

    with pytest.raises(SystemExit) as info:
        run_script(bad, "synthetic.py")
    assert info.value.code == 2
    assert capsys.readouterr().err == "synthetic.py: error: no records of split 'x' in data.jsonl\n"
    run_script(lambda: None, "synthetic.py")  # a clean run returns
