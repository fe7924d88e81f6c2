"""Short 'the {attributes} {category}' texts for the contrastive head (training option)."""

from __future__ import annotations

import random

import pytest
import torch

from dynrefer.errors import InputError
from dynrefer.model.config import DynReferConfig
from dynrefer.model.dynrefer import DynRefer
from dynrefer.train.data import RegionDataset, short_description

SPEC = {"category": "star", "attributes": ["color:red", "pattern:dotted", "size:small"]}


def test_short_description_uses_only_annotated_words():
    rng = random.Random(0)
    texts = {short_description(SPEC, rng) for _ in range(400)}
    assert {"the star", "the red star", "the red object", "the small dotted red star"} <= texts
    for text in texts:
        words = text.split()
        assert words[0] == "the" and words[-1] in ("star", "object")
        assert set(words[1:-1]) <= {"red", "dotted", "small"} and len(set(words)) == len(words)
        assert words[-1] == "star" or len(words) > 2  # "the object" alone would say nothing
    assert short_description({}, rng) is None
    assert short_description({"attributes": ["color:navy/dark blue"]}, random.Random(1)) in (
        "the navy object", "the dark blue object")


def one_region_file(folder, caption: str, attributes: list[str]) -> None:
    """``folder/d.jsonl``: one 32-px grey image with one "star" region."""
    import json

    from PIL import Image

    Image.new("RGB", (32, 32), (90, 90, 90)).save(folder / "a.png")
    region = {"id": 0, "box": [4, 4, 20, 20], "captions": [caption], "category": "star", "attributes": attributes}
    (folder / "d.jsonl").write_text(json.dumps({"image": "a.png", "width": 32, "height": 32, "regions": [region]})
                                    + "\n")


def test_dataset_short_text_prob(tmp_path):
    one_region_file(tmp_path, "a long red caption", ["color:red"])
    random.seed(0)
    never = RegionDataset(tmp_path / "d.jsonl", size=32, short_text_prob=0.0)
    assert all(never[0]["contrastive_text"] == "a long red caption" for _ in range(20))
    always = RegionDataset(tmp_path / "d.jsonl", size=32, short_text_prob=1.0)
    texts = {always[0]["contrastive_text"] for _ in range(40)}
    assert texts <= {"the star", "the red star", "the red object"} and len(texts) >= 2
    assert always[0]["caption"] == "a long red caption"  # the language head keeps the caption
    evaluation = RegionDataset(tmp_path / "d.jsonl", size=32, short_text_prob=1.0, train=False)
    assert evaluation[0]["contrastive_text"] == "a long red caption"
    with pytest.raises(InputError, match="short_text_prob"):
        RegionDataset(tmp_path / "d.jsonl", size=32, short_text_prob=1.5)


def test_dataset_short_text_skip(tmp_path):
    """Attribute prefixes in ``short_text_skip`` are never named; the region's facts keep them."""
    one_region_file(tmp_path, "a caption", ["color:red", "position:top left"])
    random.seed(0)
    every = RegionDataset(tmp_path / "d.jsonl", size=32, short_text_prob=1.0)
    assert any("top left" in every[0]["contrastive_text"] for _ in range(40))
    skip = RegionDataset(tmp_path / "d.jsonl", size=32, short_text_prob=1.0, short_text_skip=["position:"])
    samples = [skip[0] for _ in range(40)]
    assert {s["contrastive_text"] for s in samples} == {"the star", "the red star", "the red object"}
    assert samples[0]["region_facts"] == ("star", frozenset({"red", "top left"}))
    with pytest.raises(InputError, match="short_text_skip"):
        RegionDataset(tmp_path / "d.jsonl", size=32, short_text_skip="position:")


def test_forward_pairs_contrastive_head_with_contrastive_texts():
    torch.manual_seed(0)
    model = DynRefer(DynReferConfig.from_name("tiny"), tags=["red"]).eval()
    n, s = model.config.views.num_views, model.config.views.size
    batch = {"pixels": torch.randn(2 * n, 3, s, s), "boxes_in_view": torch.tensor([[2.0, 2.0, 20.0, 20.0]] * (2 * n)),
             "captions": ["a red star", "a blue circle"], "tags": [["red"], []]}
    plain = model(batch)["loss_contrastive"]
    same = model({**batch, "contrastive_texts": ["a red star", "a blue circle"]})["loss_contrastive"]
    other = model({**batch, "contrastive_texts": ["the star", "the circle"]})["loss_contrastive"]
    assert torch.equal(plain, same)
    assert not torch.allclose(plain, other)
    region = model.encode_regions(batch["pixels"], batch["boxes_in_view"])
    expected = model.config.contrastive.loss_weight * model.contrastive_head.loss(
        region, model.embed_texts(["the star", "the circle"]))
    torch.testing.assert_close(other, expected)


def test_base_t_views_for_the_whole_image_arm():
    from dynrefer.view_selection import select_views

    image = torch.zeros((3, 40, 60), dtype=torch.uint8)
    box = [[10.0, 5.0, 30.0, 25.0]]
    whole = select_views(image, box, num_views=1, policy="fixed", ts=[], size=16, base_t=1.0, render=False)[0]
    assert whole.ts == [1.0] and whole.geometry.crops.tolist() == [[0, 0, 60, 40]]
    np_box = whole.geometry.box_in_view[0].tolist()
    assert np_box == pytest.approx([10 * 16 / 60, 5 * 16 / 40, 30 * 16 / 60, 25 * 16 / 40])
    rand = select_views(image, box, num_views=3, policy="random", size=16, base_t=1.0, render=False,
                        generator=torch.Generator().manual_seed(0))[0]
    assert rand.ts[0] == 1.0 and len(rand.ts) == 3
    with pytest.raises(ValueError, match="base_t"):
        select_views(image, box, num_views=3, policy="greedy", size=16, base_t=1.0)
    with pytest.raises(ValueError, match="base_t"):
        select_views(image, box, num_views=1, policy="fixed", ts=[], size=16, base_t=1.5)


def test_positives_mark_every_region_a_short_text_is_true_of():
    from dynrefer.train.data import contrastive_positives, describes, region_facts

    red_star = region_facts({"category": "star", "attributes": ["color:red", "pattern:dotted"]})
    red_ring = region_facts({"category": "ring", "attributes": ["color:red/crimson"]})
    blue_star = region_facts({"category": "star", "attributes": ["color:blue"]})
    assert describes((None, ("crimson",)), red_ring) and describes(("star", ()), blue_star)
    assert not describes(("star", ("red",)), blue_star) and not describes((None, ("dotted",)), red_ring)
    samples = [
        {"text_facts": (None, ("red",)), "region_facts": red_star},  # "the red object"
        {"text_facts": None, "region_facts": red_ring},  # a caption: only its own region
        {"text_facts": ("star", ()), "region_facts": blue_star},  # "the star"
    ]
    expected = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    assert torch.equal(contrastive_positives(samples), expected)


def test_contrastive_loss_with_positives_equals_pairwise_reference():
    torch.manual_seed(0)
    model = DynRefer(DynReferConfig.from_name("tiny"), tags=["red"]).eval()
    head = model.contrastive_head
    region = torch.randn(4, model.config.qformer.num_query_tokens, model.config.qformer.hidden_size)
    texts = torch.randn(4, model.tag_embeddings.shape[1])
    positives = torch.eye(4, dtype=torch.bool)
    positives[0, 2] = positives[3, 1] = True
    logits = head(region, texts)
    reference = 0.0
    for i in range(4):
        for j in range(4):
            label = 1.0 if positives[i, j] else -1.0
            reference -= torch.nn.functional.logsigmoid(label * logits[i, j])
    torch.testing.assert_close(head.loss(region, texts, positives=positives), reference / 4)
    plain = head.loss(region, texts)
    assert not torch.allclose(plain, reference / 4)
    torch.testing.assert_close(head.loss(region, texts, positives=torch.eye(4, dtype=torch.bool)), plain)
    with pytest.raises(ValueError, match="positives"):
        head.loss(region, texts, positives=torch.eye(3, dtype=torch.bool))


def test_attribute_synonyms():
    from dynrefer.train.data import attribute_synonyms

    assert attribute_synonyms("color:red/crimson") == ["red", "crimson"]
    assert attribute_synonyms("striped") == ["striped"]
    assert attribute_synonyms("texture:a:b") == ["a:b"]  # only the first colon separates the type
    assert attribute_synonyms("color:") == [] and attribute_synonyms("color:/red") == ["red"]
