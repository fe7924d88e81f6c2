"""Beam search over a T5 language model without ``generate``'s per-step overhead.

``transformers``' ``generate`` spends most of a small model's decoding time outside the model
(logits processors, stopping criteria, cache objects, mask construction: about 5 ms a step for
the built-in model's 2-layer T5 on a 2-core CPU, ~0.3 ms of it arithmetic). This module runs the
same search with the T5 modules' own weights in plain tensor operations and a tensor KV cache:

* the encoder is the model's own (``lm.get_encoder()``), run once over the prefix;
* each decoder step is T5's pre-norm block (RMS norm, self-attention with the first block's
  relative position bias, cross-attention over the encoder states with the prefix mask, the
  feed-forward module), the final norm, the ``d_model ** -0.5`` rescale when the config asks for
  it, and the LM head — attention through ``scaled_dot_product_attention`` with the bias as the
  additive mask and scale 1, as transformers' ``sdpa`` path does;
* the search is transformers' vectorised beam search (``GenerationMixin._beam_search``,
  transformers >= 4.50) step for step: log-softmax in float32, the repetition penalty on every
  token of each running sequence (the start token included), the top ``2·num_beams``
  continuations of the accumulated scores, the ``-1e9`` masks, finished hypotheses scored
  ``sum_logprobs / length ** length_penalty``, the ``early_stopping=False`` heuristic, stopping
  at ``max_new_tokens``.

Only what DynRefer's generation uses is supported (beams >= 2, no sampling, no other logits
processors); :func:`supports` says whether a model and settings qualify, and
:class:`~dynrefer.model.heads.language.LanguageHead` falls back to ``generate`` otherwise.
``tests/test_beam.py`` compares captions and scores with ``generate``.

Why it is kept, and where it is used (``scripts/bench_beam.py``, one caption call over 4 regions on this 2-core
CPU, medians of 3 interleaved runs, the same captions both ways): the built-in model's 0.7 M-parameter T5 decodes
1.6-2.8x faster (0.023 s against ``generate``'s 0.064 s on a quiet machine); a T5-base-sized LM (223 M) gained
0.97x and 1.72x in two runs, and a Flan-T5-large-sized one (750 M) 0.95x: there the arithmetic dwarfs
``generate``'s per-step overhead, as it does for Flan-T5-XL. So ``search="auto"`` uses it only for LMs of at
most :data:`SMALL_LM_PARAMS` parameters (:func:`pays_off`); real-size LMs, the official model's included,
decode with ``generate``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["supports", "t5_beam_search"]

#: generation settings this search implements (anything else goes through ``generate``).
FAST_SETTINGS = {"num_beams", "max_new_tokens", "repetition_penalty", "length_penalty"}
# generation_config fields whose non-default values would add logits processors or change the search
_NEUTRAL = {"min_length": (0, None), "min_new_tokens": (None, 0), "no_repeat_ngram_size": (None, 0),
            "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,), "forced_bos_token_id": (None,),
            "forced_eos_token_id": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
            "sequence_bias": (None,), "num_beam_groups": (None, 1), "diversity_penalty": (None, 0.0),
            "encoder_repetition_penalty": (None, 1.0), "exponential_decay_length_penalty": (None,),
            "num_return_sequences": (None, 1), "renormalize_logits": (None, False), "low_memory": (None, False),
            "early_stopping": (None, False), "stop_strings": (None,), "max_length": None}


#: the largest LM (parameters) that ``search="auto"`` decodes with :func:`t5_beam_search` (see the module docstring)
SMALL_LM_PARAMS = 20_000_000


def pays_off(lm: nn.Module) -> bool:
    """Whether the own beam search is worth it for ``lm``: a small LM, where ``generate``'s per-step overhead
    (~5 ms a step here) is comparable to the arithmetic."""
    return sum(p.numel() for p in lm.parameters()) <= SMALL_LM_PARAMS


def supports(lm: nn.Module, settings: dict, *, eos_token_id=None, pad_token_id=None) -> bool:
    """Whether :func:`t5_beam_search` reproduces ``lm.generate(**settings)``: a plain (not
    PEFT-wrapped) ``T5ForConditionalGeneration`` in eval mode whose decoder layers are plain
    ``nn.Linear``, beam search with at least two beams, no setting outside :data:`FAST_SETTINGS`,
    integer end and pad ids."""
    from transformers import T5ForConditionalGeneration

    if not (isinstance(eos_token_id, int) and isinstance(pad_token_id, int)) or not set(settings) <= FAST_SETTINGS:
        return False
    if type(lm) is not T5ForConditionalGeneration or lm.training:
        return False
    if any(type(m) is not nn.Linear for m in lm.decoder.modules() if isinstance(m, nn.Linear)):
        return False
    if type(lm.lm_head) is not nn.Linear or int(settings.get("num_beams", 1)) < 2:
        return False
    if lm.lm_head.weight.dtype == torch.float16 or _float16_autocast(lm.lm_head.weight.device.type):
        return False  # T5 clamps float16 activations against overflow; generate does
    cfg = lm.generation_config
    for name, allowed in _NEUTRAL.items():
        if allowed is not None and getattr(cfg, name, None) not in allowed:
            return False
    return True


def _float16_autocast(device_type: str) -> bool:
    """Whether float16 autocast is on for ``device_type`` (the products would run in float16)."""
    try:
        return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16
    except (RuntimeError, TypeError):  # a device type without autocast
        return False


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(N, L, H·d) -> (N, H, L, d)."""
    return x.view(x.shape[0], x.shape[1], n_heads, -1).transpose(1, 2)


def _rms_norm(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``T5LayerNorm.forward`` without the module call: variance in float32, half weights cast to."""
    h = h * torch.rsqrt(h.to(torch.float32).pow(2).mean(-1, keepdim=True) + eps)
    if weight.dtype in (torch.float16, torch.bfloat16):
        h = h.to(weight.dtype)
    return weight * h


def _plain_relu_ffn(ff: nn.Module):
    """(wi, wo) weights of a bias-free ``T5DenseActDense`` with ReLU and equal dtypes, else None (the
    module is called as it is)."""
    from transformers.models.t5.modeling_t5 import T5DenseActDense

    if type(ff) is not T5DenseActDense or not isinstance(ff.act, nn.ReLU):
        return None
    if ff.wi.bias is not None or ff.wo.bias is not None or ff.wi.weight.dtype != ff.wo.weight.dtype:
        return None
    return ff.wi.weight, ff.wo.weight


class _T5Decoder:
    """Incremental T5 decoder: one token per sequence per :meth:`step`, KV cache as tensors. The weights
    of every block are looked up once (no module calls inside a step but the feed-forward of non-ReLU
    T5s)."""

    def __init__(self, lm, encoder_states: torch.Tensor, encoder_mask: torch.Tensor, max_length: int):
        self.lm, self.dec = lm, lm.decoder
        self.n_heads = lm.config.num_heads
        min_value = torch.finfo(encoder_states.dtype).min
        # (N, 1, 1, L_enc): 0 where the prefix is real, the dtype's minimum where it is padding
        self.cross_bias = torch.where(encoder_mask.bool()[:, None, None, :], 0.0, min_value).to(encoder_states.dtype)
        self.cross, self.blocks = [], []
        for block in self.dec.block:
            own, cross, ff = block.layer
            attn = cross.EncDecAttention
            # keys pre-transposed for the score product, (N, H, d, L_enc), and values (N, H, L_enc, d), both
            # contiguous: a transposed view would be copied by every step's matmul
            self.cross.append((_heads(attn.k(encoder_states), self.n_heads).transpose(2, 3).contiguous(),
                               _heads(attn.v(encoder_states), self.n_heads).contiguous()))
            sa = own.SelfAttention
            self.blocks.append(dict(
                norms=[(layer.layer_norm.weight, layer.layer_norm.variance_epsilon) for layer in block.layer],
                qkv=torch.cat([sa.q.weight, sa.k.weight, sa.v.weight]), self_o=sa.o.weight,
                cross_q=attn.q.weight, cross_o=attn.o.weight, ff=ff.DenseReluDense,
                relu_ff=_plain_relu_ffn(ff.DenseReluDense)))
        final = self.dec.final_layer_norm
        self.final_norm = (final.weight, final.variance_epsilon)
        self.keys: list[torch.Tensor | None] = [None] * len(self.dec.block)
        self.values: list[torch.Tensor | None] = [None] * len(self.dec.block)
        self.position = 0
        # relative position bias of every (query, key) pair up to max_length, computed once: (1, H, L, L)
        attn = self.dec.block[0].layer[0].SelfAttention
        self.bias = attn.compute_bias(max_length, max_length, device=encoder_states.device).to(encoder_states.dtype)
        self.scale_output = getattr(lm.config, "scale_decoder_outputs", lm.config.tie_word_embeddings)

    def reorder(self, index: torch.Tensor) -> None:
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N,) next input tokens -> (N, V) float32 logits."""
        n, heads = tokens.shape[0], self.n_heads
        h = self.dec.embed_tokens(tokens[:, None])
        t = self.position
        bias = self.bias[:, :, t : t + 1, : t + 1]
        for i, w in enumerate(self.blocks):
            (n0, e0), (n1, e1), (n2, e2) = w["norms"]
            q, k, v = F.linear(_rms_norm(h, n0, e0), w["qkv"]).view(n, 3, heads, 1, -1).unbind(1)  # (N, H, 1, d)
            self.keys[i] = k if self.keys[i] is None else torch.cat([self.keys[i], k], dim=2)
            self.values[i] = v if self.values[i] is None else torch.cat([self.values[i], v], dim=2)
            out = _attend(q, self.keys[i].transpose(2, 3), self.values[i], bias)
            h = h + F.linear(out.reshape(n, 1, -1), w["self_o"])
            q = F.linear(_rms_norm(h, n1, e1), w["cross_q"]).view(n, heads, 1, -1)
            out = _attend(q, *self.cross[i], self.cross_bias)
            h = h + F.linear(out.reshape(n, 1, -1), w["cross_o"])
            normed = _rms_norm(h, n2, e2)
            if w["relu_ff"] is None:
                h = h + w["ff"](normed)
            else:
                wi, wo = w["relu_ff"]
                h = h + F.linear(torch.relu(F.linear(normed, wi)).to(wo.dtype), wo)
        h = _rms_norm(h, *self.final_norm)
        if self.scale_output:
            h = h * (self.lm.model_dim ** -0.5)
        self.position += 1
        return self.lm.lm_head(h[:, -1]).to(torch.float32)


def _attend(q: torch.Tensor, keys_t: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """T5 attention (no 1/sqrt(d) scale): softmax(q·kᵀ + bias)·v in the query's dtype."""
    scores = torch.matmul(q, keys_t) + bias
    if scores.dtype in (torch.float16, torch.bfloat16):  # softmax in float32, as SDPA's CPU kernels accumulate
        return torch.matmul(torch.softmax(scores.float(), dim=-1).to(values.dtype), values)
    return torch.matmul(torch.softmax(scores, dim=-1), values)


@torch.no_grad()
def t5_beam_search(lm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, *, num_beams: int,
                   max_new_tokens: int, repetition_penalty: float = 1.0, length_penalty: float = 1.0,
                   eos_token_id: int, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search of ``lm`` (a T5) from an embedded encoder input.

    Args:
        inputs_embeds: (B, L, d) encoder input embeddings; attention_mask: (B, L) (1 = real).
    Returns:
        sequences (B, T) of token ids (decoder start token first, then filled as ``generate`` fills) and
        their scores (B,): the summed log-probabilities over ``length ** length_penalty``, as
        ``generate(..., output_scores=True).sequences_scores``.
    """
    batch, nb = inputs_embeds.shape[0], int(num_beams)
    device = inputs_embeds.device
    encoder_states = lm.get_encoder()(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                      return_dict=True).last_hidden_state
    start = lm.config.decoder_start_token_id
    max_length = 1 + int(max_new_tokens)
    decoder = _T5Decoder(lm, encoder_states.repeat_interleave(nb, dim=0), attention_mask.repeat_interleave(nb, dim=0),
                         max_length)
    keep = 2 * nb  # max(2, 1 + number of end tokens) · num_beams with one end token
    top_num_beam_mask = torch.arange(keep, device=device) < nb
    # generate's fill value (``pad_token_id or eos_token_id``: a pad id of 0 fills with the end token)
    fill = pad_token_id if pad_token_id else eos_token_id
    running = torch.full((batch, nb, max_length), fill, dtype=torch.int64, device=device)
    running[:, :, 0] = start
    sequences = running.clone()
    running_scores = torch.zeros((batch, nb), dtype=torch.float32, device=device)
    running_scores[:, 1:] = -1e9
    beam_scores = torch.full((batch, nb), -1e9, dtype=torch.float32, device=device)
    finished = torch.zeros((batch, nb), dtype=torch.bool, device=device)
    improvable = torch.ones((batch, 1), dtype=torch.bool, device=device)
    batch_offset = torch.arange(batch, device=device)[:, None] * nb
    rows = torch.arange(batch, device=device)[:, None]
    cur_len = 1
    while True:
        flat = running[:, :, :cur_len].reshape(batch * nb, cur_len)
        log_probs = F.log_softmax(decoder.step(flat[:, -1]), dim=-1)
        vocab = log_probs.shape[-1]
        if repetition_penalty != 1.0:
            seen = torch.gather(log_probs, 1, flat)
            seen = torch.where(seen < 0, seen * repetition_penalty, seen / repetition_penalty)
            log_probs = log_probs.scatter(1, flat, seen)
        log_probs = (log_probs.view(batch, nb, vocab) + running_scores[:, :, None]).reshape(batch, nb * vocab)
        topk_scores, topk_index = torch.topk(log_probs, k=keep)
        source_beam, token = topk_index // vocab, topk_index % vocab
        candidates = running[rows, source_beam]  # (B, keep, max_length), a copy
        candidates[:, :, cur_len] = token
        hits = token == eos_token_id
        if cur_len + 1 >= max_length:
            hits = torch.ones_like(hits)
        # running beams for the next step: the best non-finished candidates
        masked = topk_scores + hits.to(torch.float32) * -1.0e9
        chosen = torch.topk(masked, k=nb)[1]
        running = candidates[rows, chosen]
        running_scores = masked[rows, chosen]
        parent = source_beam[rows, chosen]
        # finished hypotheses: merge the candidates that just ended among the top num_beams
        just_finished = hits & top_num_beam_mask[None, :]
        final = topk_scores / ((cur_len + 1 - 1) ** length_penalty)
        final = final + (~improvable).to(torch.float32) * -1.0e9
        final = final + (~just_finished) * -1.0e9
        merged_scores = torch.cat([beam_scores, final], dim=1)
        best = torch.topk(merged_scores, k=nb)[1]
        sequences = torch.cat([sequences, candidates], dim=1)[rows, best]
        beam_scores = merged_scores[rows, best]
        finished = torch.cat([finished, just_finished], dim=1)[rows, best]
        decoder.reorder((batch_offset + parent).reshape(-1))
        cur_len += 1
        best_running = running_scores[:, :1] / ((cur_len - 1) ** length_penalty)
        worst_finished = torch.where(finished, torch.min(beam_scores, dim=1, keepdim=True)[0], -1.0e9)
        improvable = improvable & torch.any(best_running > worst_finished, dim=-1, keepdim=True)
        if not (bool(improvable.any()) and not bool(hits.all())):
            break
    # generate crops to the longest returned hypothesis: one ends at its first end token (running
    # beams never hold one), or at the length limit
    best_seq = sequences[:, 0]
    ends = best_seq[:, 1:] == eos_token_id
    last = torch.where(ends.any(1), ends.to(torch.int64).argmax(1) + 1, max_length - 1)
    return best_seq[:, : int(last.max()) + 1], beam_scores[:, 0]
