"""The paper's ablation on the synthetic scene benchmark (SPEC §4), in two groups.

*Trained arms*: stage 2 of the built-in recipe retrained from the same frozen stage-1 CLIP, on
the same scenes, with the same seed, learning rate, batch size and number of optimiser steps
(``--steps`` with a per-step cosine, a shorter schedule than the built-in model's; or ``--epochs 4``,
the built-in model's own schedule: whole epochs, the cosine stepped once an epoch), one arm per setting:

* ``multiview``: n = 3 views, the extra two drawn at random during training, greedy pHash at
  inference (the method);
* ``multiview_fixed``: n = 3 views fixed at t = 0, 0.5, 1 in training and inference (the README's
  context-fixed retrain: on these scenes greedy picks t = 0.1 / 0.2 for most regions);
* ``t0``: n = 1, the region crop only (t = 0);
* ``t1``: n = 1, the whole image only (t = 1; the region RoI-aligned out of it);
* ``caption_only``: n = 3 like ``multiview``, but the tag and contrastive heads switched off
  (language loss only) — against ``multiview``'s multi-task training.

*Inference arms* on the built-in model (no retraining): the greedy policy with the official
pHash, greedy with the ``imagehash`` flavour, ``greedy_unique``, random views (seeded) and fixed
views (t = 0, 0.5, 1.0).

Every trained arm's tag threshold is picked on the val split as the built-in model's is
(``--tune-images``); every arm is scored by ``eval/synthetic.py`` on the same held-out test images. Writes
``OUT/ablation.json`` and ``OUT/ablation.md`` (the README table) and prints the JSON.

Usage: ``python projects/builtin/ablation_synthetic.py --run runs/builtin --out runs/ablation
[--steps 600 | --epochs 4] [--arms multiview,multiview_fixed,t0,t1,caption_only] [--inference] [--max-images 200]``
(``--run``: a finished ``projects/builtin/train_builtin.py`` folder: its scenes, tokenizer, tag list and
stage-1 CLIP are reused; or ``--from-model builtin --run runs/abl`` rebuilds such a folder from a saved
model, and ``--overrides JSON`` sets recipe options of every arm, e.g. the built-in tag loss weight).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

STOCHASTIC = {"views": {"num_views": 3, "policy": "greedy", "fixed_ts": None, "train_policy": "random"}}
ARMS = {  # model config overrides on the built-in config; the training / validation views follow the config
    "multiview": STOCHASTIC,
    "multiview_fixed": {"views": {"num_views": 3, "policy": "fixed", "fixed_ts": [0.5, 1.0], "train_policy": "fixed"}},
    "t0": {"views": {"num_views": 1, "policy": "fixed", "fixed_ts": [], "train_policy": "fixed"}},
    "t1": {"views": {"num_views": 1, "policy": "fixed", "fixed_ts": [], "train_policy": "fixed", "base_t": 1.0}},
    "caption_only": {**STOCHASTIC, "tags": {"enabled": False}, "contrastive": {"enabled": False}},
}  # fmt: skip
INFERENCE_ARMS = {
    "greedy (official pHash)": dict(policy="greedy", hash_flavour="official"),
    "greedy (imagehash)": dict(policy="greedy", hash_flavour="imagehash"),
    "greedy_unique": dict(policy="greedy_unique"),
    "random views": dict(policy="random"),
    "fixed views (0, 0.5, 1)": dict(policy="fixed", ts=[0.5, 1.0]),
}
COLUMNS = ("category", "color", "pattern", "size", "position", "shape", "relation", "neighbour")


def prepare_run(run: Path, model: str, num_images: int, seed: int, workers: int, overrides: dict) -> None:
    """A ``--run`` folder from a saved model (``--from-model``) when the training run's folder is gone:
    the scenes (``dynrefer synth``, same count and seed as the built-in recipe), the model's tokenizer
    and tag list, its frozen CLIP extracted to ``clip.safetensors`` (float32 from the stored dtype) and
    ``builtin_config.yaml`` (the built-in config, ``overrides`` merged). Each part is kept when present."""
    import shutil

    from dynrefer_builtin.synthetic import generate_dataset
    from safetensors.torch import load_file, save_file

    from dynrefer.model.config import DynReferConfig, merge_dicts
    from dynrefer.model.io import resolve_model_dir

    src = Path(resolve_model_dir(model))
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "scenes" / "scenes.jsonl").is_file():
        generate_dataset(run / "scenes", num_images, seed, workers=workers)
    if not (run / "tokenizer").is_dir():
        shutil.copytree(src / "tokenizer", run / "tokenizer")
    shutil.copyfile(src / "tags.txt", run / "tags.txt")
    (run / "model").mkdir(exist_ok=True)
    shutil.copyfile(src / "vocab.json", run / "model" / "vocab.json")
    clip = run / "clip.safetensors"
    if not clip.is_file():
        prefix = "encoder.clip."
        state = {k[len(prefix):]: v.float().contiguous() for k, v in load_file(str(src / "model.safetensors")).items()
                 if k.startswith(prefix)}
        save_file(state, str(clip))
    config = merge_dicts(DynReferConfig.from_name("builtin").to_dict(), overrides)
    config = merge_dicts(config, {"encoder": {"weights": str(clip)},
                                  "language": {"tokenizer_path": str(run / "tokenizer")}})
    DynReferConfig.from_dict(config).to_yaml(run / "builtin_config.yaml")


def train_arm(name: str, run: Path, out: Path, steps: int, batch_size: int, lr: float, seed: int, workers: int,
              short_text_prob: float, short_text_skip: list[str], epochs: int | None = None) -> Path:
    """Train one arm for ``steps`` optimiser steps (cosine stepped per step down to 0 at the last one)
    or, when ``epochs`` is given, for that many epochs with the built-in recipe's per-epoch cosine and a
    validation after each epoch (``steps`` is then ignored)."""
    import lightning as L

    from dynrefer.train.callbacks import ExportPretrained
    from dynrefer.train.data import RegionDataModule, view_settings
    from dynrefer.train.module import DynReferModule

    overrides = ARMS[name]
    model_dir = out / name / "model"
    if (model_dir / "config.json").is_file():
        return model_dir
    L.seed_everything(seed, workers=True)
    module = DynReferModule(str(run / "builtin_config.yaml"), tags_file=str(run / "tags.txt"), lr=lr,
                            overrides=overrides or None)
    jsonl = str(run / "scenes" / "scenes.jsonl")
    data = RegionDataModule(jsonl, jsonl, batch_size=batch_size, num_workers=workers,
                            max_val_regions=256 if epochs is None else 512,  # 512: as projects/builtin/train_builtin.py
                            short_text_prob=short_text_prob, short_text_skip=short_text_skip,
                            **view_settings(module.model.config.views))
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=out / name / "ckpt", save_last=True)
    if epochs is not None:  # the built-in recipe's schedule (projects/builtin/train_builtin.py's stage 2)
        schedule = dict(max_epochs=epochs, max_steps=-1)
    else:
        schedule = dict(max_steps=steps, max_epochs=-1, val_check_interval=min(steps, 200),
                        check_val_every_n_epoch=None)
    trainer = L.Trainer(accelerator="cpu", default_root_dir=str(out / name),
                        callbacks=[ckpt, ExportPretrained(str(model_dir), frozen_dtype="float16")],
                        logger=L.pytorch.loggers.CSVLogger(str(out / name), name="logs"), log_every_n_steps=20,
                        gradient_clip_val=1.0, **schedule)
    last = out / name / "ckpt" / "last.ckpt"
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.is_file() else None)
    vocab = json.loads((run / "model" / "vocab.json").read_text()) if (run / "model" / "vocab.json").is_file() else None
    if vocab is not None:
        (model_dir / "vocab.json").write_text(json.dumps(vocab, indent=1) + "\n")
    return model_dir


def row(name: str, report: dict, multitask: bool = True) -> dict:
    parts = report["parts"]
    caption = report.get("caption") or {}
    return {
        "arm": name,
        "category": report["category"] if multitask else None,
        "attribute_map": report["attribute_map"] if multitask else None,
        **{k: parts.get(k) for k in COLUMNS[1:]},
        "parts_mean": report["parts_mean"],
        "meteor": caption.get("meteor"),
        "cider": caption.get("cider"),
    }


def markdown(rows: list[dict], baseline: dict) -> str:
    head = ["arm", "category", "attr mAP", *COLUMNS[1:], "parts mean", "METEOR", "CIDEr"]
    keys = ["arm", "category", "attribute_map", *COLUMNS[1:], "parts_mean", "meteor", "cider"]
    fmt = lambda v: "–" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in [baseline, *rows]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="runs/builtin")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=None,
                        help="train each arm for this many epochs with the built-in recipe's per-epoch cosine "
                             "(the built-in model: 4) instead of --steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=7e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--short-text-prob", type=float, default=0.5)
    parser.add_argument("--short-text-skip", default="position:",
                        help="attribute prefixes never named in the short texts, as projects/builtin/train_builtin.py")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--from-model", default=None,
                        help="build --run from a saved model (e.g. builtin) when the training folder is gone: "
                             "scenes, tokenizer, tags and the frozen CLIP (see prepare_run)")
    parser.add_argument("--num-images", type=int, default=7000, help="scenes generated by --from-model")
    parser.add_argument("--overrides", default="{}",
                        help="JSON merged into the built-in config of every arm, e.g. the built-in recipe's "
                             "'{\"tags\": {\"loss_weight\": 0.3}}' (with --from-model)")
    parser.add_argument("--inference", action="store_true", help="also the inference arms on --model")
    parser.add_argument("--model", default="builtin", help="the multi-view model of the inference arms")
    parser.add_argument("--max-images", type=int, default=200)
    parser.add_argument("--no-caption-metrics", action="store_true", help="skip METEOR / CIDEr (no Java)")
    parser.add_argument("--tune-images", type=int, default=50,
                        help="val images for picking each trained arm's tag threshold (0: the config's)")
    args = parser.parse_args()
    run, out = Path(args.run), Path(args.out)
    from dynrefer.model.config import ConfigError, overrides_from_json

    try:
        overrides = overrides_from_json(args.overrides)
    except ConfigError as err:
        parser.error(f"--overrides: {err}")
    if args.from_model is not None:
        prepare_run(run, args.from_model, args.num_images, args.seed, args.workers, overrides)
    elif overrides:
        parser.error("--overrides applies to the config written by --from-model")
    out.mkdir(parents=True, exist_ok=True)
    from dynrefer_builtin import scene_benchmark as evaluation

    data = run / "scenes" / "scenes.jsonl"
    results = json.loads((out / "ablation.json").read_text()) if (out / "ablation.json").is_file() else {}
    results.setdefault("trained", {})
    results.setdefault("inference", {})
    results["settings"] = {k: v for k, v in vars(args).items()}
    for name in [a.strip() for a in args.arms.split(",") if a.strip()]:
        if name not in ARMS:
            raise SystemExit(f"unknown arm {name!r}; expected some of {', '.join(ARMS)}")
        if name in results["trained"]:
            continue
        t0 = time.time()
        model_dir = train_arm(name, run, out, args.steps, args.batch_size, args.lr, args.seed, args.workers,
                              args.short_text_prob, [p for p in args.short_text_skip.split(",") if p],
                              epochs=args.epochs)
        seconds = round(time.time() - t0, 1)
        tuned = None
        if args.tune_images > 0 and ARMS[name].get("tags", {}).get("enabled", True):
            # as the built-in recipe: each arm's tag threshold (its caption control string) picked on val
            threshold, grid = evaluation.tune_tag_threshold(str(model_dir), data, max_images=args.tune_images)
            evaluation.write_tag_threshold(model_dir, threshold)
            tuned = {"tag_threshold": threshold, "tag_threshold_grid": grid}
        report = evaluation.evaluate(str(model_dir), data, max_images=args.max_images,
                                     caption_metrics=not args.no_caption_metrics)
        results["trained"][name] = {"report": report, "train_seconds": seconds,
                                    "row": row(name, report, multitask=name != "caption_only"), **(tuned or {})}
        (out / "ablation.json").write_text(json.dumps(results, indent=1) + "\n")
    if args.inference:
        from dynrefer.inference.predictor import Predictor

        predictor = Predictor(args.model)
        for name, kw in INFERENCE_ARMS.items():
            if name in results["inference"]:
                continue
            report = evaluation.evaluate(predictor, data, max_images=args.max_images,
                                         caption_metrics=not args.no_caption_metrics, **kw)
            results["inference"][name] = {"report": report, "row": row(name, report)}
            (out / "ablation.json").write_text(json.dumps(results, indent=1) + "\n")
    any_report = next(iter([*results["trained"].values(), *results["inference"].values()]), None)
    if any_report is not None:
        rep = any_report["report"]
        baseline = {"arm": "majority class", "category": rep["category_majority"],
                    **{k: rep["parts_majority"].get(k) for k in COLUMNS[1:]}}
        text = "Trained arms (same data, seed and steps):\n\n"
        text += markdown([v["row"] for v in results["trained"].values()], baseline)
        text += "\nInference arms (the built-in model, no retraining):\n\n"
        text += markdown([v["row"] for v in results["inference"].values()], baseline)
        (out / "ablation.md").write_text(text)
        print(text)
    (out / "ablation.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
