"""The DynRefer network (tiny config): build, train, predict, save/load, configs, sizes."""

from __future__ import annotations

import json

import pytest
import torch

import dynrefer
from dynrefer.model.config import ConfigError, DynReferConfig, LanguageConfig, mid_config, official_config, tiny_config
from dynrefer.model.heads.language import LanguageHead

TAGS = ["red", "circle", "square", "blue", "dotted", "left"]


def make_batch(regions: int = 4, views: int = 3, size: int = 64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    boxes = torch.tensor([[8.0, 8.0, 40.0, 40.0], [0.0, 0.0, 64.0, 64.0], [20.5, 3.2, 30.7, 60.0]])
    return {
        "pixels": torch.randn(regions * views, 3, size, size, generator=g),
        "boxes_in_view": boxes[torch.arange(regions * views) % 3],
        "captions": ["a red circle", "the blue square", "a dotted circle left of a square", "red"][:regions],
        "controls": ["red,circle|", "|", "dotted|", "|"][:regions],
        "tags": [["red", "circle"], ["blue", "square"], ["dotted", "circle", "left"], ["red"]][:regions],
    }


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return dynrefer.DynRefer(tiny_config(), tags=TAGS)


def trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def test_training_decreases_loss_and_every_part_learns():
    torch.manual_seed(1)
    model = dynrefer.DynRefer(tiny_config(), tags=TAGS)
    batch = make_batch()
    params = trainable(model)
    assert not any(p.requires_grad for p in model.encoder.parameters()), "the CLIP towers must be frozen"
    opt = torch.optim.AdamW(params.values(), lr=2e-3)
    losses, ever_nonzero = [], set()
    zero_at_step0 = set()
    for step in range(6):
        out = model(batch)
        assert set(out) == {"loss", "loss_lm", "loss_tag", "loss_contrastive"}
        opt.zero_grad()
        out["loss"].backward()
        for name, p in params.items():
            nonzero = p.grad is not None and bool(p.grad.abs().sum() > 0)
            if nonzero and step < 3:
                ever_nonzero.add(name)
            if step == 0 and not nonzero:
                zero_at_step0.add(name)
        assert all(p.grad is None for p in model.encoder.parameters())
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0] * 0.9, losses
    # Within 3 optimiser steps every trainable tensor gets a non-zero gradient, except the
    # padding rows of DCNv4's packed offset_mask, which are never read (checked row-wise).
    missing = sorted(set(params) - ever_nonzero)
    assert missing == [], missing
    # At step 0 the zero-initialised offset/modulation layer makes the alignment output exactly 0,
    # so the parts behind it (value projection, the depthwise offset conv, output_proj.weight)
    # receive exactly zero gradient.
    assert {"align.value_proj.weight", "align.offset_mask_dw.weight", "align.output_proj.weight"} <= zero_at_step0
    assert "align.offset_mask.weight" not in zero_at_step0


def test_alignment_contributes_zero_at_init(tiny):
    batch = make_batch()
    tiny.eval()
    region = tiny.encode_regions(batch["pixels"], batch["boxes_in_view"])
    assert region.shape == (4, 8, 64)
    # Replacing the extra views' pixels changes nothing except through their CLS tokens; with the
    # alignment output exactly 0 at init, the patch tokens of views 1..n-1 are all zero.
    cls, patches = tiny.encoder(batch["pixels"])
    tokens = tiny.roi(cls, patches, batch["boxes_in_view"]).reshape(4, 3, -1, 64)
    h = tiny.roi.output_size
    grid = tokens[:, :, 1:].reshape(4, 3, h, h, -1).permute(0, 1, 4, 2, 3)
    aligned = tiny.align(grid[:, 1:].reshape(8, 64, h, h), grid[:, 0].repeat_interleave(2, dim=0))
    assert torch.count_nonzero(aligned) == 0


def test_predict_outputs(tiny):
    tiny.eval()
    batch = make_batch()
    region = tiny.encode_regions(batch["pixels"], batch["boxes_in_view"])
    tags = tiny.predict_tags(region, threshold=0.0)
    assert len(tags) == 4 and all(len(t) == len(TAGS) for t in tags)
    assert all(t[i][1] >= t[i + 1][1] for t in tags for i in range(len(t) - 1))
    captions, scores = tiny.caption(region, [["red"], [], ["dotted", "circle"], []])
    assert len(captions) == 4 and all(isinstance(c, str) for c in captions)
    assert all(0.0 <= s <= 1.0 for s in scores)
    logits = tiny.score_texts(region, ["the red circle", "the blue square", "the dotted star"])
    assert logits.shape == (4, 3)


def test_contrastive_cached_scoring_equals_direct(tiny):
    tiny.eval()
    batch = make_batch()
    region = tiny.encode_regions(batch["pixels"], batch["boxes_in_view"])
    vocab = [f"the {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "square", "star")]
    cached = tiny.score_texts(region, vocab)
    assert tuple(vocab) in tiny._text_cache
    again = tiny.score_texts(region, vocab)
    assert torch.equal(cached, again)
    head = tiny.contrastive_head
    text = head.text_proj(tiny.embed_texts(vocab))
    memory = head.region_proj(region)
    direct = torch.stack([head._head(head.decoder(text[None].expand(4, -1, -1), memory))[r] for r in range(4)])
    assert torch.allclose(cached, direct, atol=1e-5)
    # Chunking the vocabulary gives the same scores: queries are independent.
    chunked = head(region, tiny.embed_texts(vocab), chunk=2)
    assert torch.allclose(cached, chunked, atol=1e-5)
    # Two vocabularies scored in one pass (predict: attributes and categories), each cached on its own.
    other = ["the red", "the star"]
    both = tiny.score_texts(region, [vocab, other])
    assert both.shape == (4, len(vocab) + 2) and tuple(other) in tiny._text_cache
    assert torch.allclose(both[:, : len(vocab)], cached, atol=1e-5)
    assert torch.allclose(both[:, len(vocab) :], tiny.score_texts(region, other), atol=1e-5)
    import numpy as np

    assert torch.equal(tiny.score_texts(region, np.array(other)), tiny.score_texts(region, other))  # any sequence


def test_siglip_loss_official_normalisation(tiny):
    head = tiny.contrastive_head
    region = torch.randn(3, 8, 64)
    texts = torch.randn(3, head.text_proj.in_features)
    logits = head(region, texts)
    labels = 2 * torch.eye(3) - 1
    expected = -torch.nn.functional.logsigmoid(labels * logits).sum() / 3
    assert torch.allclose(head.loss(region, texts), expected, atol=1e-5)


def test_save_load_round_trip(tiny, tmp_path):
    tiny.eval()
    batch = make_batch()
    tiny.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {"config.json", "model.safetensors", "tags.txt", "tokenizer"}
    loaded = dynrefer.DynRefer.from_pretrained(tmp_path / "m").eval()
    r1 = tiny.encode_regions(batch["pixels"], batch["boxes_in_view"])
    r2 = loaded.encode_regions(batch["pixels"], batch["boxes_in_view"])
    assert torch.equal(r1, r2)
    assert loaded.tag_names == TAGS
    assert tiny.caption(r1, [["red"]] * 4) == loaded.caption(r2, [["red"]] * 4)
    assert tiny.predict_tags(r1, 0.0) == loaded.predict_tags(r2, 0.0)


def test_load_reports_bad_tensors(tiny, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    folder = tiny.save_pretrained(tmp_path / "m")
    state = load_file(str(folder / "model.safetensors"))
    with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
        metadata = fh.metadata()
    state.pop("fusion.fc1.weight")
    state["bogus.weight"] = torch.zeros(2)
    state["fusion.fc2.bias"] = torch.zeros(3)
    save_file(state, str(folder / "model.safetensors"), metadata=metadata)
    with pytest.raises(dynrefer.errors.InputError) as info:
        dynrefer.DynRefer.from_pretrained(folder)
    msg = str(info.value)
    assert "missing (1): fusion.fc1.weight" in msg
    assert "unexpected (1): bogus.weight" in msg
    assert "fusion.fc2.bias (3,) != (64,)" in msg


def test_causal_language_head_generates():
    cfg = LanguageConfig(kind="causal", model_config={
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 128, "max_position_embeddings": 128})
    torch.manual_seed(0)
    head = LanguageHead(cfg, region_dim=32)
    region = torch.randn(3, 8, 32)
    loss = head.loss(region, ["red|", "|", "a,b|"], ["a red thing", "blue", "the big square"])
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert head.proj.weight.grad is not None and head.control_vector.grad is not None
    captions, scores = head.generate(region, ["red|", "|", "a,b|"], max_new_tokens=5)
    assert len(captions) == 3 and len(scores) == 3 and all(0 <= s <= 1 for s in scores)


def test_seq2seq_lora_freezes_base():
    cfg = tiny_config().language
    cfg.frozen = True
    cfg.lora_r = 4
    head = LanguageHead(cfg, region_dim=16)
    names = [n for n, p in head.lm.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)


def test_config_round_trip_and_errors(tmp_path):
    for fn in (tiny_config, mid_config, official_config):
        cfg = fn()
        assert DynReferConfig.from_dict(json.loads(cfg.to_json())) == cfg
        cfg.to_yaml(tmp_path / "c.yaml")
        assert DynReferConfig.from_file(tmp_path / "c.yaml") == cfg
        assert DynReferConfig.from_name(cfg.name) == cfg
    with pytest.raises(ConfigError, match="encoder.drop_last_blocks: expected int, got str"):
        DynReferConfig.from_dict({"encoder": {"drop_last_blocks": "1"}})
    with pytest.raises(ConfigError, match=r"unknown config key\(s\): qformer.layers"):
        DynReferConfig.from_dict({"qformer": {"layers": 3}})
    with pytest.raises(ConfigError, match="views: expected a mapping"):
        DynReferConfig.from_dict({"views": 3})
    with pytest.raises(ConfigError, match="unknown model config 'huge'"):
        DynReferConfig.from_name("huge")


def test_shipped_config_files_equal_named_configs():
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "configs" / "model"
    for name in ("tiny", "mid", "official", "builtin"):
        assert DynReferConfig.from_file(folder / f"{name}.yaml") == DynReferConfig.from_name(name)
        assert DynReferConfig.from_name(str(folder / f"{name}.yaml")) == DynReferConfig.from_name(name)


def test_blip2_language_projection_is_loaded(tmp_path):
    from safetensors.torch import save_file

    cfg = tiny_config()
    torch.manual_seed(0)
    base = dynrefer.DynRefer(cfg)
    state = {f"qformer.{k}": v.clone() for k, v in base.qformer.qformer.state_dict().items()}
    state["query_tokens"] = torch.zeros(1, 8, 64)
    state["language_projection.weight"] = torch.full((64, 64), 0.25)
    state["language_projection.bias"] = torch.full((64,), -1.0)
    save_file(state, str(tmp_path / "blip2.safetensors"))
    cfg.qformer.init_from = str(tmp_path / "blip2.safetensors")
    model = dynrefer.DynRefer(cfg)
    assert torch.equal(model.language_head.proj.weight, torch.full((64, 64), 0.25))
    assert torch.equal(model.language_head.proj.bias, torch.full((64,), -1.0))


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", ["mid", "official"])
def test_large_configs_build_on_meta(name):
    cfg = DynReferConfig.from_name(name)
    with torch.device("meta"):
        model = dynrefer.DynRefer(cfg, tags=[f"tag{i}" for i in range(4585)])
    c = model.encoder.width
    n = cfg.views.num_views
    assert model.fusion.fc1.weight.device.type == "meta"
    assert _count(model.fusion) == (c * n * c + c) + (c * c + c)
    k, groups = cfg.align.kernel_size, cfg.align.groups
    packed = -(-3 * groups * k * k // 8) * 8
    assert _count(model.align) == 2 * (c * c + c) + (c * 2 * 9 + c) + (packed * c + packed)
    h, layers, inter = cfg.qformer.hidden_size, cfg.qformer.num_hidden_layers, cfg.qformer.intermediate_size
    per_layer = 4 * (h * h + h) + 2 * h + (h * inter + inter) + (inter * h + h) + 2 * h
    cross = h * h + h + 2 * (c * h + h) + h * h + h + 2 * h
    expected_q = layers * per_layer + (layers // cfg.qformer.cross_attention_frequency) * cross + 2 * h
    assert _count(model.qformer.qformer) == expected_q
    if name == "official":
        assert (c, model.encoder.patch_size) == (1408, 14)
        assert len(model.encoder.visual.trunk.blocks) == 39
        assert 0.98e9 < _count(model.encoder.visual) < 1.0e9  # EVA-CLIP-g/14 minus its last block
        assert 2.7e9 < _count(model.language_head.lm) < 2.9e9  # Flan-T5-XL
        assert model.language_head.proj.weight.shape == (2048, 768)
    else:
        assert (c, model.encoder.patch_size) == (768, 16)
        assert 85e6 < _count(model.encoder.visual) < 87e6  # ViT-B/16
        assert 2.2e8 < _count(model.language_head.lm) < 2.3e8  # t5-base sized
    assert model.tag_embeddings.shape == (4585, model.tag_head.text_proj.in_features)


def test_save_frozen_towers_in_float16(tiny, tmp_path):
    import os

    tiny.eval()
    full = tiny.save_pretrained(tmp_path / "fp32")
    half = tiny.save_pretrained(tmp_path / "fp16", frozen_dtype="float16")
    assert os.path.getsize(half / "model.safetensors") < 0.75 * os.path.getsize(full / "model.safetensors")
    loaded = dynrefer.DynRefer.from_pretrained(half).eval()
    enc = loaded.encoder.clip.visual.transformer.resblocks[0].attn.in_proj_weight
    assert enc.dtype == torch.float32
    assert torch.equal(enc, tiny.encoder.clip.visual.transformer.resblocks[0].attn.in_proj_weight.half().float())
    # Trainable parts are stored exactly.
    assert torch.equal(loaded.fusion.fc1.weight, tiny.fusion.fc1.weight)
    batch = make_batch()
    r1 = tiny.encode_regions(batch["pixels"], batch["boxes_in_view"])
    r2 = loaded.encode_regions(batch["pixels"], batch["boxes_in_view"])
    assert torch.allclose(r1, r2, atol=5e-2)
    with pytest.raises(dynrefer.errors.InputError, match="frozen_dtype"):
        tiny.save_pretrained(tmp_path / "x", frozen_dtype="int8")
