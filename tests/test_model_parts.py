"""Model parts: encoder options and local weights, Q-Former initialisation, prompts, predict, frozen I/O."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.ops import roi_align

import dynrefer
from dynrefer.errors import InputError
from dynrefer.inference.records import region_records
from dynrefer.model.config import TINY_CLIP, EncoderConfig, QFormerConfig, tiny_config
from dynrefer.model.encoder import FrozenCLIP, build_open_clip
from dynrefer.model.qformer import RegionQFormer
from dynrefer.model.roi import ViewRoIAlign
from dynrefer.model.vocab import attribute_prompts, max_over_prompts


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    torch.manual_seed(3)
    model = build_open_clip(TINY_CLIP)
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_encoder_loads_local_weights_and_matches_open_clip(clip_file):
    path, reference = clip_file
    enc = FrozenCLIP(EncoderConfig(model=TINY_CLIP, weights=str(path)))
    x = torch.randn(2, 3, 64, 64)
    cls, patches = enc(x)
    assert patches.shape == (2, 64, 8, 8) and cls.shape == (2, 64)
    # Same as running the reference tower's blocks by hand, with its final norm (ln_post).
    visual = reference.visual.eval()
    with torch.no_grad():
        tokens = visual.transformer(visual._embeds(x))  # _embeds: patches, CLS, positions, ln_pre
        tokens = visual.ln_post(tokens)
    assert torch.allclose(cls, tokens[:, 0], atol=1e-5)
    assert torch.allclose(patches, tokens[:, 1:].reshape(2, 8, 8, 64).permute(0, 3, 1, 2), atol=1e-5)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training


def test_encoder_drop_last_block_and_extra_norm(clip_file, tmp_path):
    path, reference = clip_file
    ln = torch.nn.LayerNorm(64)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.1, 0.1)
    from safetensors.torch import save_file

    save_file({"vision_model.post_layernorm.weight": ln.weight.detach().clone(),
               "vision_model.post_layernorm.bias": ln.bias.detach().clone()}, str(tmp_path / "ln.safetensors"))
    cfg = EncoderConfig(model=TINY_CLIP, weights=str(path), drop_last_blocks=1, final_norm=False, extra_norm=True,
                        extra_norm_weights=str(tmp_path / "ln.safetensors"))
    enc = FrozenCLIP(cfg)
    assert len(enc.visual.transformer.resblocks) == 1
    x = torch.randn(2, 3, 64, 64)
    cls, patches = enc(x)
    visual = reference.visual.eval()
    with torch.no_grad():
        tokens = visual.transformer.resblocks[0](visual._embeds(x))
        tokens = ln(tokens)
    assert torch.allclose(cls, tokens[:, 0], atol=1e-5)
    assert torch.allclose(patches.flatten(2).transpose(1, 2), tokens[:, 1:], atol=1e-5)


def test_encoder_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        FrozenCLIP(EncoderConfig(model=TINY_CLIP, weights=str(tmp_path / "missing.pt")))
    torch.save({"bogus": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="does not match the model"):
        FrozenCLIP(EncoderConfig(model=TINY_CLIP, weights=str(tmp_path / "bad.pt")))
    with pytest.raises(InputError, match="drop_last_blocks=2"):
        FrozenCLIP(EncoderConfig(model=TINY_CLIP, drop_last_blocks=2))
    with pytest.raises(InputError, match="unknown open_clip model"):
        FrozenCLIP(EncoderConfig(model="NoSuchModel-1"))


def test_roi_carries_cls_and_pools_with_roi_align():
    roi = ViewRoIAlign(output_size=4, patch_size=8, sampling_ratio=2, aligned=False)
    patches = torch.randn(3, 5, 8, 8)
    cls = torch.randn(3, 5)
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [8.0, 16.0, 40.0, 33.5], [3.0, 3.0, 4.0, 4.0]])
    out = roi(cls, patches, boxes)
    assert out.shape == (3, 17, 5)
    assert torch.equal(out[:, 0], cls)
    for i in range(3):
        ref = roi_align(patches[i : i + 1], [boxes[i : i + 1]], 4, spatial_scale=1 / 8, sampling_ratio=2, aligned=False)
        assert torch.allclose(out[i, 1:], ref[0].flatten(1).T, atol=1e-6)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [1, 2, 3])
def test_separable_roi_align_equals_torchvision(aligned, ratio):
    from dynrefer.model.roi import separable_roi_align

    g = torch.Generator().manual_seed(ratio)
    for _ in range(30):
        n, height, width = 6, int(torch.randint(2, 17, (1,), generator=g)), int(torch.randint(2, 17, (1,), generator=g))
        features = torch.randn(n, 3, height, width, generator=g, requires_grad=True)
        size = torch.tensor([width * 8.0, height * 8.0])
        xy = torch.rand(n, 2, generator=g) * size * 1.4 - size * 0.2  # partly and wholly outside too
        wh = torch.rand(n, 2, generator=g) * size * torch.rand(n, 1, generator=g) ** 3  # many tiny boxes
        boxes = torch.cat([xy, xy + wh], 1)
        boxes[0] = torch.tensor([0.0, 0.0, width * 8.0, height * 8.0])  # the whole map: samples at the last row
        boxes[1] = torch.tensor([-8.0, -8.0, 3.0, 3.0])  # samples exactly at -1
        out = separable_roi_align(features, boxes, 4, 1 / 8, ratio, aligned)
        rois = torch.cat([torch.arange(n, dtype=torch.float32)[:, None], boxes], 1)
        ref = roi_align(features, rois, 4, spatial_scale=1 / 8, sampling_ratio=ratio, aligned=aligned)
        assert torch.allclose(out, ref, atol=2e-6), (out - ref).abs().max()
        weights = torch.randn(ref.shape, generator=g)
        (grad,) = torch.autograd.grad((out * weights).sum(), features)
        (grad_ref,) = torch.autograd.grad((ref * weights).sum(), features)
        assert torch.allclose(grad, grad_ref, atol=2e-6)


def test_view_roi_align_separable_path_equals_torchvision_path():
    from dynrefer.model import roi as roi_module

    layer = ViewRoIAlign(output_size=8, patch_size=8, sampling_ratio=2)
    g = torch.Generator().manual_seed(3)
    n = roi_module.SEPARABLE_MIN_MAPS
    patches, cls = torch.randn(n, 16, 8, 8, generator=g), torch.randn(n, 16, generator=g)
    xy = torch.rand(n, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * 30], 1)
    fast = layer(cls, patches, boxes)  # n maps: the separable path
    slow = torch.cat([layer(cls[i : i + 1], patches[i : i + 1], boxes[i : i + 1]) for i in range(n)])  # torchvision
    assert torch.allclose(fast, slow, atol=2e-6)


def test_qformer_from_bert_and_blip2_folders(tmp_path):
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                vocab_size=128, max_position_embeddings=64))
    bert.save_pretrained(tmp_path / "bert")
    cfg = QFormerConfig(num_query_tokens=4, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, vocab_size=128, max_position_embeddings=64,
                        init_from=str(tmp_path / "bert"))
    q = RegionQFormer(cfg, encoder_width=48)
    sd = q.qformer.state_dict()
    bsd = bert.state_dict()
    assert torch.equal(sd["encoder.layer.1.attention.attention.query.weight"],
                       bsd["encoder.layer.1.attention.self.query.weight"])
    assert torch.equal(sd["encoder.layer.0.attention.output.dense.weight"],
                       bsd["encoder.layer.0.attention.output.dense.weight"])
    assert torch.equal(sd["encoder.layer.0.intermediate_query.dense.weight"],
                       bsd["encoder.layer.0.intermediate.dense.weight"])
    assert torch.equal(sd["encoder.layer.0.output_query.LayerNorm.bias"], bsd["encoder.layer.0.output.LayerNorm.bias"])
    assert torch.equal(sd["layernorm.weight"], bsd["embeddings.LayerNorm.weight"])
    assert not q.query_tokens.requires_grad  # official: frozen query tokens
    # A BLIP-2 style file: qformer.* and query_tokens are taken as they are.
    from safetensors.torch import save_file

    blip = {f"qformer.{k}": v.clone() + 1 for k, v in sd.items()}
    blip["query_tokens"] = torch.full((1, 4, 64), 0.5)
    blip["language_projection.weight"] = torch.zeros(8, 64)
    save_file(blip, str(tmp_path / "blip2.safetensors"))
    cfg2 = copy.deepcopy(cfg)
    cfg2.init_from = str(tmp_path / "blip2.safetensors")
    q2 = RegionQFormer(cfg2, encoder_width=48)
    assert torch.equal(q2.qformer.state_dict()["layernorm.weight"], sd["layernorm.weight"] + 1)
    assert torch.equal(q2.query_tokens, torch.full((1, 4, 64), 0.5))
    out = q2(torch.randn(3, 17, 48))
    assert out.shape == (3, 4, 64)


def test_attribute_prompts_ovad_style():
    attrs = [
        {"name": "color:blue/navy", "type": "color", "is_has_att": True},
        {"name": "pattern:dotted", "type": "pattern", "is_has_att": False},
        {"name": "skin tone:dark", "type": "skin tone", "is_has_att": True},
        "material:wooden/wood",
    ]
    prompts, owner = attribute_prompts(attrs, noun="object")
    assert prompts[:4] == ["the blue color object", "the object has blue color", "the navy color object",
                           "the object has navy color"]
    assert prompts[4:6] == ["the dotted object", "the object is dotted"]
    assert prompts[6:8] == ["the dark skin object", "the object has dark skin"]
    assert prompts[8:] == ["the wooden object", "the object is wooden", "the wood object", "the object is wood"]
    assert owner == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 3]
    logits = torch.tensor([[1.0, 5.0, 2.0, 0.0, -1.0, -2.0, 0.5, 0.25, 3.0, 1.0, 4.0, 9.0]])
    assert max_over_prompts(logits, owner, 4).tolist() == [[5.0, -1.0, 0.5, 9.0]]


def test_predict_all_tasks():
    torch.manual_seed(0)
    model = dynrefer.DynRefer(tiny_config(), tags=["red", "circle"]).eval()
    batch = {"pixels": torch.randn(6, 3, 64, 64), "boxes_in_view": torch.tensor([[4.0, 4.0, 30.0, 50.0]]).repeat(6, 1)}
    tensors = model.predict(batch, attributes=["color:red", "color:blue/navy"],
                            categories=["circle", "square", "star"], tag_threshold=0.0, max_new_tokens=4)
    # the model returns tensors (typed outputs); records are built from them
    assert len(tensors) == 2 and tensors.tag_probs.shape == (2, 2) and tensors.attribute_scores.shape == (2, 2)
    assert tensors.category_scores.shape == tensors.category_logits.shape == (2, 3)
    assert tensors.caption_scores.shape == (2,) and len(tensors.captions) == len(tensors.controls) == 2
    torch.testing.assert_close(tensors.category_scores, torch.softmax(tensors.category_logits, 1))
    out = region_records(tensors)
    assert len(out) == 2
    for o in out:
        assert set(o) == {"caption", "caption_score", "tags", "attributes", "category", "categories"}
        assert ([a[0] for a in o["attributes"]]
                and sorted(a[0] for a in o["attributes"]) == ["color:blue/navy", "color:red"])
        assert o["category"][0] == o["categories"][0][0]
        assert abs(sum(p for _, p in o["categories"]) - 1) < 1e-5
        assert len(o["tags"]) == 2
    none = region_records(model.predict(batch, tasks=("category",), categories=["circle", "square"],
                                        none_threshold=1e9))
    assert none[0]["category"] is None and len(none[0]["categories"]) == 2
    # a task with nothing to score (an empty vocabulary) still gives one record per region
    empty = model.predict(batch, tasks=("attributes", "category"))
    assert len(empty) == 2 and region_records(empty) == [{}, {}]
    with pytest.raises(ValueError, match="unknown task"):
        model.predict(batch, tasks=("color",))


def test_save_frozen_by_reference(clip_file, tmp_path):
    path, _ = clip_file
    cfg = tiny_config()
    cfg.encoder.weights = str(path)
    torch.manual_seed(0)
    model = dynrefer.DynRefer(cfg, tags=["a"]).eval()
    folder = model.save_pretrained(tmp_path / "m", include_frozen=False)
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
        assert not any(k.startswith("encoder.") for k in fh.keys())
    loaded = dynrefer.DynRefer.from_pretrained(folder).eval()
    x = torch.randn(3, 3, 64, 64)
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0]]).repeat(3, 1)
    assert torch.equal(model.encode_regions(x, boxes), loaded.encode_regions(x, boxes))
    # The referenced file moved: a clear error, and encoder_path points it elsewhere.
    moved = tmp_path / "moved.pt"
    moved.write_bytes(path.read_bytes())
    cfg_text = (folder / "config.json").read_text().replace(str(path), str(tmp_path / "gone.pt"))
    (folder / "config.json").write_text(cfg_text)
    with pytest.raises(InputError, match="pass encoder_path"):
        dynrefer.DynRefer.from_pretrained(folder)
    again = dynrefer.DynRefer.from_pretrained(folder, encoder_path=moved).eval()
    assert torch.equal(model.encode_regions(x, boxes), again.encode_regions(x, boxes))
    tampered = tmp_path / "tampered.pt"
    state = torch.load(path, weights_only=True)
    state["visual.proj"] = state["visual.proj"] + 1
    torch.save(state, tampered)
    with pytest.raises(InputError, match="does not match the saved sha256"):
        dynrefer.DynRefer.from_pretrained(folder, encoder_path=tampered)


def test_calibrate_none_threshold():
    from dynrefer.model.vocab import calibrate_none_threshold

    known = torch.arange(1.0, 101.0)  # 1..100
    assert calibrate_none_threshold(known, keep=0.9) == pytest.approx(10.9)
    # Unknown regions score 1..10: the best threshold keeping >= 90 % of the known ones is 11.
    assert calibrate_none_threshold(known, torch.arange(1.0, 11.0), keep=0.9) == 11.0
    with pytest.raises(ValueError):
        calibrate_none_threshold([])


def test_timm_backed_eva_tower_drop_last_block(tmp_path):
    """A timm-backed open_clip tower (EVA-02 tiny, random): dropping the last block gives the
    second-to-last block's output of the full tower, without its final norm."""
    cfg = {"embed_dim": 32,
           "vision_cfg": {"image_size": 224, "timm_model_name": "eva02_tiny_patch14_224",
                          "timm_model_pretrained": False,
                          "timm_pool": "token", "timm_proj": "linear"},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    torch.save(build_open_clip(cfg).state_dict(), tmp_path / "eva.pt")
    full = FrozenCLIP(EncoderConfig(model=cfg, weights=str(tmp_path / "eva.pt")))
    dropped = FrozenCLIP(EncoderConfig(model=cfg, weights=str(tmp_path / "eva.pt"), drop_last_blocks=1,
                                       final_norm=False))
    assert len(full.visual.trunk.blocks) == 12 and len(dropped.visual.trunk.blocks) == 11
    assert (dropped.width, dropped.patch_size) == (192, 14)
    x = torch.randn(2, 3, 224, 224)
    cls, patches = dropped(x)
    with torch.no_grad():
        ref = full.visual.trunk.forward_intermediates(x, indices=[10], norm=False, output_fmt="NCHW",
                                                      intermediates_only=True, return_prefix_tokens=True)[0]
    assert patches.shape == (2, 192, 16, 16)
    assert torch.allclose(patches, ref[0], atol=1e-5)
    assert torch.allclose(cls, ref[1][:, 0], atol=1e-5)


def test_sdpa_self_attention_equals_multihead_attention():
    from dynrefer.model.fast_attention import SDPASelfAttention, use_sdpa_self_attention

    torch.manual_seed(0)
    reference = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    fast = copy.deepcopy(reference)
    assert use_sdpa_self_attention(torch.nn.Sequential(fast)) == 1 and type(fast) is SDPASelfAttention
    assert fast.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(3, 7, 32)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            assert torch.allclose(fast(x, x, x, need_weights=False)[0], reference(x, x, x, need_weights=False)[0],
                                  atol=1e-6)
    # not plain self-attention: the parent's forward, weights included
    mask = torch.triu(torch.full((7, 7), float("-inf")), 1)
    y = torch.randn(3, 5, 32)
    with torch.no_grad():
        out, weights = fast(x, y, y)
        ref_out, ref_weights = reference(x, y, y)
        assert torch.allclose(out, ref_out, atol=1e-6) and torch.allclose(weights, ref_weights, atol=1e-6)
        masked = fast(x, x, x, need_weights=False, attn_mask=mask)[0]
        assert torch.allclose(masked, reference(x, x, x, need_weights=False, attn_mask=mask)[0], atol=1e-6)
    # gradients flow as through the reference
    fast.train(), reference.train()
    xr = x.clone().requires_grad_(True)
    fast(xr, xr, xr, need_weights=False)[0].sum().backward()
    xg = x.clone().requires_grad_(True)
    reference(xg, xg, xg, need_weights=False)[0].sum().backward()
    assert torch.allclose(xr.grad, xg.grad, atol=1e-5)
    assert torch.allclose(fast.in_proj_weight.grad, reference.in_proj_weight.grad, atol=1e-5)


def test_frozen_encoder_uses_sdpa_and_matches_open_clip_under_inference_mode(clip_file):
    from dynrefer.model.fast_attention import SDPASelfAttention

    path, reference = clip_file
    enc = FrozenCLIP(EncoderConfig(model=TINY_CLIP, weights=str(path)))
    attns = [b.attn for b in enc.visual.transformer.resblocks]
    assert attns and all(type(a) is SDPASelfAttention for a in attns)
    x = torch.randn(5, 3, 64, 64)
    visual = reference.visual.eval()
    with torch.inference_mode():  # the reference's blocks take torch's native fast path here
        cls, patches = enc(x)
        tokens = visual.ln_post(visual.transformer(visual._embeds(x)))
    assert torch.allclose(cls, tokens[:, 0], atol=1e-5)
    assert torch.allclose(patches, tokens[:, 1:].reshape(5, 8, 8, 64).permute(0, 3, 1, 2), atol=1e-5)


def _asymmetric_loss_formula(logits, targets, gamma_neg, gamma_pos, clip, eps=1e-8):
    """The asymmetric loss written out (Ridnik et al. 2021), summed: the slow reference of timm's."""
    p = torch.sigmoid(logits)
    neg = (1 - p + clip).clamp(max=1) if clip else 1 - p
    loss = targets * torch.log(p.clamp(min=eps)) + (1 - targets) * torch.log(neg.clamp(min=eps))
    pt = p * targets + neg * (1 - targets)
    return -(loss * torch.pow(1 - pt, gamma_pos * targets + gamma_neg * (1 - targets))).sum()


@pytest.mark.parametrize("gamma_neg,gamma_pos,clip", [(7.0, 0.0, 0.05), (4.0, 1.0, 0.05), (2.0, 0.0, 0.0)])
def test_asymmetric_loss_is_the_formula_values_and_gradients(gamma_neg, gamma_pos, clip):
    from dynrefer.model.heads.tags import asymmetric_loss

    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(8, 40, generator=g) * 4).requires_grad_(True)
    targets = (torch.rand(8, 40, generator=g) < 0.2).float()
    got = asymmetric_loss(logits, targets, gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip)
    (grad_got,) = torch.autograd.grad(got, logits)
    want = _asymmetric_loss_formula(logits, targets, gamma_neg, gamma_pos, clip)
    (grad_want,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-5, atol=1e-6)
