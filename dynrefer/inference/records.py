"""Per-region records (the JSON-ready part of SPEC §5) from the model's tensors
(:class:`~dynrefer.model.outputs.RegionOutputs`)."""

from __future__ import annotations

from ..model.outputs import RegionOutputs, ranked


def _by_score(names: list[str], row: list[float]) -> list[list]:
    return sorted(([n, p] for n, p in zip(names, row)), key=lambda x: (-x[1], x[0]))


def region_records(outputs: RegionOutputs, *, all_tags: bool = False) -> list[dict]:
    """One dict per region with the keys of ``outputs.tasks``: ``caption`` and ``caption_score``; ``tags``
    ([name, probability] above the threshold, highest first; every tag with ``all_tags``); ``attributes``
    ([name, score] for every queried attribute, highest first); ``category`` ([name, score] of the best class,
    or None when its logit is below ``none_threshold``) and ``categories`` (every class, highest first)."""
    out = [dict() for _ in range(len(outputs))]
    if "tags" in outputs.tasks and outputs.tag_probs is not None:
        threshold = float("-inf") if all_tags else outputs.tag_threshold
        for o, tags in zip(out, ranked(outputs.tag_names, outputs.tag_probs, threshold)):
            o["tags"] = [[n, s] for n, s in tags]
    if outputs.captions is not None:
        for o, caption, score in zip(out, outputs.captions, outputs.caption_scores.tolist()):
            o["caption"], o["caption_score"] = caption, score
    if outputs.attribute_scores is not None:
        for o, row in zip(out, outputs.attribute_scores.tolist()):
            o["attributes"] = _by_score(outputs.attribute_names, row)
    if outputs.category_scores is not None:
        names, thr = outputs.category_names, outputs.none_threshold
        best_of = outputs.category_scores.argmax(dim=1).tolist()
        for o, row, logits, best in zip(out, outputs.category_scores.tolist(), outputs.category_logits.tolist(),
                                        best_of):
            o["category"] = None if thr is not None and logits[best] < thr else [names[best], row[best]]
            o["categories"] = _by_score(names, row)
    return out
