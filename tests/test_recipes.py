"""The official recipe configs (SPEC §1.5) build and run one step with tiny stand-in weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

import dynrefer
from dynrefer.cli import main
from dynrefer.model.config import tiny_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory):
    from dynrefer_builtin.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("recipes")
    summary = generate_dataset(root / "scenes", num_images=6, seed=5, workers=1, splits=(0.5, 0.5, 0.0))
    torch.manual_seed(0)
    folder = dynrefer.DynRefer(tiny_config(), tags=["red", "circle"]).save_pretrained(root / "tiny_model")
    return root, Path(summary["jsonl"]), folder


def stand_in(config: dict, data: Path, model_dir: Path, export: Path) -> dict:
    """Replace real weights / data / hardware with tiny stand-ins; keep everything else."""
    cfg = json.loads(json.dumps(config))
    model = cfg["model"]
    model["model"] = str(model_dir) if not str(model.get("model", "")).endswith(("official", "mid")) else "tiny"
    model.pop("tags_file", None)
    model.pop("overrides", None)
    for key in ("train_file", "val_file"):
        if key in cfg["data"]:
            cfg["data"][key] = str(data)
    cfg["data"].update(image_root=None, size=64, batch_size=2, num_workers=0, train_split="train", val_split="val")
    trainer = cfg["trainer"]
    trainer.update(accelerator="cpu", devices=1, precision="32-true", logger=False, enable_progress_bar=False,
                   max_steps=1, limit_val_batches=1, default_root_dir=str(export.parent))
    trainer.pop("strategy", None)
    for cb in trainer.get("callbacks", []):
        if cb["class_path"].endswith("ExportPretrained"):
            cb["init_args"]["dirpath"] = str(export)
        if cb["class_path"].endswith("ModelCheckpoint") and "dirpath" in cb["init_args"]:
            cb["init_args"]["dirpath"] = str(export.parent / "checkpoints")
    return cfg


@pytest.mark.parametrize("recipe", ["train/vg1.2_5e.yaml", "train/refcocog_ft.yaml"])
def test_training_recipes_step(recipe, fixture_data, tmp_path, caplog):
    root, data, model_dir = fixture_data
    config = yaml.safe_load((CONFIGS / recipe).read_text())
    assert config["model"]["lr"] == 1e-4 and config["model"]["weight_decay"] == 0.05
    assert config["data"]["num_views"] == 3 and config["data"]["size"] == 224 and config["data"]["batch_size"] == 64
    assert config["trainer"]["max_epochs"] == (5 if "vg1.2" in recipe else 3)
    path = tmp_path / "recipe.yaml"
    cfg = stand_in(config, data, model_dir, tmp_path / "export")
    # a logger, as a real run has: each run logs into a new version_N folder (where "last" was looked for)
    cfg["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                "init_args": {"save_dir": str(tmp_path / "logs")}}
    path.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(path)]) == 0
    exported = dynrefer.DynRefer.from_pretrained(tmp_path / "export")
    assert exported.config.views.num_views == 3
    # the recipes' fixed checkpoint folder: --ckpt_path last resumes (it restarted from scratch before)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 1
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        assert main(["--verbose", "fit", "--config", str(path), "--trainer.max_steps", "2", "--ckpt_path", "last"]) == 0
    assert "Restoring states from the checkpoint path at" in caplog.text and str(last) in caplog.text
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2


@pytest.mark.parametrize("recipe", ["eval/vg_densecap.yaml", "eval/vg_caption.yaml", "eval/refcocog.yaml"])
def test_eval_configs_step(recipe, fixture_data, tmp_path):
    root, data, model_dir = fixture_data
    config = yaml.safe_load((CONFIGS / recipe).read_text())
    assert config["model"]["model"].startswith("checkpoints/")
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(stand_in(config, data, model_dir, tmp_path / "export")))
    assert main(["validate", "--config", str(path)]) == 0


PREDICT_TASKS = {"ovad.yaml": {"attributes"}, "coco.yaml": {"category", "categories"},
                 "vg_densecap.yaml": {"caption", "caption_score", "tags"}, "vg_caption.yaml": {"caption", "tags"},
                 "refcocog.yaml": {"caption", "tags"}}


@pytest.mark.parametrize("recipe", sorted(PREDICT_TASKS))
def test_predict_configs_run(recipe, fixture_data, tmp_path):
    """configs/predict/*.yaml (the benchmark prediction recipes) with a tiny model on fixture scenes."""
    root, data, model_dir = fixture_data
    config = yaml.safe_load((CONFIGS / "predict" / recipe).read_text())
    opts = config["predict"]
    assert opts["model"] == ("checkpoints/refcocog_ft" if recipe == "refcocog.yaml" else "checkpoints/vg1.2_5e")
    assert opts.get("tag_threshold") == {"vg_caption.yaml": 0.8, "refcocog.yaml": 0.76}.get(recipe)
    (tmp_path / "attributes.json").write_text(json.dumps([
        {"id": 0, "name": "color:red", "type": "color", "parent_type": "color", "is_has_att": "is", "freq_set": "head"},
        {"id": 1, "name": "pattern:dotted/spotted", "type": "pattern", "parent_type": "pattern", "is_has_att": "has",
         "freq_set": "tail"}]))
    (tmp_path / "categories.json").write_text(json.dumps([{"id": 1, "name": "circle"}, {"id": 2, "name": "star"}]))
    opts.update(model=str(model_dir), data=str(data), out=str(tmp_path / "pred.jsonl"), image_root=None,
                accelerator="cpu", num_workers=0, batch_size=2)
    for key in ("attributes_file", "classes_file"):
        if key in opts:
            opts[key] = str(tmp_path / ("attributes.json" if key == "attributes_file" else "categories.json"))
    path = tmp_path / "predict.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["predict", "--config", str(path)]) == 0
    records = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in data.read_text().splitlines()]
    assert [len(r["regions"]) for r in records] == [len(r["regions"]) for r in expected]
    for region in (g for r in records for g in r["regions"]):
        assert PREDICT_TASKS[recipe] <= set(region)
        if "attributes" in region:
            assert sorted(a for a, _ in region["attributes"]) == ["color:red", "pattern:dotted/spotted"]
        if "categories" in region:
            assert sorted(c for c, _ in region["categories"]) == ["circle", "star"]
