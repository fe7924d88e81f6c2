"""Reading generated captions back into their parts; part accuracy and majority baselines."""

from __future__ import annotations

import pytest
from dynrefer_builtin.scene_eval import PARTS, caption_parts, majority_baseline, part_accuracy
from dynrefer_builtin.synthetic import generate_scene


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


def test_probe_variants_change_exactly_one_part():
    from dynrefer_builtin.scene_benchmark import PROBE_PARTS, variants

    checked = 0
    for index in range(20):
        _, record = generate_scene(5, index)
        for region in record["regions"]:
            caption, truth = region["captions"][0], {k: region["parts"][k] for k in PARTS}
            for part in PROBE_PARTS:
                values, rewritten = variants(caption, region["parts"], part)
                assert rewritten[values.index(truth[part])] == caption
                for value, text in zip(values, rewritten):
                    assert caption_parts(text) == {**truth, part: value}, (text, part, value)
                    checked += 1
    assert checked > 1000


def test_probe_likelihood_equals_the_language_loss_and_probe_runs(tmp_path):
    """caption_log_likelihood (batched, summed) == -(mean token loss) x tokens of the head's own loss,
    one caption at a time; then the probe end to end on three generated scenes with the built-in model."""
    import torch
    from dynrefer_builtin.scene_benchmark import caption_log_likelihood, probe
    from dynrefer_builtin.synthetic import generate_dataset

    from dynrefer.inference.predictor import Predictor

    model = Predictor("builtin").model
    head = model.language_head
    torch.manual_seed(0)
    region = torch.randn(3, model.config.qformer.num_query_tokens, model.config.qformer.hidden_size)
    captions = ["the small dotted red star in the top left", "a large blue ring above a green square", "the red circle"]
    got = caption_log_likelihood(head, region, captions)
    for i, caption in enumerate(captions):
        with torch.no_grad():
            loss = head.loss(region[i:i + 1], ["|"], [caption])
        tokens = len(head.tokenizer(caption)["input_ids"])  # with the end-of-sequence token
        assert float(got[i]) == pytest.approx(-float(loss) * tokens, rel=1e-4)
    generate_dataset(tmp_path / "scenes", 3, 7, workers=1, splits="0,1,0", progress=False)
    report = probe(model, tmp_path / "scenes" / "scenes.jsonl", split="val", max_images=3)
    assert report["images"] == 3 and report["regions"] >= 6
    assert set(report["known"]) == {"position", "size", "pattern"}
    assert all(0 <= v <= 100 for v in [*report["known"].values(), *report["majority"].values()])


def test_probe_likelihood_equals_the_language_loss_for_a_causal_lm():
    import torch
    from dynrefer_builtin.scene_benchmark import caption_log_likelihood

    from dynrefer.model.config import LanguageConfig
    from dynrefer.model.heads.language import LanguageHead

    cfg = LanguageConfig(kind="causal", model_config={
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 128, "max_position_embeddings": 128})
    torch.manual_seed(0)
    head = LanguageHead(cfg, region_dim=32).eval()
    region = torch.randn(3, 8, 32)
    captions = ["a red thing", "blue", "the big square"]
    got = caption_log_likelihood(head, region, captions)
    for i, caption in enumerate(captions):
        with torch.no_grad():
            loss = head.loss(region[i:i + 1], ["|"], [caption])
        tokens = len(head.tokenizer(caption)["input_ids"])
        assert float(got[i]) == pytest.approx(-float(loss) * tokens, rel=1e-4)
