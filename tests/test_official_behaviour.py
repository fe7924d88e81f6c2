"""Each setting in which the original DynRefer code differs from our trained models (SPEC §1.1, §1.4), as a config
field: RoI box truncation, the control string's end token, exact GELU, official attribute / class scores, the
prompts' noun and OVAD synonyms, the token limit, unstripped captions; plus the model-building fixes found on the
way (EVA sizes, QuickGELU towers, the decoder's padding mask, untied LM heads after saving)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dynrefer.errors import InputError
from dynrefer.inference.records import region_records
from dynrefer.model.config import (
    OFFICIAL_BEHAVIOUR,
    DynReferConfig,
    LanguageConfig,
    official_config,
    tiny_config,
    with_official_behaviour,
)
from dynrefer.model.dynrefer import DynRefer
from dynrefer.model.heads.language import LanguageHead, build_char_tokenizer, build_language_model
from dynrefer.model.vocab import as_attributes, attribute_prompts
from dynrefer.views import view_geometries

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------- config
def test_official_config_and_yaml_carry_the_official_behaviour():
    cfg = official_config()
    assert cfg.roi.truncate_boxes and cfg.language.control_eos and cfg.language.dense_act_fn == "gelu"
    assert cfg.language.max_caption_tokens == 32 and not cfg.language.strip_captions
    assert cfg.contrastive.scores == "official" and cfg.contrastive.prompt_noun == ""
    assert cfg.contrastive.extra_synonyms["maturity:young/baby"] == ["kid", "kids", "child", "toddler", "boy", "girl"]
    yaml_cfg = DynReferConfig.from_file(ROOT / "configs/official/dynrefer_flant5xl.yaml")
    assert with_official_behaviour(yaml_cfg).to_dict() == yaml_cfg.to_dict()
    assert DynReferConfig.from_file(ROOT / "configs/model/official.yaml").to_dict() == cfg.to_dict()
    # our own models keep theirs
    tiny = tiny_config()
    assert not tiny.roi.truncate_boxes and not tiny.language.control_eos and tiny.contrastive.scores == "calibrated"
    # the overrides touch behaviour only, never sizes
    assert set(OFFICIAL_BEHAVIOUR) == {"roi", "contrastive", "language"}
    assert with_official_behaviour(tiny).qformer == tiny.qformer


def test_converted_checkpoints_get_the_official_behaviour(tmp_path):
    from safetensors.torch import save_file
    from test_official import TAGS, official_state, tiny_official_config

    from dynrefer.model.official import convert_official

    cfg = tiny_official_config()
    cfg.language.model_config = dict(cfg.language.model_config, feed_forward_proj="gated-gelu")
    clip = DynRefer(cfg).encoder.clip
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    cfg.encoder.weights = str(tmp_path / "clip.safetensors")
    state = official_state(cfg)
    # a checkpoint that saves the T5's embeddings: they win over the LM's own, as in the original's loading
    state["t5_model.encoder.embed_tokens.weight"] = torch.randn(512, 64)
    torch.save({"model": state}, tmp_path / "dynrefer.pth")
    model, _ = convert_official(DynRefer, tmp_path / "dynrefer.pth", tags=TAGS, config=cfg)
    lm = model.language_head.lm
    assert torch.equal(lm.shared.weight, state["t5_model.encoder.embed_tokens.weight"])
    assert torch.equal(lm.encoder.embed_tokens.weight, lm.shared.weight)
    got, want = model.config.to_dict(), with_official_behaviour(cfg).to_dict()
    for part in OFFICIAL_BEHAVIOUR:
        assert got[part] == want[part]
    assert not cfg.roi.truncate_boxes  # the caller's config is left as it is
    ff = model.language_head.lm.encoder.block[0].layer[-1].DenseReluDense
    assert type(ff.act).__name__ == "GELUActivation"  # exact GELU, not the config's gelu_new


# --------------------------------------------------------------------------------------------- views
def test_truncated_roi_boxes_follow_the_original_arithmetic():
    # a 270-px side: 270 * (224 / 270) is 223.99998 in float32 -> 223 (the original's box, in the fixture too)
    geom = view_geometries(np.array([[60.0, 20.0, 300.0, 290.0]]), (451, 300), [0.0, 0.1], 224)[0]
    assert geom.roi_boxes(truncate=True)[0].tolist() == [0.0, 0.0, 224.0, 223.0]
    assert geom.roi_boxes(truncate=False)[0].tolist() == [0.0, 0.0, 224.0, 224.0]
    # a float box: truncated before the crop origin is subtracted, the float32 scale, truncated again
    box = np.array([[10.7, 5.2, 50.9, 40.3]])
    geom = view_geometries(box, (64, 48), [0.0, 0.3], 224)[0]
    for crop, got in zip(geom.crops, geom.box_in_view_truncated):
        moved = (np.trunc(box[0]) - crop[[0, 1, 0, 1]]).astype(np.float32)
        ext = np.array([crop[2] - crop[0], crop[3] - crop[1]] * 2, dtype=np.float32)
        assert got.tolist() == np.trunc(moved * (np.float32(224) / ext)).tolist()
        assert np.all(got == np.round(got))
    # the region box is truncated as the original holds it, in float32: 150.99999999999997 is 151 there
    geom = view_geometries(np.array([[10.0, 20.0, 150.99999999999997, 200.0]]), (512, 512), [0.0], 224)[0]
    assert geom.roi_boxes(truncate=True)[0].tolist() == [0.0, 0.0, 224.0, 224.0]


def test_training_data_follows_the_models_roi_boxes(tmp_path):
    """The official recipes (model: official) train with truncated boxes without a data option."""
    from types import SimpleNamespace

    from PIL import Image

    from dynrefer.train.data import RegionDataModule
    from dynrefer.train.module import DynReferModule

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red.png")
    record = {"image": "red.png", "split": "train", "regions": [{"box": [4.5, 4.5, 40.7, 40.2],
                                                                  "captions": ["a red square"], "tags": ["red"]}] * 2}
    (tmp_path / "d.jsonl").write_text(json.dumps(record) + "\n")
    (tmp_path / "tags.txt").write_text("red\n")
    for truncate in (True, False):
        data = RegionDataModule(train_file=str(tmp_path / "d.jsonl"), size=64, batch_size=2, num_workers=0)
        data.setup("fit")
        module = DynReferModule("tiny", tags_file=str(tmp_path / "tags.txt"),
                                overrides={"roi": {"truncate_boxes": truncate}})
        module._trainer = SimpleNamespace(datamodule=data)
        module.setup("fit")
        boxes = data.train_set[0]["boxes_in_view"]
        assert data.train_set.truncate_boxes is truncate and torch.equal(boxes, boxes.round()) is truncate
    data = RegionDataModule(train_file=str(tmp_path / "d.jsonl"), size=64, batch_size=2, num_workers=0,
                            truncate_boxes=False)
    data.setup("fit")
    module._trainer = SimpleNamespace(datamodule=data)
    module.model.config.roi.truncate_boxes = True
    with pytest.raises(InputError, match="--data.truncate_boxes False does not match the model's roi.truncate_boxes"):
        module.setup("fit")


def test_engine_plans_the_rois_the_config_asks_for(photos):
    from dynrefer.inference.engine import Engine

    photo = photos["astronaut"]
    boxes = [[40.25, 60.5, 143.75, 161.5], [10.5, 10.5, 300.25, 200.75]]
    for truncate in (False, True):
        cfg = tiny_config()
        cfg.roi.truncate_boxes = truncate
        plan = Engine(DynRefer(cfg)).plan([photo.tensor], [boxes])
        want = np.concatenate([v.geometry.roi_boxes(truncate) for v in plan.views]).astype(np.float32)
        assert np.array_equal(plan.boxes_in_view, want)
        assert np.array_equal(plan.boxes_in_view, np.round(plan.boxes_in_view)) == truncate


# ------------------------------------------------------------------------------------------ language
def _head(**overrides) -> LanguageHead:
    cfg = tiny_config().language
    for key, value in overrides.items():
        setattr(cfg, key, value)
    torch.manual_seed(0)
    return LanguageHead(cfg, region_dim=8).eval()


def test_control_string_end_token_follows_the_config():
    eos = build_char_tokenizer().eos_token_id
    region = torch.randn(2, 3, 8)
    for flag in (False, True):
        head = _head(control_eos=flag)
        ids, mask = head._tokens(["ab|", "|"], add_eos=head.cfg.control_eos)
        assert ids.shape[1] == 3 + flag and (int(ids[0, -1]) == eos) == flag and int(mask[1].sum()) == 1 + flag
        prefix, prefix_mask = head._prefix(region, ["ab|", "|"])
        assert prefix.shape[1] == 3 + 3 + flag and int(prefix_mask[0].sum()) == 3 + 3 + flag


def test_token_limit_truncates_controls_and_captions():
    head = _head(max_caption_tokens=5, control_eos=True)
    ids, _ = head._tokens(["abcdefghij|"], add_eos=True)
    assert ids.shape[1] == 5 and int(ids[0, -1]) == build_char_tokenizer().eos_token_id


def test_captions_are_stripped_only_when_asked():
    tok = build_char_tokenizer()
    ids = torch.tensor([tok(" a b ", add_special_tokens=True)["input_ids"]])
    assert _head(strip_captions=True)._decode(ids) == ["a b"]
    assert _head(strip_captions=False)._decode(ids) == [" a b "]


def _t5_folder(tmp_path, tie=False):
    """A tiny gated-gelu T5 folder (untied lm_head, as Flan-T5) with a character tokenizer."""
    from transformers import T5Config, T5ForConditionalGeneration

    tok = build_char_tokenizer()
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1,
                   num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=tie, dropout_rate=0.0,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(1)
    lm = T5ForConditionalGeneration(cfg)
    if not tie:  # transformers 5 ties every T5 built from a config: untie as Flan-T5's files are
        lm.lm_head.weight = torch.nn.Parameter(torch.randn_like(lm.lm_head.weight))
    folder = tmp_path / "t5"
    lm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_dense_act_fn_replaces_the_folders_activation(tmp_path):
    folder = _t5_folder(tmp_path)
    acts = {}
    for value in (None, "gelu"):
        lm, _ = build_language_model(LanguageConfig(path=str(folder), dense_act_fn=value))
        acts[value] = type(lm.encoder.block[0].layer[-1].DenseReluDense.act).__name__
    assert acts == {None: "NewGELUActivation", "gelu": "GELUActivation"}
    with pytest.raises(InputError, match="not a transformers activation"):
        build_language_model(LanguageConfig(path=str(folder), dense_act_fn="nope"))
    cfg = tiny_config().language
    cfg.dense_act_fn = "relu"
    lm, _ = build_language_model(cfg)  # a config-built LM too
    assert type(lm.encoder.block[0].layer[-1].DenseReluDense.act).__name__ == "ReLU"


def test_teacher_forcing_masks_the_decoder_padding():
    head = _head()
    region = torch.randn(2, 3, 8)
    out, labels = head.teacher_forced(region, ["|", "a|"], ["a long caption", "ab"])
    prefix, prefix_mask = head._prefix(region, ["|", "a|"])
    plain = head.lm(inputs_embeds=prefix, attention_mask=prefix_mask, labels=labels)
    valid = labels != -100
    assert not valid.all()
    torch.testing.assert_close(out.logits[valid], plain.logits[valid], atol=1e-5, rtol=0)  # causal: only padding moves
    assert float(out.loss) == pytest.approx(float(plain.loss), abs=1e-6)
    assert not torch.allclose(out.logits[~valid], plain.logits[~valid])


def test_saved_model_keeps_an_untied_lm_head(tmp_path):
    cfg = tiny_config()
    cfg.language.path, cfg.language.model_config = str(_t5_folder(tmp_path)), None
    model = DynRefer(cfg).eval()
    lm = model.language_head.lm
    assert not torch.equal(lm.lm_head.weight, lm.shared.weight)
    model.save_pretrained(tmp_path / "saved")
    again = DynRefer.from_pretrained(tmp_path / "saved").eval()
    lm2 = again.language_head.lm
    assert torch.equal(lm2.lm_head.weight, lm.lm_head.weight) and torch.equal(lm2.shared.weight, lm.shared.weight)
    region = torch.randn(2, cfg.qformer.num_query_tokens, cfg.qformer.hidden_size)
    assert model.caption(region) == again.caption(region)


# ------------------------------------------------------------------------------------ attributes, classes
OVAD = [{"name": "cleanliness:clean/neat", "type": "cleanliness", "is_has_att": "is"},
        {"name": "clothes color:black", "type": "clothes color", "is_has_att": "has"},
        {"name": "maturity:young/baby", "type": "maturity", "is_has_att": "is"},
        {"name": "skin tone:light", "type": "skin tone", "is_has_att": "has"}]


def test_ovad_is_has_strings_and_the_official_prompts():
    assert [a.is_has for a in as_attributes(OVAD)] == [False, True, False, True]  # "is" was read as True
    with pytest.raises(InputError, match="is_has_att"):
        as_attributes([{"name": "x:y", "is_has_att": "maybe"}])
    cfg = official_config().contrastive
    prompts, owner = attribute_prompts(OVAD, cfg.prompt_noun, cfg.extra_synonyms)
    assert prompts[:6] == ["the clean ", "the  is clean", "the neat ", "the  is neat", "the black clothes color ",
                           "the  has black clothes color"]
    assert owner.count(2) == 2 * 8 and prompts[-2:] == ["the light skin ", "the  has light skin"]
    plain, plain_owner = attribute_prompts(OVAD)
    assert plain_owner.count(2) == 4 and plain[0] == "the clean object"


def test_official_scores_are_sigmoid_of_s_and_raw_class_scores():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = DynRefer(cfg).eval()
    with torch.no_grad():
        model.contrastive_head.logit_scale.fill_(1.3)
        model.contrastive_head.logit_bias.fill_(-2.0)
    region = torch.randn(3, cfg.qformer.num_query_tokens, cfg.qformer.hidden_size)
    classes = ["cup", "cat", "dog"]
    prompts, owner = attribute_prompts(OVAD, "object")
    raw = model.score_texts(region, [prompts, [f"the {c}" for c in classes]], raw=True)
    logits = model.score_texts(region, [prompts, [f"the {c}" for c in classes]])
    torch.testing.assert_close(logits, raw * np.exp(1.3) - 2.0, atol=1e-5, rtol=1e-5)
    batch = {"pixels": None}

    def predict(mode):
        model.config.contrastive.scores = mode
        model.encode_regions = lambda *a, **k: region  # the heads only
        return region_records(model.predict(batch | {"boxes_in_view": None}, ("attributes", "category"),
                                            attributes=OVAD, categories=classes, noun="object"))

    official, calibrated = predict("official"), predict("calibrated")
    for r in range(3):
        best = [max(float(raw[r, j]) for j in range(len(prompts)) if owner[j] == a) for a in range(len(OVAD))]
        got = dict(official[r]["attributes"])
        np.testing.assert_allclose([got[a["name"]] for a in OVAD], 1 / (1 + np.exp(-np.array(best))), atol=1e-6)
        cls = dict(official[r]["categories"])
        np.testing.assert_allclose([cls[c] for c in classes], raw[r, len(prompts):].tolist(), atol=1e-6)
        assert official[r]["category"][0] == classes[int(raw[r, len(prompts):].argmax())]
        assert sum(p for _, p in calibrated[r]["categories"]) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InputError, match="contrastive.scores"):
        bad = tiny_config()
        bad.contrastive.scores = "sigmoid"
        DynRefer(bad)


def test_caller_controls_replace_the_tag_controls():
    torch.manual_seed(0)
    model = DynRefer(tiny_config()).eval()
    region = torch.randn(2, 8, 64)
    assert model.caption(region, controls=["|", "|"]) == model.caption(region)
    captions, scores = model.caption(region, controls=["ab,cd|", "|"])
    plain_captions, plain_scores = model.caption(region)
    assert captions[1] == plain_captions[1] and scores[1] == pytest.approx(plain_scores[1], rel=1e-4)
    with pytest.raises(ValueError, match="2 regions"):
        model.caption(region, controls=["|"])


# ------------------------------------------------------------------------------------------ towers
def test_timm_kwargs_build_a_reduced_eva():
    from dynrefer.model.config import EncoderConfig
    from dynrefer.model.encoder import FrozenCLIP

    model = {"embed_dim": 32, "custom_text": True,
             "vision_cfg": {"image_size": 28, "timm_model_name": "eva_giant_patch14_224", "timm_pool": "token",
                            "timm_proj": None},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    enc = FrozenCLIP(EncoderConfig(model=model, timm_kwargs={"embed_dim": 24, "depth": 2, "num_heads": 2,
                                                             "mlp_ratio": 4.3637, "patch_size": 14}))
    trunk = enc.visual.trunk
    assert len(trunk.blocks) == 2 and trunk.embed_dim == 24 and trunk.blocks[0].mlp.fc1.out_features == int(24 * 4.3637)
    assert not any(p.is_meta for p in enc.parameters())
    cls, patches = enc(torch.randn(2, 3, 28, 28))
    assert cls.shape == (2, 24) and patches.shape == (2, 24, 2, 2)
    with pytest.raises(InputError, match="timm_proj"):
        FrozenCLIP(EncoderConfig(model={**model, "vision_cfg": {**model["vision_cfg"], "timm_proj": "linear"}},
                                 timm_kwargs={"embed_dim": 24, "depth": 1, "num_heads": 2}))
    with pytest.raises(InputError, match="do not fit"):
        FrozenCLIP(EncoderConfig(model=model, timm_kwargs={"no_such_argument": 1}))


def test_quickgelu_towers_keep_quickgelu(tmp_path):
    from open_clip.transformer import QuickGELU

    from dynrefer.model.encoder import build_open_clip

    clip = build_open_clip("ViT-B-32-quickgelu")
    assert isinstance(clip.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(clip.transformer.resblocks[0].mlp.gelu, QuickGELU)
    plain = build_open_clip("ViT-B-32")
    assert not isinstance(plain.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    bad = tmp_path / "bad.pt"
    torch.save({"visual.proj": torch.zeros(3)}, bad)
    with pytest.raises(InputError, match="do not load into open_clip model 'ViT-B-32'.*Missing key.*visual"):
        build_open_clip("ViT-B-32", weights=bad)
    with pytest.raises(InputError, match="registered open_clip name"):
        build_open_clip("hf-hub:someone/model", weights=bad)
