"""Parity with the original code: ``scripts/check_parity.py`` on the shared fixture, and a converted model through
``dynrefer describe`` reproducing the original's ``pred``.

The fixture (``../shared/parity`` beside the project: the original DynRefer at a reduced size in the official file
layouts, with its outputs stage by stage) is there in CI and in every development checkout;
``DYNREFER_PARITY_FIXTURE`` may name another folder of the same format.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import script_module

ROOT = Path(__file__).resolve().parent.parent

FIXTURE = Path(os.environ.get("DYNREFER_PARITY_FIXTURE", ROOT.parent / "shared" / "parity"))

pytestmark = pytest.mark.skipif(not (FIXTURE / "fixture.json").is_file(),
                                reason=f"no parity fixture at {FIXTURE} (the shared/ folder beside the project)")


@pytest.fixture(scope="module")
def check_parity():
    with script_module("check_parity") as module:
        yield module


@pytest.fixture(scope="module")
def checked(check_parity, tmp_path_factory):
    """check_parity.py's output lines, exit status and the converted model folder."""
    import contextlib
    import io

    out_dir = tmp_path_factory.mktemp("parity") / "model"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = check_parity.main([str(FIXTURE), "--model-out", str(out_dir)])
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    return status, lines, out_dir


def test_check_parity_passes_on_the_fixture(checked):
    status, lines, _ = checked
    *stages, summary = lines
    assert status == 0 and summary["pass"] is True
    n = summary["regions"]
    assert n == sum(len(m["boxes"]) for m in json.loads((FIXTURE / "fixture.json").read_text())["inputs"]["meta"])
    for key in ("captions_fixed_controls", "captions_pred", "tags", "attribute_ranking", "category", "view_ts"):
        assert summary[key] == f"{n}/{n}", key
    assert summary["lm_loss_abs_diff"] <= 1e-5
    assert summary["attribute_score_max_diff"] <= 1e-5 and summary["class_score_max_diff"] <= 1e-5
    names = [s["stage"] for s in stages]
    for stage in ("views", "view_boxes", "vit_out", "ln_vision_out", "roi_align_out", "align_offset_mask", "align_out",
                  "fused", "qformer_out", "tag_fc_out", "attr_fc_out", "class_fc_out", "att_embeds", "t5_proj_out",
                  "lm_logits", "lm_loss_batch"):
        assert stage in names
    for s in stages:
        assert set(s) >= {"stage", "max_abs", "rel"} and s["rel"] <= 1e-4, s
    assert next(s for s in stages if s["stage"] == "view_boxes")["max_abs"] == 0.0  # integer boxes, bit for bit


def test_a_stage_off_tolerance_fails_the_check(check_parity, monkeypatch):
    """The check can fail: the converted model's T5 run with the folder's gelu_new, not the original's exact GELU."""
    import parity_fixture
    from transformers.activations import ACT2FN

    real = parity_fixture.convert

    def folder_activation(fixture):
        model = real(fixture)
        swapped = 0
        for module in model.language_head.lm.modules():
            if hasattr(module, "act") and hasattr(module, "wi_0"):  # T5's gated feed-forward
                module.act, swapped = ACT2FN["gelu_new"], swapped + 1
        assert swapped
        return model

    monkeypatch.setattr(parity_fixture, "convert", folder_activation)
    result = parity_fixture.run_check(FIXTURE)
    stages = {s["stage"]: s for s in result["stages"]}
    assert result["summary"]["pass"] is False
    assert stages["lm_logits"]["rel"] > 1e-4 and stages["qformer_out"]["rel"] <= 1e-4  # only the language stage


def _write_images(folder: Path) -> list[tuple[Path, list]]:
    from PIL import Image
    from safetensors.torch import load_file

    tensors = load_file(str(FIXTURE / "fixture.safetensors"))
    out = []
    for meta in json.loads((FIXTURE / "fixture.json").read_text())["inputs"]["meta"]:
        path = folder / f"{meta['image']}.png"  # PNG: the pixels exactly
        Image.fromarray(tensors[meta["pixels_uint8"]["$tensor"]].numpy()).save(path)
        out.append((path, meta["boxes"]))
    return out


def test_converted_model_reproduces_pred_through_describe(checked, tmp_path, capsys):
    from dynrefer.cli import main

    _, _, model_dir = checked
    outputs = json.loads((FIXTURE / "fixture.json").read_text())["outputs"]
    pred, threshold = outputs["pred"], float(outputs["tag_thr"])
    attributes = [a["name"] for a in json.loads((FIXTURE / "ovad_small.json").read_text())["attributes"]]
    classes = json.loads((FIXTURE / "coco_small.json").read_text())
    i = compared_captions = 0
    for path, boxes in _write_images(tmp_path):
        argv = ["describe", str(path), "--model", str(model_dir), "--all-scores"]
        for box in boxes:
            argv += ["--box", *map(str, box)]
        assert main(argv) == 0
        record = json.loads(capsys.readouterr().out)
        for region in record["regions"]:
            theirs = pred[i]
            tags = {name for name, score in region["tags"] if score > threshold}
            assert tags == set(theirs["tag_set1"])
            ours_attr = dict(region["attributes"])
            np.testing.assert_allclose([ours_attr[a] for a in attributes], theirs["attr"], atol=1e-5, rtol=0)
            ours_cls = dict(region["categories"])
            np.testing.assert_allclose([ours_cls[c] for c in classes], theirs["cls"], atol=1e-5, rtol=0)
            assert region["category"][0] == classes[int(np.argmax(theirs["cls"]))]
            if len(tags) <= 1:  # the original orders several tags by Python set order: the control string differs
                assert region["caption"] == theirs["caption"]
                assert region["caption_score"] == pytest.approx(theirs["score"], rel=1e-3)
                compared_captions += 1
            i += 1
    assert i == len(pred) and compared_captions >= 1
