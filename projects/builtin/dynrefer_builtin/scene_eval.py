"""Scoring descriptions of generated scenes (SPEC §4; used by ``eval/synthetic.py``).

``caption_parts(caption)`` reads a caption back into the generator's parts (size, colour,
pattern, shape, position, relation, neighbour); ``part_accuracy`` compares predicted captions
with the ground-truth ``parts`` of each region, and ``majority_baseline`` gives the accuracy of
always answering the most frequent value. Captions follow the generator's grammar, e.g.
``the small dotted red star in the top left to the left of the large blue circle``.
"""

from __future__ import annotations

import re
from collections import Counter

from .synthetic import CATEGORIES, COLOR_NAMES, PATTERNS, POSITION_PHRASES, RELATION_PHRASES, SIZE_WORDS

PARTS = ("size", "color", "pattern", "shape", "position", "relation", "neighbour")


def _first(words: list[str], vocabulary) -> tuple[str | None, int]:
    for i, w in enumerate(words):
        if w in vocabulary:
            return w, i
    return None, -1


def caption_parts(caption: str) -> dict:
    """Parts named by a caption (None where it names none)."""
    text = " ".join(str(caption).lower().split())
    words = text.split()
    parts: dict = {}
    parts["size"], _ = _first(words, SIZE_WORDS)
    parts["color"], _ = _first(words, COLOR_NAMES)
    parts["pattern"], _ = _first(words, PATTERNS)
    parts["shape"], _ = _first(words, CATEGORIES)
    parts["position"] = next((k for k, p in sorted(POSITION_PHRASES.items(), key=lambda kv: -len(kv[1]))
                              if re.search(rf"\b{re.escape(p)}\b", text)), None)
    relation, after = None, None
    for key, phrase in sorted(RELATION_PHRASES.items(), key=lambda kv: -len(kv[1])):
        m = re.search(rf"\b{re.escape(phrase)}\b", text)
        if m:
            relation, after = key, text[m.end():].split()
            break
    parts["relation"] = relation
    neighbour = None
    if after:
        colour, ci = _first(after, COLOR_NAMES)
        shape, si = _first(after, CATEGORIES)
        if colour and shape and ci < si:
            neighbour = f"{colour} {shape}"
    parts["neighbour"] = neighbour
    return parts


def part_accuracy(predicted_captions: list[str], truth_parts: list[dict]) -> dict:
    """Fraction of regions whose caption names each ground-truth part correctly."""
    if len(predicted_captions) != len(truth_parts):
        raise ValueError(f"{len(predicted_captions)} captions for {len(truth_parts)} regions")
    hits = Counter()
    for caption, truth in zip(predicted_captions, truth_parts):
        got = caption_parts(caption)
        for part in PARTS:
            hits[part] += got[part] == truth.get(part)
    n = max(1, len(truth_parts))
    return {part: hits[part] / n for part in PARTS}


def majority_baseline(truth_parts: list[dict]) -> dict:
    """Accuracy of always answering each part's most frequent value."""
    n = max(1, len(truth_parts))
    return {part: Counter(t.get(part) for t in truth_parts).most_common(1)[0][1] / n if truth_parts else 0.0
            for part in PARTS}
