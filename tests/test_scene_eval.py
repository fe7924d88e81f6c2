"""Reading generated captions back into their parts; part accuracy and majority baselines."""

from __future__ import annotations

import pytest

from dynrefer.data.scene_eval import PARTS, caption_parts, majority_baseline, part_accuracy
from dynrefer.data.synthetic import generate_scene


def test_every_generated_caption_parses_back_to_its_parts():
    checked = 0
    for index in range(60):
        _, record = generate_scene(11, index)
        for region in record["regions"]:
            truth = {k: region["parts"][k] for k in PARTS}
            for caption in region["captions"]:
                assert caption_parts(caption) == truth, (caption, truth)
                checked += 1
    assert checked > 400


def test_part_accuracy_and_baseline():
    truth = [{"size": "small", "color": "red", "pattern": "dotted", "shape": "star", "position": "top left",
              "relation": "left of", "neighbour": "blue circle"},
             {"size": "large", "color": "red", "pattern": "solid", "shape": "ring", "position": "center",
              "relation": "above", "neighbour": "green square"}]
    captions = ["the small dotted red star in the top left to the left of the large blue circle",
                "a large striped blue ring above a small green square in the center"]
    acc = part_accuracy(captions, truth)
    assert acc == {"size": 1.0, "color": 0.5, "pattern": 0.5, "shape": 1.0, "position": 1.0, "relation": 1.0,
                   "neighbour": 1.0}
    assert caption_parts("a blue thing")["shape"] is None and caption_parts("")["relation"] is None
    assert majority_baseline(truth)["color"] == 1.0 and majority_baseline(truth)["shape"] == 0.5
    with pytest.raises(ValueError):
        part_accuracy(captions[:1], truth)
