"""Train the built-in model on generated scenes (SPEC §4), end to end on a CPU.

Steps (each skipped when its output exists, so an interrupted run resumes; ``OUT/train_log.json`` is
rewritten after every step and keeps what earlier runs recorded: ``runs`` counts them, ``total_seconds``
adds them up):
1. ``dynrefer synth``: ``--num-images`` scenes into ``OUT/scenes``;
2. a word-level tokenizer over the scene vocabulary → ``OUT/tokenizer``;
3. stage 1: contrastive pretraining of the small CLIP on (region view, caption) pairs and
   (close view, "the {colour} {pattern} {category}") pairs → ``OUT/clip.safetensors`` (then frozen);
4. stage 2: DynRefer's heads, fusion, alignment, Q-Former and the small LM with stochastic
   views (``DynReferModule`` / ``RegionDataModule``, Lightning checkpoints in ``OUT/stage2``),
   exported with ``save_pretrained`` to ``OUT/model`` with the scene vocabularies as defaults (the
   frozen CLIP stored in float16 to keep the folder small enough to ship in the package);
5. the tag threshold (the tags above it are the caption's control string) picked on the val
   split by mean caption-part accuracy (``eval/synthetic.py``'s ``tune_tag_threshold``) and
   written into ``OUT/model/config.json``.

Usage: ``python projects/builtin/train_builtin.py --out runs/builtin [--num-images 12000] [--clip-steps 3000]
[--detail-text-skip size:,position:] [--clip-init CLIP.safetensors] [--epochs 4] [--batch-size 64]
[--short-text-skip position:] [--overrides JSON]``;
``projects/builtin/train_builtin.sh`` runs it with the defaults.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/builtin")
    parser.add_argument("--num-images", type=int, default=12000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--clip-steps", type=int, default=3000)
    parser.add_argument("--clip-batch-size", type=int, default=128)
    parser.add_argument("--clip-lr", type=float, default=1e-3)
    parser.add_argument("--detail-text-prob", type=float, default=0.75,
                        help="stage 1: how often a close view is paired with its "
                             "'the {colour} {pattern} {category}' text")
    parser.add_argument("--detail-subsets", action="store_true",
                        help="stage 1: detail texts name a random subset of colour / pattern / category ('the striped "
                             "object'), positives every region of the batch they are true of")
    parser.add_argument("--detail-text-skip", default="size:,position:",
                        help="stage 1: attribute prefixes the detail texts leave out (comma-separated; "
                             "'position:' lets them name the absolute size: 'the red striped small circle')")
    parser.add_argument("--clip-init", default=None,
                        help="stage 1: continue from this CLIP safetensors file (an earlier run's clip.safetensors) "
                             "instead of a random initialisation")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tune-images", type=int, default=50,
                        help="val images for picking the tag threshold (0: keep the config's)")
    parser.add_argument("--short-text-prob", type=float, default=0.5,
                        help="how often the contrastive head sees a short 'the {attributes} {category}' text instead "
                             "of the caption")
    parser.add_argument("--short-text-skip", default="position:",
                        help="comma-separated attribute prefixes never named in the short texts ('' names every "
                             "attribute; the default keeps the shipped model's recipe, from before the scenes had "
                             "position attributes)")
    parser.add_argument("--overrides", default="{}",
                        help="JSON merged into the builtin model config, e.g. "
                             "'{\"views\": {\"policy\": \"fixed\", \"fixed_ts\": [0.5, 1.0]}, "
                             "\"align\": {\"init\": \"identity\"}}'")
    args = parser.parse_args()
    from dynrefer.model.config import BUILTIN_CLIP, ConfigError, DynReferConfig, merge_dicts, overrides_from_json

    try:
        extra_overrides = overrides_from_json(args.overrides)
    except ConfigError as err:
        parser.error(f"--overrides: {err}")
    if args.clip_init is not None and not Path(args.clip_init).is_file():
        parser.error(f"--clip-init: no such file: '{args.clip_init}'")

    try:  # checked before the long steps, not after them
        config = DynReferConfig.from_dict(merge_dicts(DynReferConfig.from_name("builtin").to_dict(), extra_overrides))
    except ConfigError as err:
        parser.error(f"--overrides: {err}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # an interrupted run resumes: keep what the earlier runs recorded (their stage timings, the scenes summary)
    from dynrefer.records import write_json

    log_path = out / "train_log.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}
    log["args"], log["runs"] = vars(args), int(log.get("runs", 0)) + 1
    earlier_seconds = float(log.get("total_seconds", 0.0))
    start = time.time()

    def save_log() -> None:  # after every step, atomically, so that an interruption keeps the earlier steps' record
        log["total_seconds"] = round(earlier_seconds + time.time() - start, 1)
        write_json(log_path, log, indent=1, default=str)

    from dynrefer_builtin.synthetic import generate_dataset

    jsonl = out / "scenes" / "scenes.jsonl"
    if not jsonl.is_file():
        log["synth"] = generate_dataset(out / "scenes", args.num_images, args.seed, workers=args.workers)
        save_log()
    vocab = json.loads((out / "scenes" / "vocab.json").read_text())

    from dynrefer.model.heads.language import build_word_tokenizer
    from dynrefer.records import iter_jsonl

    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        words = []
        for record in iter_jsonl(jsonl):
            for region in record["regions"]:
                for caption in region.get("captions", []):
                    words.extend(caption.split())
        words += [",", "|"] + list(vocab["tags"])
        build_word_tokenizer(sorted(set(words))).save_pretrained(str(tok_dir))
    (out / "tags.txt").write_text("".join(f"{t}\n" for t in vocab["tags"]))

    from dynrefer.train.clip_pretrain import pretrain_clip

    clip_path = out / "clip.safetensors"
    if not clip_path.is_file():
        t0 = time.time()
        pretrain_clip(jsonl, BUILTIN_CLIP, clip_path, size=64, batch_size=args.clip_batch_size,
                      max_steps=args.clip_steps, max_epochs=-1, num_workers=args.workers, seed=args.seed,
                      accelerator="cpu", default_root_dir=str(out / "stage1"), lr=args.clip_lr,
                      detail_text_prob=args.detail_text_prob, detail_subsets=args.detail_subsets,
                      detail_skip=tuple(p for p in args.detail_text_skip.split(",") if p), init_weights=args.clip_init)
        log["stage1_seconds"] = round(time.time() - t0, 1)
        save_log()

    from dynrefer.train.callbacks import ExportPretrained
    from dynrefer.train.data import RegionDataModule, view_settings
    from dynrefer.train.module import DynReferModule

    overrides = {"encoder": {"weights": str(clip_path)}, "language": {"tokenizer_path": str(tok_dir)}}
    cfg_file = out / "builtin_config.yaml"
    DynReferConfig.from_dict(merge_dicts(config.to_dict(), overrides)).to_yaml(cfg_file)
    model_dir = out / "model"
    if not (model_dir / "config.json").is_file():
        t0 = time.time()
        L.seed_everything(args.seed, workers=True)
        module = DynReferModule(str(cfg_file), tags_file=str(out / "tags.txt"), lr=args.lr)
        data = RegionDataModule(str(jsonl), str(jsonl), batch_size=args.batch_size, num_workers=args.workers,
                                max_val_regions=512, short_text_prob=args.short_text_prob,
                                short_text_skip=[p for p in args.short_text_skip.split(",") if p],
                                **view_settings(module.model.config.views))  # the config's training / inference views
        ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=out / "stage2", save_last=True)
        trainer = L.Trainer(max_epochs=args.epochs, max_steps=args.max_steps, accelerator="cpu",
                            default_root_dir=str(out / "stage2"),
                            callbacks=[ckpt, ExportPretrained(str(model_dir), frozen_dtype="float16")],
                            logger=L.pytorch.loggers.CSVLogger(str(out / "stage2"), name="logs"),
                            log_every_n_steps=20, gradient_clip_val=1.0)
        last = out / "stage2" / "last.ckpt"
        trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.is_file() else None)
        log["stage2_seconds"] = round(time.time() - t0, 1)
        attributes = [a for a in vocab["attributes"] if not a.startswith("size:")] + [
            a for a in vocab["attributes"] if a.startswith("size:")]
        (model_dir / "vocab.json").write_text(json.dumps({"categories": vocab["categories"],
                                                          "attributes": attributes}, indent=1) + "\n")
        save_log()
    has_val = any(r.get("split") == "val" for r in iter_jsonl(jsonl))
    if args.tune_images > 0 and has_val:
        from dynrefer_builtin.scene_benchmark import tune_tag_threshold, write_tag_threshold

        threshold, grid = tune_tag_threshold(str(model_dir), jsonl, max_images=args.tune_images)
        write_tag_threshold(model_dir, threshold)
        log["tag_threshold"], log["tag_threshold_grid"] = threshold, grid
    save_log()
    print(json.dumps({"model": str(model_dir), **{k: v for k, v in log.items() if k != "synth"}}, default=str))


if __name__ == "__main__":
    main()
