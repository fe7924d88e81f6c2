"""Prompt vocabularies for the contrastive head (SPEC §1.4): attributes and categories.

Attributes follow OVAD's naming, ``"type:name"`` with synonyms split on ``"/"`` (e.g.
``"color:blue/navy"``). Each synonym gets two prompts: ``"the {attr} {noun}"`` and
``"the {noun} is {attr}"``; for "has" attributes (``is_has_att``) ``"the {attr} {type}
{noun}"`` and ``"the {noun} has {attr} {type}"`` with the type word minus ``" tone"``. An
attribute's score is the maximum over its prompts (OVAD: 117 attributes → 474 prompts).
Categories get the prompt ``"the {class}"`` and the argmax of the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError

DEFAULT_NOUN = "object"


@dataclass(frozen=True)
class Attribute:
    name: str  # the full name as given, e.g. "color:blue/navy" (reported verbatim)
    type: str = ""
    is_has: bool = False

    @property
    def synonyms(self) -> list[str]:
        value = self.name.split(":", 1)[1] if ":" in self.name else self.name
        return [s.strip() for s in value.split("/") if s.strip()]


def as_attributes(items) -> list[Attribute]:
    """Strings (``"type:name/syn"``) or OVAD metadata dicts (``name``, ``type``, ``is_has_att``)."""
    out = []
    for item in items:
        if isinstance(item, Attribute):
            out.append(item)
        elif isinstance(item, dict):
            name = str(item["name"])
            typ = str(item.get("type") or (name.split(":", 1)[0] if ":" in name else ""))
            out.append(Attribute(name, typ, _is_has(item.get("is_has_att", False), name)))
        else:
            name = str(item)
            out.append(Attribute(name, name.split(":", 1)[0] if ":" in name else ""))
    return out


def _is_has(value, name: str) -> bool:
    """OVAD's ``is_has_att``: the strings ``"is"`` / ``"has"`` (as OVAD's files write it) or a boolean."""
    if isinstance(value, str) and value.strip().lower() in ("is", "has"):
        return value.strip().lower() == "has"
    if isinstance(value, bool) or value is None:
        return bool(value)
    raise InputError(f"attribute {name!r}: is_has_att must be 'is', 'has' or a boolean, got {value!r}")


def attribute_prompts(attributes, noun: str = DEFAULT_NOUN, extra_synonyms: dict | None = None
                      ) -> tuple[list[str], list[int]]:
    """All prompts and, for each, the index of its attribute. ``extra_synonyms`` maps an attribute's full name
    to more synonyms prompted for it (the original adds some to OVAD's maturity attributes; an attribute's
    score is the max over its prompts, so their order does not matter)."""
    prompts, owner = [], []
    extra_synonyms = extra_synonyms or {}
    for i, attr in enumerate(as_attributes(attributes)):
        type_word = attr.type.replace(" tone", "")
        synonyms = attr.synonyms + list(extra_synonyms.get(attr.name, []))  # as the original: a repeat is harmless
        for syn in synonyms:
            if attr.is_has:
                texts = [f"the {syn} {type_word} {noun}", f"the {noun} has {syn} {type_word}"]
            else:
                texts = [f"the {syn} {noun}", f"the {noun} is {syn}"]
            prompts += texts
            owner += [i] * len(texts)
    return prompts, owner


def category_prompts(categories) -> list[str]:
    return [f"the {c}" for c in categories]


def max_over_prompts(logits: torch.Tensor, owner: list[int], num_items: int) -> torch.Tensor:
    """(R, P) prompt logits → (R, num_items) max over each item's prompts."""
    index = torch.as_tensor(owner, device=logits.device)
    out = torch.full((logits.shape[0], num_items), float("-inf"), device=logits.device, dtype=logits.dtype)
    return out.scatter_reduce(1, index[None].expand(logits.shape[0], -1), logits, reduce="amax", include_self=True)


def calibrate_none_threshold(best_logits_known, best_logits_unknown=None, *, keep: float = 0.95) -> float:
    """A "none of these" threshold on the best category logit.

    ``best_logits_known``: the best logit of regions whose class is in the vocabulary (e.g.
    a validation set); the threshold keeps the fraction ``keep`` of them. With
    ``best_logits_unknown`` (regions of no listed class) the threshold is instead the one of
    the known / unknown midpoints that maximises balanced accuracy while keeping at least
    ``keep`` of the known regions, when such a threshold exists. Set the result as
    ``config.contrastive.none_threshold`` (or pass ``none_threshold=`` to ``predict``).
    """
    known = torch.as_tensor(best_logits_known, dtype=torch.float64).flatten()
    if known.numel() == 0:
        raise ValueError("calibration needs at least one known-class logit")
    base = float(torch.quantile(known, 1.0 - keep))
    if best_logits_unknown is None:
        return base
    unknown = torch.as_tensor(best_logits_unknown, dtype=torch.float64).flatten()
    if unknown.numel() == 0:
        return base
    candidates = torch.cat([known, unknown]).unique()
    best, best_acc = base, -1.0
    for thr in candidates.tolist():
        kept = float((known >= thr).double().mean())
        if kept < keep:
            continue
        acc = 0.5 * (kept + float((unknown < thr).double().mean()))
        if acc > best_acc:
            best, best_acc = thr, acc
    return best
