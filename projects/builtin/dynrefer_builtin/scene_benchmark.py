"""The synthetic scene benchmark's evaluation (SPEC §4): the protocol is written at the top of
``eval/synthetic.py``, the command line that runs it. ``evaluate`` scores a model on one split of a
generated scene set; ``tune_tag_threshold`` picks the tag threshold on the val split and
``write_tag_threshold`` stores it in a model folder (``projects/builtin/train_builtin.py`` step 5,
``projects/builtin/ablation_synthetic.py``); ``probe`` is the teacher-forced check of
``projects/builtin/probes/probe_captions.py``
(does the language head rank the true position / size / pattern highest?)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from dynrefer.errors import InputError
from dynrefer.records import write_json

TAG_THRESHOLDS = (0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


def evaluate(model, data, *, split="test", max_images=None, policy=None, ts=None, caption_metrics=True,
             hash_flavour=None, seed=0, tag_threshold=None, tasks=None) -> dict:
    """The report of the module docstring. ``tag_threshold`` overrides the model's for this call
    only; ``tasks`` limits the tasks run (default: every task the model has)."""
    from dynrefer.inference.predictor import Predictor

    predictor = model if isinstance(model, Predictor) else Predictor(model)
    if tag_threshold is not None and not 0.0 <= float(tag_threshold) <= 1.0:
        raise ValueError(f"tag_threshold must be in [0, 1], got {tag_threshold}")
    unknown = set(tasks or ()) - {"caption", "tags", "attributes", "category"}
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}; expected caption, tags, attributes, category")
    tag_config = predictor.model.config.tags
    original = tag_config.threshold
    if tag_threshold is not None:
        tag_config.threshold = float(tag_threshold)
    try:
        return _evaluate(predictor, Path(data), split, max_images, policy, ts, caption_metrics, hash_flavour, seed,
                         tasks)
    finally:
        tag_config.threshold = original


def _evaluate(predictor, data, split, max_images, policy, ts, caption_metrics, hash_flavour, seed, tasks) -> dict:
    import numpy as np

    from dynrefer.metrics.ovad import binary_average_precision
    from dynrefer.records import read_jsonl
    from dynrefer_builtin.scene_eval import majority_baseline, part_accuracy

    records = [r for r in read_jsonl(data) if split is None or r.get("split") == split][:max_images]
    if not records:
        raise InputError(f"no records of split {split!r} in {data}")
    threshold = predictor.model.config.tags.threshold
    preds, truths, pred_records = [], [], []
    generator = torch.Generator().manual_seed(seed)  # the random policy's draws
    m = predictor.model
    wanted = tasks
    tasks = [t for t, head in (("caption", m.language_head), ("tags", m.tag_head), ("attributes", m.contrastive_head),
                               ("category", m.contrastive_head))
             if head is not None and (wanted is None or t in wanted)]
    for record in tqdm(records, desc="describe", unit="image", disable=len(records) < 20):
        out = predictor.describe(data.parent / record["image"], [r["box"] for r in record["regions"]],
                                 policy=policy, ts=ts, all_scores=True, image_label=record["image"],
                                 hash_flavour=hash_flavour, generator=generator, tasks=tasks)
        for region, pred in zip(record["regions"], out["regions"]):
            pred["id"] = region["id"]
        pred_records.append({"image": record["image"], "regions": out["regions"]})
        preds += out["regions"]
        truths += record["regions"]
    views = predictor.model.config.views
    report = {"regions": len(truths), "images": len(records), "policy": policy or views.policy,
              "hash_flavour": hash_flavour or views.hash_flavour, "ts": ts}
    report["tasks"] = tasks
    report["category"] = 100 * float(np.mean([p["category"] is not None and p["category"][0] == t["category"]
                                              for p, t in zip(preds, truths)])) if "category" in tasks else None
    report["category_majority"] = 100 * majority_baseline([{"shape": t["category"]} for t in truths])["shape"]
    aps = []
    for name in sorted({a for t in truths for a in t.get("attributes", []) + t.get("negative_attributes", [])}):
        labels, scores = [], []
        for p, t in zip(preds, truths):
            if name in t.get("attributes", []) or name in t.get("negative_attributes", []):
                labels.append(name in t.get("attributes", []))
                scores.append(dict(p.get("attributes", [])).get(name, 0.0))
        ap = binary_average_precision(labels, scores)
        if not math.isnan(ap):
            aps.append(ap)
    report["attribute_map"] = 100 * float(np.mean(aps)) if aps and "attributes" in tasks else None
    tp = fp = fn = 0
    for p, t in zip(preds, truths):
        got = {n for n, s in p.get("tags", []) if s > threshold}
        want = set(t.get("tags", []))
        tp, fp, fn = tp + len(got & want), fp + len(got - want), fn + len(want - got)
    report["tag_f1"] = 100 * (2 * tp / (2 * tp + fp + fn)) if tp + fp + fn and "tags" in tasks else None
    report["parts_majority"] = {k: 100 * v for k, v in majority_baseline([t["parts"] for t in truths]).items()}
    report["parts"] = report["parts_mean"] = None
    if "caption" in tasks:
        parts = part_accuracy([p["caption"] for p in preds], [t["parts"] for t in truths])
        report["parts"] = {k: 100 * v for k, v in parts.items()}
        report["parts_mean"] = float(np.mean(list(report["parts"].values())))
    if caption_metrics and "caption" in tasks:
        from dynrefer.metrics.captioning import evaluate_captioning

        gt_records = [{"image": r["image"], "width": r["width"], "height": r["height"], "regions": r["regions"]}
                      for r in records]
        report["caption"] = evaluate_captioning(pred_records, gt_records)
    return report


def tune_tag_threshold(model, data, *, split="val", max_images=50, grid=TAG_THRESHOLDS) -> tuple[float, list]:
    """The tag threshold of ``grid`` with the best mean caption-part accuracy on ``split``
    (ties: the smaller threshold) and one row ``{"threshold", "parts_mean", "tag_f1"}`` per value.
    The model's own threshold is left as it was."""
    from dynrefer.inference.predictor import Predictor

    if not grid:
        raise ValueError("the threshold grid is empty")
    predictor = model if isinstance(model, Predictor) else Predictor(model)
    rows = []
    for thr in sorted(float(t) for t in grid):
        report = evaluate(predictor, data, split=split, max_images=max_images, caption_metrics=False,
                          tag_threshold=thr, tasks=("caption", "tags"))
        rows.append({"threshold": thr, "parts_mean": report["parts_mean"], "tag_f1": report["tag_f1"]})
    best = max(rows, key=lambda r: (r["parts_mean"], -r["threshold"]))
    return best["threshold"], rows


def write_tag_threshold(model_dir, threshold: float) -> None:
    """Store ``threshold`` as ``tags.threshold`` in a model folder's ``config.json``."""
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text())
    config["tags"]["threshold"] = float(threshold)
    write_json(path, config, indent=2)


PROBE_PARTS = ("position", "size", "pattern")


def variants(caption: str, parts: dict, part: str) -> tuple[list[str], list[str]]:
    """The candidate values of ``part`` and ``caption`` rewritten with each (the true value's variant is
    ``caption`` itself)."""
    from dynrefer_builtin.synthetic import PATTERNS, POSITION_PHRASES, SIZE_WORDS

    if part == "position":
        values = list(POSITION_PHRASES)
        old = POSITION_PHRASES[parts["position"]]
        if old not in caption:
            raise ValueError(f"caption {caption!r} does not contain its position phrase {old!r}")
        return values, [caption.replace(old, POSITION_PHRASES[v], 1) for v in values]
    values = list(SIZE_WORDS if part == "size" else PATTERNS)
    words = caption.split()
    i = words.index(parts[part])
    return values, [" ".join(words[:i] + [v] + words[i + 1:]) for v in values]


@torch.inference_mode()
def caption_log_likelihood(head, region: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Summed token log-probabilities (B,) of ``captions`` given ``region`` (B, Q, D), empty controls."""
    from dynrefer.model.heads.language import control_string

    return head.log_likelihood(region, [control_string([])] * len(captions), captions)


def probe(model, data, *, split="val", max_images=40, policy=None, ts=None) -> dict:
    from dynrefer.images import load_image
    from dynrefer.inference.engine import Engine
    from dynrefer.records import read_jsonl

    if model.language_head is None:
        raise InputError("the model has no language head")
    data = Path(data)
    records = [r for r in read_jsonl(data) if r.get("split") == split][:max_images]
    if not records:
        raise InputError(f"no records of split {split!r} in {data}")
    engine = Engine(model)
    hits, truths = {p: 0 for p in PROBE_PARTS}, {p: Counter() for p in PROBE_PARTS}
    regions = 0
    for record in records:
        image = load_image(data.parent / record["image"])
        plan = engine.plan([image], [[r["box"] for r in record["regions"]]], policy=policy, ts=ts)
        with torch.inference_mode():
            batch = engine.batch([image], plan)
            region = model.encode_regions(batch["pixels"], batch["boxes_in_view"], batch["view_index"],
                                          engine.encoder_batch_size)
        for k, spec in enumerate(record["regions"]):
            regions += 1
            for part in PROBE_PARTS:
                values, captions = variants(spec["captions"][0], spec["parts"], part)
                scores = caption_log_likelihood(model.language_head, region[k:k + 1].expand(len(captions), -1, -1),
                                                captions)
                hits[part] += values[int(torch.argmax(scores))] == spec["parts"][part]
                truths[part][spec["parts"][part]] += 1
    views = model.config.views
    policy = policy or views.policy
    out = {"regions": regions, "images": len(records), "policy": policy,
           "ts": views.fixed_ts if policy == "fixed" and ts is None else ts}
    out["known"] = {p: round(100 * hits[p] / regions, 1) for p in PROBE_PARTS}
    out["majority"] = {p: round(100 * truths[p].most_common(1)[0][1] / regions, 1) for p in PROBE_PARTS}
    return out
