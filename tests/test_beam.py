"""The T5 beam search of dynrefer.model.heads.beam against transformers' ``generate`` (the slow
reference): the same sequences and scores on random T5s (relu / gated-gelu, tied / untied
embeddings, 2-3 beams, repetition and length penalties, padded prefixes, end tokens at random
steps) and on the built-in model; the language head falls back to ``generate`` where the fast
search does not apply."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from dynrefer.model.heads import beam

EOS, PAD = 1, 0


def _t5(ff: str, tied: bool, vocab: int = 12, seed: int = 0, eos_bias: float = 0.0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
                   feed_forward_proj=ff, tie_word_embeddings=tied, decoder_start_token_id=PAD, pad_token_id=PAD,
                   eos_token_id=EOS, relative_attention_num_buckets=8, relative_attention_max_distance=16)
    lm = T5ForConditionalGeneration(cfg).eval()
    # an end-token bias makes some sequences end early and others run to the length limit
    head = torch.nn.Linear(cfg.d_model, vocab, bias=True)
    with torch.no_grad():
        head.weight.copy_(lm.lm_head.weight)
        head.bias.zero_()
        head.bias[EOS] = eos_bias
    lm.lm_head = head
    return lm


def _prefix(batch: int, length: int, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, length, dim, generator=g)
    real = torch.randint(2, length + 1, (batch,), generator=g)
    mask = (torch.arange(length)[None, :] < real[:, None]).long()
    return embeds * mask[..., None], mask


def _reference(lm, embeds, mask, **settings):
    out = lm.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False, return_dict_in_generate=True,
                      output_scores=True, pad_token_id=PAD, eos_token_id=EOS, **settings)
    return out.sequences, out.sequences_scores


@pytest.mark.parametrize("ff,tied,eos_bias", [("relu", True, 1.5), ("gated-gelu", False, 20.0), ("relu", False, 10.0)])
@pytest.mark.parametrize("num_beams,repetition_penalty,length_penalty,max_new_tokens",
                         [(2, 1.5, 0.0, 20), (2, 1.0, 1.0, 9), (3, 1.5, 1.0, 14), (3, 1.2, 0.0, 3)])
def test_same_sequences_and_scores_as_generate(ff, tied, eos_bias, num_beams, repetition_penalty, length_penalty,
                                              max_new_tokens):
    lm = _t5(ff, tied, seed=num_beams, eos_bias=eos_bias)
    embeds, mask = _prefix(24, 6, 32, seed=max_new_tokens)
    settings = dict(num_beams=num_beams, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                    length_penalty=length_penalty)
    assert beam.supports(lm, settings, eos_token_id=EOS, pad_token_id=PAD)
    with torch.no_grad():
        ref_seq, ref_score = _reference(lm, embeds, mask, **settings)
    seq, score = beam.t5_beam_search(lm, embeds, mask, eos_token_id=EOS, pad_token_id=PAD, **settings)
    assert seq.shape == ref_seq.shape
    assert torch.equal(seq, ref_seq)
    assert torch.allclose(score, ref_score, atol=1e-5, rtol=0)
    ended = (seq == EOS).any(1)
    if max_new_tokens >= 9:  # the case is not trivial: some captions end early, some run to the limit
        assert 0 < int(ended.sum()) < seq.shape[0]


def test_length_limit_and_early_end_both_occur():
    lm = _t5("relu", True, seed=3, eos_bias=1.0)
    embeds, mask = _prefix(32, 5, 32, seed=11)
    seq, _ = beam.t5_beam_search(lm, embeds, mask, num_beams=2, max_new_tokens=12, repetition_penalty=1.5,
                                 length_penalty=0.0, eos_token_id=EOS, pad_token_id=PAD)
    ended = (seq[:, 1:-1] == EOS).any(1)  # the end token before the last position (then filled with it)
    assert 0 < int(ended.sum()) < seq.shape[0] and seq.shape[1] == 13
    ref_seq, _ = _reference(lm, embeds, mask, num_beams=2, max_new_tokens=12, repetition_penalty=1.5,
                            length_penalty=0.0)
    assert torch.equal(seq, ref_seq)


def test_supports_only_what_it_implements():
    lm = _t5("relu", True)
    ok = dict(num_beams=2, max_new_tokens=5)
    ids = dict(eos_token_id=EOS, pad_token_id=PAD)
    assert beam.supports(lm, ok, **ids)
    assert not beam.supports(lm, dict(ok, num_beams=1), **ids)  # greedy decoding is a different search
    assert not beam.supports(lm, dict(ok, do_sample=True), **ids)  # not a setting it implements
    assert not beam.supports(lm, ok, eos_token_id=None, pad_token_id=PAD)  # no end token
    lm.generation_config.no_repeat_ngram_size = 2
    assert not beam.supports(lm, ok, **ids)
    lm.generation_config.no_repeat_ngram_size = 0
    lm.train()
    assert not beam.supports(lm, ok, **ids)
    lm.eval()
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(_t5("relu", True), LoraConfig(r=2, target_modules=["q", "v"]))
    assert not beam.supports(peft, ok, **ids)


def test_language_head_uses_fast_search_and_falls_back(monkeypatch):
    import dynrefer
    from dynrefer.model.config import tiny_config

    torch.manual_seed(0)
    model = dynrefer.DynRefer(tiny_config(), tags=["red", "circle"]).eval()
    head = model.language_head
    region = torch.randn(6, 8, 64)
    controls = ["red,circle|", "|", "red|", "circle|", "|", "red,circle|"]
    with torch.no_grad():
        fast = head.generate(region, controls)
        slow = head.generate(region, controls, search="generate")
        called = []
        monkeypatch.setattr(beam, "t5_beam_search", lambda *a, **k: called.append(1))
        greedy = head.generate(region, controls, num_beams=1)  # not supported: falls back to generate
        sampled = head.generate(region, controls, do_sample=True, top_k=5)  # not a fast setting
    assert fast[0] == slow[0]
    assert max(abs(a - b) for a, b in zip(fast[1], slow[1])) < 1e-5
    assert not called and len(greedy[0]) == len(sampled[0]) == 6
    with pytest.raises(ValueError, match="search"):
        head.generate(region, controls, search="fast")
    # a real-size LM decodes with generate (the own search pays off only for small ones: scripts/bench_beam.py)
    assert beam.pays_off(head.lm)
    monkeypatch.setattr(beam, "SMALL_LM_PARAMS", 1000)
    assert not beam.pays_off(head.lm)
    with torch.no_grad():
        large = head.generate(region, controls)
    assert not called and large[0] == slow[0]


def test_builtin_model_same_captions_as_generate():
    from skimage import data

    from dynrefer.inference.predictor import Predictor

    predictor = Predictor("builtin")
    model = predictor.model
    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1).contiguous()
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=g) * 400
    wh = 20 + torch.rand(40, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + wh], 1).tolist()
    with torch.inference_mode():
        plan = predictor.engine.plan([image], [boxes])
        batch = predictor.engine.batch([image], plan)
        region = model.encode_regions(batch["pixels"], batch["boxes_in_view"], batch["view_index"])
        tags = [[n for n, _ in t] for t in model.predict_tags(region)]
        fast, fast_scores = model.caption(region, tags)
        slow, slow_scores = model.caption(region, tags, search="generate")
    assert fast == slow
    assert max(abs(a - b) for a, b in zip(fast_scores, slow_scores)) < 1e-4
    assert len(set(fast)) > 5  # the regions differ: not one caption repeated


@pytest.mark.parametrize("ff,tied,eos_bias", [("relu", True, 1.5), ("gated-gelu", False, 20.0)])
def test_bfloat16_model_and_autocast(ff, tied, eos_bias):
    """Half-precision paths run (the official model is often converted to bf16) and agree with generate up to
    bf16 rounding: a logit of magnitude ~30 has a resolution of 0.125 in bf16, so one-ulp differences between two
    orders of the same arithmetic move a sequence score by ~0.1 and could in principle flip a near-tie."""
    settings = dict(num_beams=2, max_new_tokens=20, repetition_penalty=1.5, length_penalty=0.0)
    embeds, mask = _prefix(24, 6, 32, seed=20)
    for mode in ("bf16 weights", "autocast"):
        lm = _t5(ff, tied, seed=2, eos_bias=eos_bias)
        if mode == "bf16 weights":
            lm, x = lm.to(torch.bfloat16), embeds.to(torch.bfloat16)
        else:
            x = embeds
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
            ref_seq, ref_score = _reference(lm, x, mask, **settings)
            seq, score = beam.t5_beam_search(lm, x, mask, eos_token_id=EOS, pad_token_id=PAD, **settings)
        assert seq.shape == ref_seq.shape and score.dtype == torch.float32
        assert float((seq == ref_seq).all(1).float().mean()) >= 0.9, mode  # measured: 1.0 in both modes
        assert float((score - ref_score).abs().max()) < 0.5, mode  # measured: ≤ 0.18
