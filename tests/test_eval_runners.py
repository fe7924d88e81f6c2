"""The benchmark runners in eval/ end to end on fixture scenes with a tiny model:
prepared data + model → predict → evaluate → report."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dynrefer
from dynrefer.model.config import tiny_config

EVAL = Path(__file__).resolve().parent.parent / "eval"


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    from dynrefer_builtin.synthetic import generate_dataset, vocabulary

    root = tmp_path_factory.mktemp("runners")
    summary = generate_dataset(root / "scenes", num_images=4, seed=11, workers=1, splits=(0.5, 0.0, 0.5))
    vocab = vocabulary()
    torch.manual_seed(0)
    model = dynrefer.DynRefer(tiny_config(), tags=vocab["tags"][:8], categories=vocab["categories"],
                              attributes=vocab["attributes"])
    folder = model.save_pretrained(root / "model")
    (root / "attributes.json").write_text(json.dumps([
        {"id": i, "name": a, "type": a.split(":")[0], "parent_type": a.split(":")[0], "is_has_att": "is",
         "freq_set": ("head", "medium", "tail")[i % 3]} for i, a in enumerate(vocab["attributes"])]))
    (root / "categories.json").write_text(json.dumps([{"id": i + 1, "name": c}
                                                      for i, c in enumerate(vocab["categories"])]))
    return root, Path(summary["jsonl"]), folder


def run_runner(name: str, argv: list[str], monkeypatch) -> dict:
    monkeypatch.setattr(sys, "argv", [str(EVAL / name), *argv])
    monkeypatch.syspath_prepend(str(EVAL))
    runpy.run_path(str(EVAL / name), run_name="__main__")
    return json.loads((Path(argv[argv.index("--out-dir") + 1]) / "report.json").read_text())


def _test_regions(data: Path) -> list[dict]:
    return [g for r in map(json.loads, data.read_text().splitlines()) if r["split"] == "test" for g in r["regions"]]


@pytest.mark.parametrize("name", ["refcocog.py", "vg_caption.py"])
def test_captioning_runners(name, fixture, tmp_path, monkeypatch):
    root, data, model = fixture
    report = run_runner(name, ["--model", str(model), "--data", str(data), "--out-dir", str(tmp_path),
                               "--num-workers", "0"], monkeypatch)
    assert report["task"] == "caption" and 0 <= report["meteor"] <= 100 and report["cider"] >= 0
    assert report["settings"]["tag_threshold"] == (0.76 if name == "refcocog.py" else 0.8)
    assert report["settings"]["regions"] == len(_test_regions(data))
    preds = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert all(isinstance(g["caption"], str) for r in preds for g in r["regions"])


def test_densecap_runner_with_ground_truth_and_proposal_boxes(fixture, tmp_path, monkeypatch):
    root, data, model = fixture
    common = ["--model", str(model), "--data", str(data), "--num-workers", "0"]
    gt = run_runner("vg_densecap.py", [*common, "--out-dir", str(tmp_path / "gt")], monkeypatch)
    assert gt["task"] == "densecap" and gt["npos"] > 0 and 0 <= gt["map"] <= 100 and set(gt["ap"]) >= {"0.3", "0.7"}
    rng = np.random.default_rng(0)
    proposals = []
    for rec in map(json.loads, data.read_text().splitlines()):
        if rec["split"] == "test":
            regions = [{"id": k, "box": [float(v + rng.uniform(-2, 2)) for v in g["box"]], "score": float(rng.random())}
                       for k, g in enumerate(rec["regions"][:2])]
            proposals.append({**rec, "regions": regions})
    (tmp_path / "proposals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in proposals))
    pred = run_runner("vg_densecap.py", [*common, "--out-dir", str(tmp_path / "pr"), "--proposals",
                                         str(tmp_path / "proposals.jsonl")], monkeypatch)
    out = [json.loads(line) for line in (tmp_path / "pr" / "predictions.jsonl").read_text().splitlines()]
    assert [[g["score"] for g in r["regions"]] for r in out] == [[g["score"] for g in r["regions"]] for r in proposals]
    assert pred["npos"] == gt["npos"] and 0 <= pred["map"] <= 100


def test_ovad_runner(fixture, tmp_path, monkeypatch):
    root, data, model = fixture
    report = run_runner("ovad.py", ["--model", str(model), "--data", str(data), "--out-dir", str(tmp_path),
                                    "--attributes", str(root / "attributes.json"), "--num-workers", "0"], monkeypatch)
    assert report["task"] == "ovad" and 0 <= report["map"] <= 100
    preds = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert all(len(g["attributes"]) == len(json.loads((root / "attributes.json").read_text()))
               for r in preds for g in r["regions"])


def test_coco_runner_accuracy_matches_the_predictions(fixture, tmp_path, monkeypatch):
    root, data, model = fixture
    report = run_runner("coco.py", ["--model", str(model), "--data", str(data), "--out-dir", str(tmp_path),
                                    "--classes", str(root / "categories.json"), "--num-workers", "0"], monkeypatch)
    preds = [g for line in (tmp_path / "predictions.jsonl").read_text().splitlines()
             for g in json.loads(line)["regions"]]
    truth = _test_regions(data)
    assert len(preds) == len(truth)
    expected = 100 * np.mean([p["category"][0] == t["category"] for p, t in zip(preds, truth)])
    assert report["task"] == "recognition" and report["accuracy"] == pytest.approx(expected)
    assert all(len(p["categories"]) == 12 for p in preds)


def test_runner_bad_input_is_one_line_and_status_2(fixture, tmp_path, monkeypatch, capsys):
    root, data, model = fixture
    with pytest.raises(SystemExit) as info:
        run_runner("refcocog.py", ["--model", str(model), "--data", str(data), "--out-dir", str(tmp_path),
                                   "--split", "nosuch", "--num-workers", "0"], monkeypatch)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("error: no records of split 'nosuch' in '" + str(data) + "'"), err


def test_runner_split_defaults_to_the_files_only_split_else_test(tmp_path, monkeypatch):
    """``--split`` left out: the file's only split (GLaMM RefCOCOg is prepared as ``val``), else ``test``;
    several splits without ``test`` need it named."""
    monkeypatch.syspath_prepend(str(EVAL))
    from runner import resolve_split

    from dynrefer.errors import InputError

    def data(*splits):
        path = tmp_path / f"{'_'.join(map(str, splits)) or 'none'}.jsonl"
        path.write_text("".join(json.dumps({"image": f"{i}.png", "regions": []} | ({"split": s} if s else {})) + "\n"
                                for i, s in enumerate(splits)))
        return path

    assert resolve_split(data("val", "val"), None) == "val"
    assert resolve_split(data("train", "val", "test"), None) == "test"
    assert resolve_split(data(None, None), None) is None
    assert resolve_split(data("train", "val"), "val") == "val"
    with pytest.raises(InputError, match="has the splits train, val: choose one with --split"):
        resolve_split(data("train", "val"), None)


def test_scenes_densecap_runner(tmp_path, monkeypatch):
    """Describe everything on generated scenes (issue #30): ground-truth boxes, the default proposals, and file
    proposals equal to the ground truth (the same mAP as the first), with the built-in model and METEOR 1.5."""
    report = run_runner("scenes_densecap.py", ["--out-dir", str(tmp_path), "--scenes", "2", "--max-regions", "30"],
                        monkeypatch)
    gt, default, file_gt = report["gt_boxes"], report["default"], report["file_gt"]
    objects = report["proposals"]["objects"]
    assert gt["regions"] == file_gt["regions"] == objects > 0 and 0 < default["regions"] <= 60
    assert report["file_equals_gt"] is True and file_gt == gt
    assert 0 < default["map"] <= 100 and 0 < gt["map"] <= 100 and 0 <= gt["det_map"] <= 100
    assert report["default_over_gt"] == round(default["map"] / gt["map"], 3)
    assert 0.5 <= report["proposals"]["recall_at_100"] <= report["proposals"]["recall_at_300"] <= 1.0
    predictions = [json.loads(line) for line in (tmp_path / "default.jsonl").read_text().splitlines()]
    assert all(r["score"] == r["objectness"]
               for p in predictions for r in p["regions"])


def test_scenes_search_runner(tmp_path, monkeypatch):
    """Region search on generated scenes (issue #31), a small collection: every measure is reported and in range;
    the unknown words find nothing (the vocabulary rule); the calibration tables cover every query-region pair."""
    report = run_runner("scenes_search.py", ["--out-dir", str(tmp_path), "--images", "8", "--examples", "20"],
                        monkeypatch)
    assert report["settings"]["regions"] == report["index"]["regions"] > 8
    for kind in ("category", "colour", "pattern", "colour_shape"):
        row = report[f"text_{kind}"]
        assert 0 <= row["map"] <= 1 and 0 <= row["hits"] <= 10 and row["queries"] > 0
        assert 0 <= row["p_at_10_ranking"] <= 1
    assert report["rejected_unknown_words"] == 1.0 and 0 <= report["rejected_absent"] <= 1
    for key in ("by_example_p_at_10", "text_prompt_accuracy", "few_shot_1_accuracy", "few_shot_5_accuracy",
                "by_example_model_class_p_at_10", "by_example_true_class_ceiling_p_at_10"):
        assert 0 < report[key] <= 1, key
    for kind in ("category", "colour", "pattern", "colour_shape"):  # every query-region pair in one table
        table = report["calibration"][kind]
        pairs = report[f"text_{kind}"]["queries"] * report["settings"]["regions"]
        assert sum(b["count"] for b in table["bins"]) == pairs and 0 <= table["ece"] <= 1
    open_set = report["few_shot_5_open_set"]
    assert (open_set["known_classes"], open_set["unknown_classes"]) == (8, 4)
    floors = [open_set[f"min_similarity_{f}"] for f in (0.5, 0.7, 0.8, 0.9)]
    for row in floors:
        for key in ("none_on_unknown", "none_on_known", "accuracy_known", "open_set_accuracy"):
            assert 0 <= row[key] <= 1, key
    assert floors[0]["none_on_known"] < floors[0]["none_on_unknown"]  # the floor tells the two groups apart
    assert report["text_colour"]["p_at_10"] >= 0.9 and report["text_colour"]["map"] >= 0.8  # 1.0, 0.98 on 300 scenes
