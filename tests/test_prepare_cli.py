"""``dynrefer prepare`` end to end (in-process) and the ``data_prep/`` wrappers."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
from prepare_fixtures import dump, glamm_refcocog, glamm_vg, read_jsonl, write_refcocog, write_vg
from prepare_fixtures_coco import ovad, write_coco

from dynrefer.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sources(tmp_path):
    return {
        "refcocog": write_refcocog(tmp_path / "refcocog"),
        "glamm-refcocog": dump(tmp_path / "gr" / "finetune_refcocog_val_captions.json", glamm_refcocog()).parent,
        "glamm-vg": dump(tmp_path / "gv" / "test_caption.json", glamm_vg()).parent,
        "vg": write_vg(tmp_path / "vg"),
        "vg-densecap": tmp_path / "vg",
        "coco": write_coco(tmp_path / "coco"),
        "ovad": dump(tmp_path / "ovad" / "ovad2000.json", ovad()).parent,
    }


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


EXPECTED = {  # converter: (images, regions, split counts of images)
    "refcocog": (3, 4, {"train": 1, "val": 1, "test": 1}),
    "glamm-refcocog": (2, 3, {"val": 2}),
    "glamm-vg": (2, 2, {"test": 2}),
    "vg": (5, 7, {"unsplit": 5}),
    "vg-densecap": (4, 5, {"train": 2, "val": 1, "test": 1}),
    "coco": (3, 3, {"train": 1, "val": 2}),
    "ovad": (2, 3, {"test": 2}),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_prepare_cli(sources, tmp_path, capsys, name):
    out = tmp_path / "out" / f"{name}.jsonl"
    args = ["prepare", name, "--src", sources[name], "--out", out]
    if name not in ("coco", "ovad"):
        args += ["--tagger", "simple"]
    code, stdout, stderr = run(args, capsys)
    assert code == 0 and stderr == ""
    summary = json.loads(stdout)
    images, regions, splits = EXPECTED[name]
    assert summary["converter"] == name and summary["out"] == str(out)
    assert summary["images"] == {**splits, "total": images} and summary["regions"]["total"] == regions
    records = read_jsonl(out)
    assert len(records) == images and sum(len(r["regions"]) for r in records) == regions
    assert all(set(r) >= {"image", "width", "height", "regions"} for r in records)


def test_prepare_cli_options(sources, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    code, stdout, _ = run(
        [
            "prepare",
            "refcocog",
            "--src",
            sources["refcocog"],
            "--out",
            out,
            "--tagger",
            "simple",
            "--no-masks",
            "--image-prefix",
            "coco/train2014",
        ],
        capsys,
    )
    assert code == 0
    records = read_jsonl(out)
    assert records[0]["image"] == "coco/train2014/COCO_train2014_000000581857.jpg"
    assert all("mask" not in g for r in records for g in r["regions"])
    code, stdout, _ = run(
        [
            "prepare",
            "vg",
            "--src",
            sources["vg"],
            "--out",
            out,
            "--tagger",
            "simple",
            "--splits",
            "densecap_splits.json",
            "--max-words",
            "5",
            "--url-paths",
        ],
        capsys,
    )
    assert code == 0
    summary = json.loads(stdout)
    assert summary["dropped"]["regions_over_5_words"] == 2 and summary["images"]["unsplit"] == 1
    assert read_jsonl(out)[0]["image"] == "VG_100K_2/1.jpg"


def _one_error_line(code, stdout, stderr):
    assert code == 2 and stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dynrefer: error: "), stderr
    return lines[0]


def test_prepare_cli_bad_input(sources, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    line = _one_error_line(*run(["prepare", "glamm-vg", "--src", tmp_path, "--out", out, "--tagger", "simple"], capsys))
    assert "test_caption.json' (GLaMM VG test captions): no such file" in line
    (sources["refcocog"] / "refs(umd).p").write_bytes(pickle.dumps([OrderedDict(a=1)], protocol=2))
    line = _one_error_line(
        *run(["prepare", "refcocog", "--src", sources["refcocog"], "--out", out, "--tagger", "simple"], capsys)
    )
    assert "refs(umd).p" in line and "collections.OrderedDict" in line
    (sources["ovad"] / "ovad2000.json").write_text('{"images": [{"id": 1,')
    line = _one_error_line(*run(["prepare", "ovad", "--src", sources["ovad"], "--out", out], capsys))
    assert "ovad2000.json' (OVAD annotations): truncated JSON" in line
    assert not out.exists()


def test_prepare_out_never_replaces_the_source(sources, tmp_path, capsys):
    gv = sources["glamm-vg"]
    before = (gv / "test_caption.json").read_bytes()
    line = _one_error_line(*run(["prepare", "glamm-vg", "--src", gv, "--out", gv / "test_caption.json",
                                 "--tagger", "simple"], capsys))
    assert "would overwrite the source data" in line and (gv / "test_caption.json").read_bytes() == before
    # a COCO output written into the COCO folder: its categories sidecar is not read as an instances file
    coco = sources["coco"]
    for _ in range(2):
        code, out, err = run(["prepare", "coco", "--src", coco, "--out", coco / "instances_val2017.jsonl"], capsys)
        assert code == 0, err
    assert (coco / "instances_val2017.categories.json").is_file()


@pytest.mark.parametrize(
    "args",
    [
        ["prepare"],
        ["prepare", "flickr", "--src", ".", "--out", "o.jsonl"],
        ["prepare", "coco", "--out", "o.jsonl"],
        ["prepare", "vg", "--src", ".", "--out", "o.jsonl", "--tagger", "nltk"],
    ],
)
def test_prepare_cli_usage_errors(capsys, args):
    _one_error_line(*run(args, capsys))


def test_data_prep_wrappers_name_their_converter():
    for name in EXPECTED:
        text = (ROOT / "data_prep" / f"{name.replace('-', '_')}.py").read_text()
        assert f'main(["prepare", "{name}", *sys.argv[1:]])' in text


def test_data_prep_wrapper_subprocess(sources, tmp_path):
    out = tmp_path / "dense.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "data_prep" / "vg_densecap.py"),
            "--src",
            str(sources["vg"]),
            "--out",
            str(out),
            "--tagger",
            "simple",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["regions"] == {"train": 3, "val": 1, "test": 1, "total": 5}
    assert len(read_jsonl(out)) == 4


def test_prepare_checks_out_before_reading(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    line = _one_error_line(*run(["prepare", "coco", "--src", tmp_path, "--out", tmp_path / "file" / "o.jsonl"], capsys))
    assert "a parent folder of it is a file" in line
