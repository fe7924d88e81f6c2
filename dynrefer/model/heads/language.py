"""Language decoder (SPEC §1.4): a Hugging Face LM conditioned on ``R`` and control tokens.

``R`` (Q × hidden) is projected into the LM's embedding space and followed by *control
tokens*: the embedded control string (tags joined by ``","`` then ``"|"``, e.g.
``"red car,street|"``) plus one learned vector added to every control token. Seq2seq LMs
(T5 family) read ``[proj(R); control]`` in the encoder and produce the caption in the
decoder; causal LMs (Llama-style) read ``[proj(R); control; caption]``. Generation defaults
are the official ones (beams 2, 20 new tokens, repetition penalty 1.5, length penalty 0);
the caption score is ``exp(sequence score)``.

The LM comes from a local folder (``LanguageConfig.path``; frozen by default, optional
LoRA through peft) or from a transformers config dict (trained from scratch). Tokenizers
come from the same folder, ``tokenizer_path``, or ``"builtin:char"`` (a character-level
tokenizer built in code, for tiny models).
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InputError
from ..config import LanguageConfig
from . import beam

CHAR_TOKENIZER = "builtin:char"


def build_char_tokenizer():
    """A character-level fast tokenizer: pad 0, eos 1, unk 2, then printable ASCII."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for c in chars:
        vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_word_tokenizer(words):
    """A word-level fast tokenizer over ``words`` (lower-cased, split on whitespace and
    punctuation): pad 0, eos 1, unk 2, then the words in the given order. For models trained
    from scratch on a closed vocabulary (the built-in model's scene captions)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in words:
        word = str(word).lower()
        if word and word not in vocab:
            vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def load_tokenizer(source: str | None):
    if source is None or source == CHAR_TOKENIZER:
        return build_char_tokenizer()
    from transformers import AutoTokenizer

    path = Path(source)
    if not path.is_dir():
        raise InputError(f"cannot read tokenizer folder '{path}': no such folder")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as err:  # json / tokenizers parse errors are ValueErrors
        raise InputError(f"cannot load the tokenizer in '{path}': {type(err).__name__}: {err}") from None


def build_language_model(cfg: LanguageConfig, vocab_size: int | None = None):
    """``(model, tokenizer)`` from a local folder or a config dict; never downloads. ``cfg.dense_act_fn``
    replaces the LM's feed-forward activation (T5 family) before it is built."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    if cfg.kind not in ("seq2seq", "causal"):
        raise InputError(f"language.kind must be 'seq2seq' or 'causal', got {cfg.kind!r}")
    auto = AutoModelForSeq2SeqLM if cfg.kind == "seq2seq" else AutoModelForCausalLM
    if cfg.path:
        path = Path(cfg.path)
        if not path.is_dir():
            raise InputError(f"cannot read language model folder '{path}': no such folder")
        hf_cfg = _with_activation(AutoConfig.from_pretrained(str(path), local_files_only=True), cfg.dense_act_fn)
        # float32 like every other part (transformers 5 would keep a half-precision folder in half, dtype="auto");
        # a model runs in half precision when cast as a whole, or under autocast
        model = auto.from_pretrained(str(path), config=hf_cfg, local_files_only=True, dtype=torch.float32)
        tokenizer = load_tokenizer(cfg.tokenizer_path or str(path))
        return model, tokenizer
    if not cfg.model_config:
        raise InputError("language: give either 'path' (a local Hugging Face folder) or 'model_config'")
    tokenizer = load_tokenizer(cfg.tokenizer_path)
    kwargs = dict(cfg.model_config)
    model_type = kwargs.pop("model_type")
    kwargs.setdefault("vocab_size", len(tokenizer))
    kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
    if cfg.kind == "seq2seq":
        kwargs.setdefault("decoder_start_token_id", tokenizer.pad_token_id)
    hf_cfg = _with_activation(AutoConfig.for_model(model_type, **kwargs), cfg.dense_act_fn)
    if hf_cfg.vocab_size < len(tokenizer):
        raise InputError(f"language.model_config vocab_size {hf_cfg.vocab_size} < tokenizer size {len(tokenizer)}")
    return auto.from_config(hf_cfg), tokenizer


def _with_activation(hf_cfg, dense_act_fn: str | None):
    """``hf_cfg`` with its feed-forward activation replaced (None: as it is)."""
    if dense_act_fn is None:
        return hf_cfg
    from transformers.activations import ACT2FN

    if not hasattr(hf_cfg, "dense_act_fn"):
        raise InputError(f"language.dense_act_fn applies to T5-family LMs; a {type(hf_cfg).__name__} has none")
    if dense_act_fn not in ACT2FN:
        raise InputError(f"language.dense_act_fn {dense_act_fn!r} is not a transformers activation "
                         f"(e.g. 'gelu', 'gelu_new', 'relu')")
    hf_cfg.dense_act_fn = dense_act_fn
    return hf_cfg


def control_string(tags) -> str:
    """``"tag1,tag2|"``: tags in the given (deterministic) order, joined by "," then "|"."""
    return ",".join(str(t) for t in tags) + "|"


class LanguageHead(nn.Module):
    """Captioning with a Hugging Face LM on top of ``R``."""

    def __init__(self, cfg: LanguageConfig, region_dim: int):
        super().__init__()
        self.cfg = cfg
        self.lm, self.tokenizer = build_language_model(cfg)
        self.is_seq2seq = cfg.kind == "seq2seq"
        d_model = self.lm.get_input_embeddings().embedding_dim
        self.proj = nn.Linear(region_dim, d_model)
        self.control_vector = nn.Parameter(torch.zeros(d_model))
        frozen = cfg.frozen if cfg.frozen is not None else bool(cfg.path)
        if frozen:
            for p in self.lm.parameters():
                p.requires_grad_(False)
        if cfg.lora_r > 0:
            self._add_lora()

    def _add_lora(self) -> None:
        from peft import LoraConfig, get_peft_model

        names = {n.split(".")[-1] for n, m in self.lm.named_modules() if isinstance(m, nn.Linear)}
        targets = [t for t in ("q", "v", "q_proj", "v_proj") if t in names]
        if not targets:
            raise InputError(f"cannot find attention projections for LoRA in {type(self.lm).__name__}")
        lora = LoraConfig(r=self.cfg.lora_r, lora_alpha=self.cfg.lora_alpha, lora_dropout=self.cfg.lora_dropout,
                          target_modules=targets)
        self.lm = get_peft_model(self.lm, lora)

    # --------------------------------------------------------------------- embeddings
    def _tokens(self, texts: list[str], add_eos: bool) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(list(texts), add_special_tokens=add_eos, padding=True, truncation=True,
                             max_length=self.cfg.max_caption_tokens, return_tensors="pt")
        device = self.proj.weight.device
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)

    def _prefix(self, region: torch.Tensor, controls: list[str]):
        """``[proj(R); control + vector]`` embeddings and mask, right-padded: (B, L, d), (B, L)."""
        ids, mask = self._tokens(controls, add_eos=self.cfg.control_eos)
        embed = self.lm.get_input_embeddings()
        ctrl = embed(ids) + self.control_vector.to(embed.weight.dtype)
        ctrl = ctrl * mask[..., None].to(ctrl.dtype)
        vis = self.proj(region).to(ctrl.dtype)
        vis_mask = torch.ones(vis.shape[:2], dtype=mask.dtype, device=mask.device)
        return torch.cat([vis, ctrl], dim=1), torch.cat([vis_mask, mask], dim=1)

    # -------------------------------------------------------------------------- training
    def teacher_forced(self, region: torch.Tensor, controls: list[str], captions: list[str]):
        """``(output, labels)``: the LM's output (``.logits``, ``.loss`` = mean token cross-entropy) on
        ``captions`` (with their end token) given ``R`` and control strings, and the labels it was scored on
        (-100 where there is no token). Seq2seq LMs get the captions' padding as the decoder's attention mask,
        as the original does (it changes the logits at padded positions only); causal LMs read
        ``[prefix; caption]`` (labels aligned with that sequence)."""
        prefix, prefix_mask = self._prefix(region, controls)
        ids, mask = self._tokens(captions, add_eos=True)
        labels = ids.masked_fill(mask == 0, -100)
        if self.is_seq2seq:
            out = self.lm(inputs_embeds=prefix, attention_mask=prefix_mask, labels=labels, decoder_attention_mask=mask)
            return out, labels
        text = self.lm.get_input_embeddings()(ids)
        embeds, attn, full_labels = _pack_causal(prefix, prefix_mask, text, mask, labels)
        return self.lm(inputs_embeds=embeds, attention_mask=attn, labels=full_labels), full_labels

    def loss(self, region: torch.Tensor, controls: list[str], captions: list[str]) -> torch.Tensor:
        """Mean token cross-entropy of ``captions`` given ``R`` and control strings, in float32 whatever the LM's
        precision (the LM's own ``.loss`` is in its logits' dtype)."""
        out, labels = self.teacher_forced(region, controls, captions)
        logits = out.logits
        if not self.is_seq2seq:  # position i predicts token i + 1
            logits, labels = logits[:, :-1], labels[:, 1:]
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)

    @torch.no_grad()
    def log_likelihood(self, region: torch.Tensor, controls: list[str], captions: list[str]) -> torch.Tensor:
        """Summed token log-probabilities (B,) of ``captions`` (with their end token) given ``R`` and
        control strings: per caption, ``-loss * tokens`` of :meth:`loss` on that caption alone."""
        out, labels = self.teacher_forced(region, controls, captions)
        logits = out.logits
        if not self.is_seq2seq:  # position i predicts token i + 1
            logits, labels = logits[:, :-1], labels[:, 1:]
        lp = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        return (lp * (labels != -100)).sum(-1)

    # ------------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, region: torch.Tensor, controls: list[str], *, search: str = "auto",
                 **overrides) -> tuple[list[str], list[float]]:
        """Captions and scores (``exp`` of the sequence score) for each region.

        ``search``: ``"auto"`` decodes a small plain T5 LM with :func:`~dynrefer.model.heads.beam.t5_beam_search`
        (the same beam search as ``generate``, without its per-step overhead) whenever
        :func:`~dynrefer.model.heads.beam.supports` allows and :func:`~dynrefer.model.heads.beam.pays_off` (at
        most 20 M parameters: the built-in model's), and with ``generate`` otherwise;
        ``"generate"`` always uses transformers' ``generate``. ``overrides``: ``generate`` keywords.
        """
        if search not in ("auto", "generate"):
            raise ValueError(f"search must be 'auto' or 'generate', got {search!r}")
        prefix, prefix_mask = self._prefix(region, controls)
        if not self.is_seq2seq:
            prefix, prefix_mask = _left_pad(prefix, prefix_mask)
        c = self.cfg
        settings = dict(num_beams=c.num_beams, max_new_tokens=c.max_new_tokens,
                        repetition_penalty=c.repetition_penalty, length_penalty=c.length_penalty)
        settings.update(overrides)
        ids = dict(eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id)
        if search == "auto" and beam.supports(self.lm, settings, **ids) and beam.pays_off(self.lm):
            sequences, scores = beam.t5_beam_search(self.lm, prefix, prefix_mask, **ids, **settings)
            return self._decode(sequences), torch.exp(scores.float()).tolist()
        kwargs = dict(do_sample=False, return_dict_in_generate=True, output_scores=True, **ids)
        kwargs.update(settings)
        out = self.lm.generate(inputs_embeds=prefix, attention_mask=prefix_mask, **kwargs)
        sequences = out.sequences
        if getattr(out, "sequences_scores", None) is not None:
            scores = out.sequences_scores
        else:
            trans = self.lm.compute_transition_scores(sequences, out.scores, normalize_logits=True)
            scores = trans.sum(-1)
        return self._decode(sequences), torch.exp(scores.float()).tolist()

    def _decode(self, sequences) -> list[str]:
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        return [t.strip() for t in texts] if self.cfg.strip_captions else texts


def _pack_causal(prefix, prefix_mask, text, text_mask, labels):
    """Per sample ``[prefix tokens; caption tokens]`` without inner padding, right-padded."""
    rows, labs = [], []
    for i in range(prefix.shape[0]):
        p = prefix[i][prefix_mask[i].bool()]
        t = text[i][text_mask[i].bool()]
        rows.append(torch.cat([p, t]))
        lab = torch.full((p.shape[0],), -100, dtype=labels.dtype, device=labels.device)
        labs.append(torch.cat([lab, labels[i][text_mask[i].bool()]]))
    length = max(r.shape[0] for r in rows)
    embeds = prefix.new_zeros((len(rows), length, prefix.shape[-1]))
    attn = prefix_mask.new_zeros((len(rows), length))
    out_labels = labels.new_full((len(rows), length), -100)
    for i, (r, lab) in enumerate(zip(rows, labs)):
        embeds[i, : r.shape[0]] = r
        attn[i, : r.shape[0]] = 1
        out_labels[i, : r.shape[0]] = lab
    return embeds, attn, out_labels


def _left_pad(prefix, mask):
    """Move each row's padding to the left (decoder-only generation needs it)."""
    out = torch.zeros_like(prefix)
    out_mask = torch.zeros_like(mask)
    length = prefix.shape[1]
    for i in range(prefix.shape[0]):
        keep = mask[i].bool()
        n = int(keep.sum())
        out[i, length - n :] = prefix[i][keep]
        out_mask[i, length - n :] = 1
    return out, out_mask
