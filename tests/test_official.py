"""Official DynRefer checkpoints (LAVIS naming) → our model: key map, DCNv4 layout, safe loading, CLI."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dynrefer.errors import InputError
from dynrefer.model import official_keys as K
from dynrefer.model.config import tiny_config
from dynrefer.model.dynrefer import DynRefer
from dynrefer.model.official import (
    apply_official,
    convert_official,
    map_blip2,
    map_clip_text,
    map_eva,
    map_lavis,
    read_official_checkpoint,
)

TAGS = ["red car", "tree", "person"]
N_TAGS = len(TAGS)


class NotATensor:  # a pickled custom object must be refused
    pass


def tiny_official_config():
    cfg = tiny_config()
    cfg.encoder.extra_norm = True
    return cfg


def official_state(cfg, *, seed=0, n_tags=N_TAGS, c=64, d_model=64, text_dim=64, device="cpu") -> dict:
    """A state dict with the official DynRefer key names and layouts (defaults: the tiny config's sizes)."""
    gen = torch.Generator().manual_seed(seed)
    h, inter, n = cfg.qformer.hidden_size, cfg.qformer.intermediate_size, cfg.views.num_views
    g, k = cfg.align.groups, cfg.align.kernel_size
    packed = math.ceil(3 * g * k * k / 8) * 8
    shapes = {
        "Qformer.bert.embeddings.LayerNorm.weight": (h,), "Qformer.bert.embeddings.LayerNorm.bias": (h,),
        "Qformer.bert.embeddings.word_embeddings.weight": (cfg.qformer.vocab_size, h),
        "Qformer.bert.embeddings.position_embeddings.weight": (cfg.qformer.max_position_embeddings, h),
        "Qformer.cls.predictions.bias": (cfg.qformer.vocab_size,),
        "query_tokens": (1, cfg.qformer.num_query_tokens, h),
        "ln_vision.weight": (c,), "ln_vision.bias": (c,),
        "t5_proj.weight": (d_model, h), "t5_proj.bias": (d_model,), "cem_memory": (d_model,),
        "cvem_align.value_proj.weight": (c, c), "cvem_align.value_proj.bias": (c,),
        "cvem_align.output_proj.weight": (c, c), "cvem_align.output_proj.bias": (c,),
        "cvem_align.offset_mask_dw.weight": (c, 2, 3, 3), "cvem_align.offset_mask_dw.bias": (c,),
        "cvem_align.offset_mask.weight": (packed, c), "cvem_align.offset_mask.bias": (packed,),
        "cvem_mlp.0.weight": (c, c * n), "cvem_mlp.0.bias": (c,), "cvem_mlp.2.weight": (c, c), "cvem_mlp.2.bias": (c,),
        "clip_embeds": (n_tags, text_dim), "att_embeds": (5, text_dim),
        "attr_t": (), "attr_b": (),
    }
    for i in range(cfg.qformer.num_hidden_layers):
        pre = f"Qformer.bert.encoder.layer.{i}."
        blocks = {"attention.self.query": (h, h), "attention.self.key": (h, h), "attention.self.value": (h, h),
                  "attention.output.dense": (h, h), "attention.output.LayerNorm": (h,),
                  "intermediate.dense": (inter, h), "output.dense": (h, inter), "output.LayerNorm": (h,),
                  "intermediate_query.dense": (inter, h), "output_query.dense": (h, inter),
                  "output_query.LayerNorm": (h,)}
        if i % cfg.qformer.cross_attention_frequency == 0:
            blocks.update({"crossattention.self.query": (h, h), "crossattention.self.key": (h, c),
                           "crossattention.self.value": (h, c), "crossattention.output.dense": (h, h),
                           "crossattention.output.LayerNorm": (h,)})
        for name, shape in blocks.items():
            shapes[pre + name + ".weight"] = shape
            shapes[pre + name + ".bias"] = (shape[0],)
    for head, hcfg in (("tag", cfg.tags), ("attr", cfg.contrastive)):
        dim, ffn = hcfg.dim, hcfg.ffn_dim
        for name, shape in ((f"{head}_text_proj", (dim, text_dim)), (f"{head}_vision_proj", (dim, h)),
                            (f"{head}_fc", (1, dim))):
            shapes[name + ".weight"], shapes[name + ".bias"] = shape, (shape[0],)
        for i in range(hcfg.num_layers):
            pre = f"{head}_head.encoder.layer.{i}."
            for name, shape in (("crossattention.self.query", (dim, dim)), ("crossattention.self.key", (dim, dim)),
                                ("crossattention.self.value", (dim, dim)), ("crossattention.output.dense", (dim, dim)),
                                ("crossattention.output.LayerNorm", (dim,)), ("intermediate.dense", (ffn, dim)),
                                ("output.dense", (dim, ffn)), ("output.LayerNorm", (dim,))):
                shapes[pre + name + ".weight"], shapes[pre + name + ".bias"] = shape, (shape[0],)
    if device == "meta":
        state = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
        state["Qformer.bert.embeddings.position_ids"] = torch.empty(1, cfg.qformer.max_position_embeddings,
                                                                    device="meta")
        return state
    state = {name: torch.randn(shape, generator=gen) * 0.2 for name, shape in shapes.items()}
    state["Qformer.bert.embeddings.position_ids"] = torch.arange(cfg.qformer.max_position_embeddings)[None]
    # non-trivial offsets (a few pixels) in the packed DCNv4 offset_mask rows
    rows = torch.arange(packed)
    is_offset = (rows < 3 * g * k * k) & ((rows % (3 * k * k)) < 2 * k * k)
    state["cvem_align.offset_mask.weight"] *= torch.where(is_offset, 6.0, 1.0)[:, None]
    state["cvem_align.offset_mask.bias"] *= torch.where(is_offset, 8.0, 2.0)
    return state


def convert_tiny(state, cfg=None, tags=TAGS):
    cfg = cfg or tiny_official_config()
    model = DynRefer(cfg)
    model.tag_names = list(tags)
    model.tag_embeddings = torch.zeros(len(tags), model.tag_embeddings.shape[1])
    apply_official(model, [map_lavis(state, "dynrefer.pth", None)], keep=("encoder.clip.", "language_head.lm."))
    return model.eval()


@pytest.fixture(scope="module")
def converted():
    cfg = tiny_official_config()
    state = official_state(cfg)
    return state, convert_tiny(state, cfg)


def _bilinear(img, py, px):
    """channels-last (B, H, W, D) at pixel locations; outside (-1, H) x (-1, W) → 0, outer corners 0 (DCNv4)."""
    b, h, w, _ = img.shape
    inside = (py > -1) & (py < h) & (px > -1) & (px < w)
    y0, x0 = torch.floor(py), torch.floor(px)
    ly, lx = py - y0, px - x0
    batch = torch.arange(b).view(b, 1, 1)
    out = torch.zeros(*py.shape, img.shape[-1], dtype=img.dtype)
    for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            valid = inside & (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
            weight = torch.where(valid, wy * wx, torch.zeros_like(wy))
            out = out + weight[..., None] * img[batch, yy.clamp(0, h - 1).long(), xx.clamp(0, w - 1).long()]
    return out


def official_dcnv4(state, ref, view, groups=4, k=3):
    """``CustomDCNv4.forward(ref, input=view)`` written out from the official tensors and the packed layout
    (OpenGVLab/DCNv4 ``forward_kernel_dcn_reg``: per group g the row block ``g*3K``; ``2p`` = dx, ``2p+1`` = dy,
    ``2K+p`` = modulation (no softmax), ``p = ix*k + iy``; location ``q - pad + (ix, iy) + (dx, dy)``)."""
    s = {n[len("cvem_align."):]: v.double() for n, v in state.items() if n.startswith("cvem_align.")}
    b, c, h, w = view.shape
    npt, d, pad = k * k, c // groups, (k - 1) // 2
    hidden = F.conv2d(torch.cat([view, ref], 1), s["offset_mask_dw.weight"], s["offset_mask_dw.bias"],
                      padding=1, groups=c)
    packed = hidden.permute(0, 2, 3, 1) @ s["offset_mask.weight"].T + s["offset_mask.bias"]
    core = packed[..., : 3 * groups * npt].reshape(b, h, w, groups, 3 * npt)
    x = (view.permute(0, 2, 3, 1) @ s["value_proj.weight"].T + s["value_proj.bias"]).reshape(b, h, w, groups, d)
    qy, qx = torch.arange(h, dtype=view.dtype).view(1, h, 1), torch.arange(w, dtype=view.dtype).view(1, 1, w)
    outs = []
    for gi in range(groups):
        acc = torch.zeros(b, h, w, d, dtype=view.dtype)
        for ix in range(k):
            for iy in range(k):
                p = ix * k + iy
                dx, dy, m = core[..., gi, 2 * p], core[..., gi, 2 * p + 1], core[..., gi, 2 * npt + p]
                acc = acc + m[..., None] * _bilinear(x[..., gi, :], qy - pad + iy + dy, qx - pad + ix + dx)
        outs.append(acc)
    out = torch.cat(outs, -1) @ s["output_proj.weight"].T + s["output_proj.bias"]
    return out.permute(0, 3, 1, 2)


def test_alignment_matches_official_dcnv4_reference(converted):
    state, model = converted
    gen = torch.Generator().manual_seed(1)
    view, ref = torch.randn(2, 64, 8, 8, generator=gen).double(), torch.randn(2, 64, 8, 8, generator=gen).double()
    align = model.align.double()
    packed = align.packed_offset_mask(view, ref)
    offsets = packed[..., :108].unflatten(-1, (4, 27))[..., :18]
    assert offsets.abs().max() > 1.5  # the offsets really move the samples (some out of the map)
    got = align(view, ref)
    want = official_dcnv4(state, ref, view)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    model.align.float()


def _bert_cross_layer(s, pre, x, mem, heads):
    """A RAM/BLIP BERT layer with cross-attention only (self-attention deleted), from the official tensors."""
    def lin(name, t):
        return t @ s[pre + name + ".weight"].T + s[pre + name + ".bias"]

    def ln(name, t):
        return F.layer_norm(t, t.shape[-1:], s[pre + name + ".weight"], s[pre + name + ".bias"], eps=1e-12)

    b, q, dim = x.shape
    split = lambda t: t.view(b, -1, heads, dim // heads).transpose(1, 2)  # noqa: E731
    qh = split(lin("crossattention.self.query", x))
    kh, vh = split(lin("crossattention.self.key", mem)), split(lin("crossattention.self.value", mem))
    att = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(dim // heads), -1)
    ctx = (att @ vh).transpose(1, 2).reshape(b, q, dim)
    x = ln("crossattention.output.LayerNorm", lin("crossattention.output.dense", ctx) + x)
    inter = F.gelu(lin("intermediate.dense", x))
    return ln("output.LayerNorm", lin("output.dense", inter) + x)


def test_heads_match_official_bert_decoders(converted):
    state, model = converted
    cfg = model.config
    region = torch.randn(2, cfg.qformer.num_query_tokens, cfg.qformer.hidden_size)
    with torch.no_grad():
        tag_logits = model.tag_head(region, model.tag_embeddings)
        s = state
        text = model.tag_embeddings @ s["tag_text_proj.weight"].T + s["tag_text_proj.bias"]
        mem = region @ s["tag_vision_proj.weight"].T + s["tag_vision_proj.bias"]
        x = text[None].expand(2, -1, -1)
        for i in range(cfg.tags.num_layers):
            x = _bert_cross_layer(s, f"tag_head.encoder.layer.{i}.", x, mem, cfg.tags.num_heads)
        want = (x @ s["tag_fc.weight"].T + s["tag_fc.bias"]).squeeze(-1)
    torch.testing.assert_close(tag_logits, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.tag_embeddings, state["clip_embeds"])
    assert float(model.contrastive_head.logit_scale.detach()) == pytest.approx(float(state["attr_t"]))
    assert float(model.contrastive_head.logit_bias.detach()) == pytest.approx(float(state["attr_b"]))
    torch.testing.assert_close(model.language_head.control_vector.detach(), state["cem_memory"])
    torch.testing.assert_close(model.fusion.fc1.weight.detach(), state["cvem_mlp.0.weight"])
    torch.testing.assert_close(model.encoder.ln_vision.weight, state["ln_vision.weight"])
    q = model.qformer.qformer.encoder.layer[0].crossattention.attention.key.weight
    torch.testing.assert_close(q.detach(), state["Qformer.bert.encoder.layer.0.crossattention.self.key.weight"])


def test_every_key_is_mapped_or_ignored_on_purpose():
    cfg = tiny_official_config()
    state = official_state(cfg)
    mapped = map_lavis(state, "dynrefer.pth", None)
    assert not mapped.unmapped
    ignored = set(mapped.ignored)
    assert ignored == {"Qformer.bert.embeddings.word_embeddings.weight", "Qformer.bert.embeddings.position_ids",
                       "Qformer.bert.embeddings.position_embeddings.weight", "Qformer.cls.predictions.bias",
                       "att_embeds"} | {k for k in state if ".intermediate.dense." in k and k.startswith("Qformer")} \
        | {k for k in state if ".output.dense." in k and k.startswith("Qformer") and "attention" not in k} \
        | {k for k in state if ".output.LayerNorm." in k and k.startswith("Qformer") and "attention" not in k}
    used = {name for items in mapped.targets.values() for _, _, name in items}
    assert used | ignored == set(state)


def test_extra_missing_and_misshaped_keys_fail_with_their_names():
    cfg = tiny_official_config()
    state = official_state(cfg)
    with pytest.raises(InputError, match=r"cvem_extra\.weight"):
        convert_tiny({**state, "cvem_extra.weight": torch.zeros(3)}, cfg)
    with pytest.raises(InputError, match=r"t5_model\.encoder\.lora_A\.weight"):
        convert_tiny({**state, "t5_model.encoder.lora_A.weight": torch.zeros(3)}, cfg)
    short = {k: v for k, v in state.items() if k != "cvem_mlp.2.bias"}
    with pytest.raises(InputError, match=r"fusion\.fc2\.bias"):
        convert_tiny(short, cfg)
    half = {k: v for k, v in state.items() if k != "tag_head.encoder.layer.0.crossattention.self.value.weight"}
    with pytest.raises(InputError, match=r"tag_head\.decoder\.layers\.0\.attn\.in_proj_weight"):
        convert_tiny(half, cfg)
    bad = {**state, "cvem_align.offset_mask.weight": torch.zeros(108, 64)}
    with pytest.raises(InputError, match=r"cvem_align\.offset_mask\.weight \(108, 64\)"):
        convert_tiny(bad, cfg)
    # ignored text-side Q-Former tensors are reported, never silently dropped
    model_state = convert_tiny(state, cfg).state_dict()
    assert "align.offset_mask.weight" in model_state


def test_checkpoint_reading_refuses_pickled_objects(tmp_path):
    cfg = tiny_official_config()
    state = official_state(cfg)
    evil = tmp_path / "evil.pth"
    torch.save({"model": state, "extra": NotATensor()}, evil)
    with pytest.raises(InputError, match=r"evil\.pth.*NotATensor"):
        read_official_checkpoint(evil)
    # inert training state (numpy scalars, OrderedDict, plain config dicts) is accepted
    ok = tmp_path / "ok.pth"
    torch.save({"model": collections.OrderedDict(state), "epoch": np.int64(4), "lr": np.float64(1e-4),
                "config": {"run": {"seed": 42}}, "scaler": {"scale": 65536.0, "_growth_tracker": 3},
                "optimizer": {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(3)}},
                              "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]}}, ok)
    got = read_official_checkpoint(ok)
    assert set(got) == set(state)
    bare = tmp_path / "bare.pth"
    torch.save({"state_dict": {"module.cem_memory": torch.ones(4)}}, bare)
    assert set(read_official_checkpoint(bare)) == {"cem_memory"}
    torch.save({"model": {"cem_memory": torch.ones(4), "step": 3}}, bare)
    with pytest.raises(InputError, match="step"):
        read_official_checkpoint(bare)


@pytest.fixture(scope="module")
def official_meta_model():
    from dynrefer.model.config import official_config

    with torch.device("meta"):
        return DynRefer(official_config())


def test_eva_vit_g_and_hf_blip2_maps_cover_the_official_model(official_meta_model):
    """LAVIS eva_vit_g names (40 blocks, EVA ViT-g shapes) cover our EVA01-g-14 trunk exactly."""
    c, mlp = 1408, 6144
    eva = {"cls_token": (1, 1, c), "pos_embed": (1, 257, c), "patch_embed.proj.weight": (c, 3, 14, 14),
           "patch_embed.proj.bias": (c,)}
    for i in range(40):
        for name, shape in (("norm1.weight", (c,)), ("norm1.bias", (c,)), ("attn.qkv.weight", (3 * c, c)),
                            ("attn.q_bias", (c,)), ("attn.v_bias", (c,)), ("attn.proj.weight", (c, c)),
                            ("attn.proj.bias", (c,)), ("norm2.weight", (c,)), ("norm2.bias", (c,)),
                            ("mlp.fc1.weight", (mlp, c)), ("mlp.fc1.bias", (mlp,)), ("mlp.fc2.weight", (c, mlp)),
                            ("mlp.fc2.bias", (c,))):
            eva[f"blocks.{i}.{name}"] = shape
    eva = {k: torch.empty(s, device="meta") for k, s in eva.items()}
    own = official_meta_model.state_dict()
    mapped = map_eva(eva, "eva_vit_g.pth", 39)
    assert not mapped.unmapped
    assert sorted(mapped.ignored) == sorted(k for k in eva if k.startswith("blocks.39."))
    trunk = {k for k in own if k.startswith(K.EVA_TRUNK) and not any(p in k for p in (".norm.", ".head."))}
    assert set(mapped.targets) == trunk
    for target, ((_, value, name),) in mapped.targets.items():
        assert tuple(value.shape) == tuple(own[target].shape), name
    # a Hugging Face BLIP-2 folder: Q-Former, query tokens, ln_vision, projection; text side ignored
    hf = {"qformer." + k[len("qformer.qformer."):]: v for k, v in own.items() if k.startswith("qformer.qformer.")}
    hf.update({"query_tokens": own["qformer.query_tokens"], "vision_model.post_layernorm.weight": own[
        "encoder.ln_vision.weight"], "language_projection.weight": own["language_head.proj.weight"],
        "qformer.embeddings.word_embeddings.weight": torch.empty(1, device="meta"),
        "qformer.encoder.layer.0.intermediate.dense.weight": torch.empty(1, device="meta"),
        "language_model.lm_head.weight": torch.empty(1, device="meta"),
        "vision_model.encoder.layers.0.mlp.fc1.weight": torch.empty(1, device="meta")})
    mapped = map_blip2(hf, "blip2", 39)
    assert not mapped.unmapped and len(mapped.ignored) == 4
    for target, ((_, value, name),) in mapped.targets.items():
        assert tuple(value.shape) == tuple(own[target].shape), name
    # the EVA-CLIP text tower (text.* in eva_clip_psz14.pt, open_clip names) covers our text tower
    text = {"text." + k[len("encoder.clip.text."):]: v for k, v in own.items() if k.startswith("encoder.clip.text.")}
    text.update({"text.logit_scale": own["encoder.clip.logit_scale"], "visual.blocks.0.norm1.weight": own[
        "encoder.ln_vision.weight"]})
    mapped = map_clip_text(text, "eva_clip_psz14.pt")
    assert not mapped.unmapped and list(mapped.ignored) == ["visual.blocks.0.norm1.weight"]
    assert set(mapped.targets) == {k for k in own if k.startswith("encoder.clip.text.")} | {"encoder.clip.logit_scale"}


def test_full_size_official_key_set_loads_into_the_official_model(official_meta_model):
    """DynRefer checkpoint + eva_vit_g (40 blocks) + EVA-CLIP text, all at official sizes: nothing unmapped,
    mis-shaped or missing (the LLM comes from its folder)."""
    from dynrefer.model.config import official_config

    cfg = official_config()
    model = official_meta_model
    own = model.state_dict()
    dyn = official_state(cfg, n_tags=4585, c=1408, d_model=2048, text_dim=1024, device="meta")
    eva = {k[len(K.EVA_TRUNK):]: torch.empty(v.shape, device="meta") for k, v in own.items()
           if k.startswith(K.EVA_TRUNK) and not k.startswith((K.EVA_TRUNK + "norm.", K.EVA_TRUNK + "head."))}
    eva.update({k.replace("blocks.38.", "blocks.39."): v for k, v in eva.items() if k.startswith("blocks.38.")})
    text = {"text." + k[len("encoder.clip.text."):]: v for k, v in own.items() if k.startswith("encoder.clip.text.")}
    mapped = [map_eva(eva, "eva_vit_g.pth", 39), map_clip_text(text, "eva_clip_psz14.pt"),
              map_lavis(dyn, "vg1.2_5e.pth", 39)]
    model.tag_names = ["t"] * 4585
    model.tag_embeddings = torch.empty(4585, 1024, device="meta")
    loaded = apply_official(model, mapped, keep=("language_head.lm.",))
    skipped = {k for k in own if k not in loaded and not k.startswith("language_head.lm.")}
    assert skipped == {k for k in own if k.startswith((K.EVA_TRUNK + "norm.", K.EVA_TRUNK + "head."))} | {
        "encoder.clip.logit_scale"}  # UNUSED_OURS: never read by the official forward
    n_official = sum(len(m.targets) + len(m.ignored) for m in mapped)
    assert len(loaded) == len(own) - len(skipped) - sum(k.startswith("language_head.lm.") for k in own)
    print(f"official tensors: {sum(len(s) for s in (dyn, eva, text))}; our tensors loaded: {len(loaded)}; "
          f"ignored on purpose: {sum(len(m.ignored) for m in mapped)}; targets+ignored {n_official}")


def test_convert_official_cli_end_to_end(tmp_path, converted):
    import open_clip
    from safetensors.torch import save_file

    from dynrefer.cli import _Parser
    from dynrefer.commands.convert_official import register

    state, _ = converted
    cfg = tiny_official_config()
    clip = DynRefer(cfg).encoder.clip
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    cfg.encoder.weights = str(tmp_path / "clip.safetensors")
    cfg.to_yaml(tmp_path / "tiny.yaml")
    ckpt = tmp_path / "dynrefer.pth"
    torch.save({"model": state, "epoch": 5}, ckpt)
    (tmp_path / "tags.txt").write_text("\n".join(TAGS) + "\n")
    p = _Parser()
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    register(sub)
    out = tmp_path / "converted"
    args = p.parse_args(["convert-official", "--checkpoint", str(ckpt), "--tags", str(tmp_path / "tags.txt"),
                         "--config", str(tmp_path / "tiny.yaml"), "--out", str(out)])
    assert args.func(args) == 0
    assert (out / "config.json").is_file() and (out / "conversion.json").is_file()
    loaded = DynRefer.from_pretrained(out)
    assert loaded.tag_names == TAGS
    torch.testing.assert_close(loaded.align.offset_mask.weight.detach(), state["cvem_align.offset_mask.weight"])
    torch.testing.assert_close(loaded.tag_embeddings, state["clip_embeds"])
    assert open_clip is not None
    # without --tags the stored clip_embeds cannot be attributed to tag names
    args = p.parse_args(["convert-official", "--checkpoint", str(ckpt), "--config", str(tmp_path / "tiny.yaml"),
                         "--out", str(tmp_path / "x")])
    with pytest.raises(InputError, match="clip_embeds"):
        args.func(args)


def test_official_yaml_loads():
    from pathlib import Path

    from dynrefer.model.config import DynReferConfig

    cfg = DynReferConfig.from_file(Path(__file__).resolve().parent.parent / "configs/official/dynrefer_flant5xl.yaml")
    assert (cfg.views.size, cfg.views.num_views, cfg.views.policy) == (224, 3, "greedy")
    assert (cfg.language.num_beams, cfg.language.max_new_tokens, cfg.language.repetition_penalty) == (2, 20, 1.5)
    assert cfg.encoder.model == "EVA01-g-14" and cfg.encoder.drop_last_blocks == 1 and cfg.encoder.extra_norm
    assert convert_official is not None


def test_dynrefer_from_official_classmethod(tmp_path, converted):
    from safetensors.torch import save_file

    state, reference = converted
    cfg = tiny_official_config()
    clip = DynRefer(cfg).encoder.clip
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    cfg.encoder.weights = str(tmp_path / "clip.safetensors")
    torch.save({"model": state}, tmp_path / "dynrefer.pth")
    (tmp_path / "tags.txt").write_text("\n".join(TAGS) + "\n")
    model = DynRefer.from_official(tmp_path / "dynrefer.pth", tags=str(tmp_path / "tags.txt"), config=cfg)
    assert model.tag_names == TAGS
    for name in ("align.offset_mask.weight", "fusion.fc1.weight", "qformer.query_tokens", "language_head.proj.weight"):
        torch.testing.assert_close(model.state_dict()[name], reference.state_dict()[name])
