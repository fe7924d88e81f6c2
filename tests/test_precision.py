"""Reduced precision (issue 32): what always runs in float32 (RoI boxes, indices and sampling, losses,
probabilities), half-precision results that do not depend on the batch, and bf16 models on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import roi_align

from dynrefer.model.config import tiny_config
from dynrefer.model.dynrefer import DynRefer
from dynrefer.model.heads.decoder import CrossAttentionLayer
from dynrefer.model.roi import ViewRoIAlign


def test_roi_in_float32_whatever_the_features_dtype():
    """bf16 features: boxes are not rounded (20.7 stays 20.7) and a map above index 256 reads its own box."""
    torch.manual_seed(0)
    n = 300
    feats = torch.randn(n, 8, 16, 16).to(torch.bfloat16)
    boxes = torch.tensor([[20.7, 10.3, 150.3, 200.9]]).repeat(n, 1) + torch.linspace(0, 3, n)[:, None]
    roi = ViewRoIAlign(16, 14, 2, False)
    got = roi(torch.zeros(n, 8, dtype=torch.bfloat16), feats, boxes)[:, 1:]
    rois = torch.cat([torch.arange(n, dtype=torch.float32)[:, None], boxes], 1)
    want = roi_align(feats.float(), rois, 16, 1 / 14, 2, False).flatten(2).transpose(1, 2)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=1e-2)  # only the output's bf16 rounding
    rounded = roi_align(feats.float(), torch.cat([rois[:, :1], boxes.to(torch.bfloat16).float()], 1), 16, 1 / 14, 2,
                        False).flatten(2).transpose(1, 2)
    assert (got.float() - want).abs().max() < (rounded - want).abs().max()  # bf16 boxes would move it more
    alone = roi(torch.zeros(1, 8, dtype=torch.bfloat16), feats[299:], boxes[299:])[:, 1:]
    assert torch.equal(alone, got[299:])  # the same whatever the batch
    # an adaptive sampling grid (torchvision's kernel for any count): batch indices above 256 in float32 too
    adaptive = ViewRoIAlign(16, 14, 0, False)(torch.zeros(n, 8, dtype=torch.bfloat16), feats, boxes)[:, 1:]
    want0 = roi_align(feats.float(), rois, 16, 1 / 14, 0, False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(adaptive.float(), want0, atol=2e-2, rtol=1e-2)
    # float32 features below the separable threshold keep torchvision's kernel (boxes in float32 too)
    few = roi(torch.zeros(3, 8), feats[:3].float(), boxes[:3])[:, 1:]
    torch.testing.assert_close(few, want[:3], atol=1e-5, rtol=1e-5)


def test_losses_in_float32_for_half_logits():
    from dynrefer.model.heads.tags import asymmetric_loss

    logits = torch.tensor([[-30.0, 12.0, 0.5, -0.2]], dtype=torch.float16)
    targets = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    loss = asymmetric_loss(logits, targets)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert float(loss) == pytest.approx(float(asymmetric_loss(logits.float(), targets)), rel=1e-6)
    torch.manual_seed(0)
    model = DynRefer(tiny_config()).half()
    region = torch.randn(4, 8, 64, dtype=torch.float16)
    texts = torch.randn(4, model.tag_embeddings.shape[1], dtype=torch.float16)
    contrastive = model.contrastive_head.loss(region, texts)
    assert contrastive.dtype == torch.float32 and torch.isfinite(contrastive)


def test_cross_attention_equals_multihead_attention():
    torch.manual_seed(0)
    layer = CrossAttentionLayer(32, 4, 64).double().eval()
    q, m = torch.randn(3, 5, 32, dtype=torch.float64), torch.randn(3, 7, 32, dtype=torch.float64)
    attended = layer.attn(q, m, m, need_weights=False)[0]
    x = layer.norm1(q + attended)
    torch.testing.assert_close(layer(q, m), layer.norm2(x + layer.ffn(x)), atol=1e-12, rtol=0)
    layer.train()
    out = layer(q, m)
    out.sum().backward()
    assert layer.attn.in_proj_weight.grad is not None and layer.attn.out_proj.weight.grad is not None


@pytest.mark.parametrize("cast", [False, True], ids=["bf16-autocast", "bf16-weights"])
def test_half_precision_results_do_not_depend_on_the_batch(cast):
    torch.manual_seed(0)
    model = DynRefer(tiny_config(), tags=["red", "circle", "blue"]).eval()
    with torch.no_grad():  # non-trivial alignment
        model.align.offset_mask.weight.normal_(0, 0.05)
        model.align.offset_mask.bias.normal_(0, 0.5)
    dtype = torch.bfloat16
    if cast:
        model = model.to(dtype)
    pixels = torch.randn(30, 3, 64, 64, dtype=dtype if cast else torch.float32)
    boxes = (torch.tensor([[3.0, 5.0, 50.0, 60.0]]) + torch.arange(30.0)[:, None] / 7).clamp(max=64)
    context = torch.autocast("cpu", dtype=dtype, enabled=not cast)
    with torch.inference_mode(), context:
        batch = model.encode_regions(pixels, boxes)
        alone = model.encode_regions(pixels[:3], boxes[:3])
        assert torch.equal(alone, batch[:1])
        tags_batch = model.tag_head(batch, model.tag_embeddings)
        assert torch.equal(model.tag_head(batch[:1], model.tag_embeddings), tags_batch[:1])
        texts = ["the red circle", "the blue square"]
        assert torch.equal(model.score_texts(batch[:1], texts), model.score_texts(batch, texts)[:1])


def test_a_bf16_model_runs_on_the_cpu(photos):
    from dynrefer.inference.engine import Engine

    torch.manual_seed(0)
    model = DynRefer(tiny_config(), tags=["red", "circle", "blue"], categories=["circle", "square"]).eval()
    photo = photos["coffee"]
    boxes = [[40.5, 30.25, 200.0, 180.0], [300.0, 100.0, 500.0, 390.0]]
    from dynrefer.regions import parse_regions

    regions = [parse_regions(boxes, photo.size)]
    full, _ = Engine(model).run([photo.tensor], regions, tasks=("category", "tags"), all_tags=True)
    half, _ = Engine(model.to(torch.bfloat16)).run([photo.tensor], regions, tasks=("category", "tags"), all_tags=True)
    for a, b in zip(full[0], half[0]):
        assert a["category"][0] == b["category"][0]
        np.testing.assert_allclose([s for _, s in sorted(a["tags"])], [s for _, s in sorted(b["tags"])], atol=0.05)


def test_float16_t5_decodes_with_generate():
    from dynrefer.model.heads import beam

    torch.manual_seed(0)
    lm = DynRefer(tiny_config()).language_head.lm.eval()
    settings = dict(num_beams=2, max_new_tokens=5)
    assert beam.supports(lm, settings, eos_token_id=1, pad_token_id=0)
    with torch.autocast("cpu", dtype=torch.float16):  # float16 products under autocast too
        assert not beam.supports(lm, settings, eos_token_id=1, pad_token_id=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert beam.supports(lm, settings, eos_token_id=1, pad_token_id=0)
    assert not beam.supports(lm.half(), settings, eos_token_id=1, pad_token_id=0)  # T5's float16 clamp: generate


# ------------------------------------------------------------------------------------------ loading
def _built_as_before(folder):
    """``from_pretrained`` the way it loaded before: the model built (random initialisation) and copied into."""
    from dynrefer.model import io

    original = io._assigned
    io._assigned = lambda *args, **kwargs: None
    try:
        return DynRefer.from_pretrained(folder)
    finally:
        io._assigned = original


def test_loading_assigns_the_saved_tensors_as_building_would(photos, monkeypatch):
    from dynrefer.inference.predictor import Predictor
    from dynrefer.model import io
    from dynrefer.model.io import builtin_dir

    assigned = []
    original = io._assigned
    monkeypatch.setattr(io, "_assigned", lambda *a, **k: assigned.append(original(*a, **k)) or assigned[-1])
    fast = DynRefer.from_pretrained("builtin")
    monkeypatch.undo()
    assert assigned and assigned[0] is fast  # built on the meta device, given the saved tensors
    slow = _built_as_before(builtin_dir())
    a, b = fast.state_dict(), slow.state_dict()
    assert set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    assert [n for n, _ in fast.named_buffers()] == [n for n, _ in slow.named_buffers()]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(fast.named_buffers(), slow.named_buffers()))
    assert [(n, p.requires_grad) for n, p in fast.named_parameters()] == \
           [(n, p.requires_grad) for n, p in slow.named_parameters()]  # tied parameters are tied again
    assert not any(t.is_meta for t in list(fast.parameters()) + list(fast.buffers()))
    photo = photos["chelsea"]
    boxes = [[10, 10, 200, 200], [100.5, 50.25, 400, 290]]
    assert Predictor(fast).describe(photo.tensor, boxes, all_scores=True) == \
           Predictor(slow).describe(photo.tensor, boxes, all_scores=True)


def test_a_half_precision_folder_loads_in_its_dtype_and_saves_over_itself(tmp_path):
    torch.manual_seed(0)
    model = DynRefer(tiny_config(), tags=["red", "blue"]).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "m")
    loaded = DynRefer.from_pretrained(tmp_path / "m")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert torch.equal(loaded.tag_embeddings, model.tag_embeddings)
    region = torch.randn(1, 8, 64, dtype=torch.bfloat16)
    before = loaded.predict_tags(region, 0.0)
    loaded.save_pretrained(tmp_path / "m")  # its tensors map the file it replaces: an atomic rename keeps them
    assert loaded.predict_tags(region, 0.0) == before
    assert [p.name for p in (tmp_path / "m").iterdir() if p.name.endswith(".tmp")] == []


def test_a_half_precision_lm_folder_loads_in_float32(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    from dynrefer.model.config import LanguageConfig
    from dynrefer.model.heads.language import build_char_tokenizer, build_language_model

    tok = build_char_tokenizer()
    lm = T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                             num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    lm.to(torch.bfloat16).save_pretrained(tmp_path / "t5")
    tok.save_pretrained(tmp_path / "t5")
    loaded, _ = build_language_model(LanguageConfig(path=str(tmp_path / "t5")))
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}


def test_older_folders_and_training_load_as_before(tmp_path):
    """A folder whose LM is read from its own folder (saved before language_config.json) is built as before; a
    bfloat16 folder trains from float32 weights."""
    from test_official_behaviour import _t5_folder

    from dynrefer.model.io import LM_CONFIG
    from dynrefer.train.module import DynReferModule

    cfg = tiny_config()
    cfg.language.path, cfg.language.model_config = str(_t5_folder(tmp_path)), None
    torch.manual_seed(0)
    model = DynRefer(cfg, tags=["red"]).eval()
    model.save_pretrained(tmp_path / "old", include_frozen=True)
    (tmp_path / "old" / LM_CONFIG).unlink()
    loaded = DynRefer.from_pretrained(tmp_path / "old")
    region = torch.randn(1, 8, 64)
    assert loaded.caption(region) == model.caption(region)
    half = DynRefer(tiny_config(), tags=["red"]).to(torch.bfloat16)
    half.save_pretrained(tmp_path / "half")
    module = DynReferModule(str(tmp_path / "half"))
    assert {p.dtype for p in module.model.parameters()} == {torch.float32}
    assert {p.dtype for p in DynRefer.from_pretrained(tmp_path / "half").parameters()} == {torch.bfloat16}


def test_auto_precision_is_bfloat16_on_a_gpu_with_it_and_float32_elsewhere(photos):
    from dynrefer.errors import InputError
    from dynrefer.inference.engine import Engine, resolve_autocast
    from dynrefer.regions import parse_regions

    assert resolve_autocast("auto", "cuda:0", bf16_supported=True) == "bfloat16"
    assert resolve_autocast("auto", torch.device("cuda"), bf16_supported=False) is None
    assert resolve_autocast("auto", "cpu") is None and resolve_autocast("auto", "mps") is None
    assert resolve_autocast("float16", "cpu") == "float16" and resolve_autocast(None, "cuda") is None
    with pytest.raises(InputError, match="expected auto or one of bfloat16, float16"):
        Engine(DynRefer(tiny_config(), tags=["red"]), dtype="half")
    torch.manual_seed(0)
    model = DynRefer(tiny_config(), tags=["red", "circle", "blue"], categories=["circle", "square"]).eval()
    photo = photos["coffee"]
    regions = [parse_regions([[40.5, 30.25, 200.0, 180.0]], photo.size)]
    auto = Engine(model, dtype="auto")
    assert auto.autocast_dtype is None  # on this CPU: the model's float32, exactly
    got, _ = auto.run([photo.tensor], regions, tasks=("category", "tags"), all_tags=True)
    want, _ = Engine(model).run([photo.tensor], regions, tasks=("category", "tags"), all_tags=True)
    assert got == want
