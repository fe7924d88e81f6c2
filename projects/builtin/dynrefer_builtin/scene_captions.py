"""Annotations of the synthetic scenes: boxes, attributes, parts, captions and tags (see
:mod:`dynrefer_builtin.synthetic`, which documents the caption grammar)."""

from __future__ import annotations

import math

import numpy as np

from dynrefer.prepare.tags import simple_tags
from dynrefer.records import normalize_caption

from .scene_shapes import CATEGORIES, COLOR_NAMES, PATTERNS, SS

SIZES = ("small", "medium", "large")
RELATIVE_MARGIN = 1.15
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
POSITION_PHRASES = {
    "top left": "in the top left", "top": "at the top", "top right": "in the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left", "bottom": "at the bottom", "bottom right": "in the bottom right",
}  # fmt: skip
RELATIONS = ("left of", "right of", "above", "below")
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
SIZE_WORDS = SIZES + ("largest", "smallest")


def _position(cx: float, cy: float, size: int) -> str:
    col = min(2, int(3 * cx / size))
    row = min(2, int(3 * cy / size))
    return POSITIONS[3 * row + col]


def _relation(dx: float, dy: float) -> str:
    """Where the object is relative to a neighbour displaced by ``(dx, dy)`` from it."""
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def annotate(objects: list[dict], size: int) -> list[dict]:
    """SPEC §5 regions of placed objects (drawing order = ids): the tight box of each object's
    visible supersampled pixels, attributes, caption parts, two captions and their tags."""
    boxes, centres = [], []
    for o in objects:
        vis = o["visible"]
        rows, cols = np.flatnonzero(vis.any(axis=1)), np.flatnonzero(vis.any(axis=0))
        box = [(o["x0"] + cols[0]) / SS, (o["y0"] + rows[0]) / SS, (o["x0"] + cols[-1] + 1) / SS,
               (o["y0"] + rows[-1] + 1) / SS]  # fmt: skip
        boxes.append([float(v) for v in box])
        centres.append(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
    diam = np.array([o["diameter"] for o in objects])
    order = np.sort(diam)
    regions = []
    for i, o in enumerate(objects):
        size_word = o["size"]
        if diam[i] == order[-1] and diam[i] >= RELATIVE_MARGIN * order[-2]:
            size_word = "largest"
        elif diam[i] == order[0] and diam[i] * RELATIVE_MARGIN <= order[1]:
            size_word = "smallest"
        cx, cy = centres[i]
        dists = [math.hypot(c[0] - cx, c[1] - cy) if j != i else math.inf for j, c in enumerate(centres)]
        j = int(np.argmin(dists))
        nb = objects[j]
        relation = _relation(centres[j][0] - cx, centres[j][1] - cy)
        position = _position(cx, cy, size)
        desc = f"{o['pattern']} {o['color']} {o['category']}"
        nb_desc = f"{nb['size']} {nb['color']} {nb['category']}"
        det = "the" if size_word in ("largest", "smallest") else "a"
        captions = [
            f"the {size_word} {desc} {POSITION_PHRASES[position]} {RELATION_PHRASES[relation]} the {nb_desc}",
            f"{det} {size_word} {desc} {RELATION_PHRASES[relation]} a {nb_desc} {POSITION_PHRASES[position]}",
        ]
        captions = [normalize_caption(c) for c in captions]
        tags: list[str] = []
        for c in captions:
            tags.extend(t for t in simple_tags(c) if t not in tags)
        positive = [f"color:{o['color']}", f"pattern:{o['pattern']}", f"size:{o['size']}", f"position:{position}"]
        negative = [f"color:{c}" for c in COLOR_NAMES if c != o["color"]]
        negative += [f"pattern:{p}" for p in PATTERNS if p != o["pattern"]]
        negative += [f"size:{s}" for s in SIZES if s != o["size"]]
        negative += [f"position:{p}" for p in POSITIONS if p != position]
        regions.append({
            "id": i,
            "box": boxes[i],
            "category": o["category"],
            "attributes": positive,
            "negative_attributes": negative,
            "captions": captions,
            "tags": tags,
            "parts": {
                "size": size_word, "color": o["color"], "pattern": o["pattern"], "shape": o["category"],
                "position": position, "relation": relation, "neighbour": f"{nb['color']} {nb['category']}",
                "neighbour_size": nb["size"], "neighbour_id": j,
            },
            "visible": round(o["count"] / o["full"], 4),
            "diameter": round(o["diameter"], 2),
        })  # fmt: skip
    return regions


def vocabulary() -> dict:
    """Names used by the generator: categories, colours, patterns, sizes, attributes, tags, caption parts."""
    attributes = [f"color:{c}" for c in COLOR_NAMES] + [f"pattern:{p}" for p in PATTERNS]
    attributes += [f"size:{s}" for s in SIZES] + [f"position:{p}" for p in POSITIONS]
    phrases = list(CATEGORIES) + list(COLOR_NAMES) + list(PATTERNS) + list(SIZE_WORDS)
    phrases += list(POSITION_PHRASES.values()) + list(RELATION_PHRASES.values())
    tags = list(dict.fromkeys(t for p in phrases for t in simple_tags(p)))
    return {
        "categories": list(CATEGORIES),
        "colors": list(COLOR_NAMES),
        "patterns": list(PATTERNS),
        "sizes": list(SIZES),
        "size_words": list(SIZE_WORDS),
        "positions": list(POSITIONS),
        "relations": list(RELATIONS),
        "attributes": attributes,
        "tags": tags,
        "caption_parts": ["size", "color", "pattern", "shape", "position", "relation", "neighbour"],
        "templates": [
            "the {size} {pattern} {color} {shape} {position} {relation} the {nsize} {ncolor} {nshape}",
            "{a|the} {size} {pattern} {color} {shape} {relation} a {nsize} {ncolor} {nshape} {position}",
        ],
        "position_phrases": POSITION_PHRASES,
        "relation_phrases": RELATION_PHRASES,
    }
