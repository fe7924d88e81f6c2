"""Typed outputs of :meth:`DynRefer.predict <dynrefer.model.dynrefer.DynRefer.predict>` (as transformers' model
outputs): tensors and the names their columns stand for. Records (SPEC §5) are built from them by
:func:`dynrefer.inference.records.region_records`."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RegionOutputs:
    """What the model computed for R regions; every tensor is float32 on the CPU, one row per region.

    Attributes:
        tasks: the tasks asked for (a subset of caption, tags, attributes, category); ``num_regions``: R (a
            record per region, even when a task had nothing to score: an empty vocabulary).
        tag_names: the model's tags (T); ``tag_probs`` (R, T): sigmoid probability of every tag (None when
            neither tags nor captions were asked); ``tag_threshold``: the threshold in effect (tags above it form
            the captions' control strings and the ``tags`` of a record).
        captions: R captions (None when not asked); ``caption_scores`` (R,) float64: ``exp`` of the beam score;
            ``controls``: the control string each caption was generated from.
        attribute_names: the queried attributes (A); ``attribute_scores`` (R, A): the max over each attribute's
            prompts of ``sigmoid(logit)`` (``contrastive.scores="calibrated"``) or ``sigmoid(s)`` (official).
        category_names: the queried classes (C); ``category_scores`` (R, C): the softmax of the logits
            (calibrated) or the raw ``s`` (official); ``category_logits`` (R, C); ``none_threshold``: a region
            whose best logit is below it has no category (None: always one).
        region: (R, Q, D) the Q-Former's region tokens every head reads (on the model's device, its dtype): what a
            region index stores (:mod:`dynrefer.search`).
    """

    tasks: tuple[str, ...]
    num_regions: int
    tag_names: list[str]
    tag_threshold: float
    tag_probs: torch.Tensor | None = None
    captions: list[str] | None = None
    caption_scores: torch.Tensor | None = None
    controls: list[str] | None = None
    attribute_names: list[str] | None = None
    attribute_scores: torch.Tensor | None = None
    category_names: list[str] | None = None
    category_scores: torch.Tensor | None = None
    category_logits: torch.Tensor | None = None
    none_threshold: float | None = None
    region: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.num_regions


def ranked(names: list[str], probs: torch.Tensor, threshold: float) -> list[list[tuple[str, float]]]:
    """Per row of ``probs`` (R, N): the ``(name, probability)`` pairs above ``threshold``, highest first (ties by
    name). Python lists, built once (iterating a tensor costs a tensor per element); the comparison is the
    tensor's own."""
    out = []
    for row, above in zip(probs.tolist(), (probs > threshold).tolist()):
        keep = [(name, p) for name, p, ok in zip(names, row, above) if ok]
        out.append(sorted(keep, key=lambda x: (-x[1], x[0])))
    return out
