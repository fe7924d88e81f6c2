"""Typed model configuration (SPEC §1.3–§1.4), round-tripping through JSON and YAML.

``DynReferConfig`` nests one dataclass per part. ``DynReferConfig.from_dict`` checks every
key and type and fails with an error naming the offending key (``encoder.drop_last_blocks:
expected int, got str``); unknown keys are errors too. Named configurations: ``"tiny"``
(random weights, builds in seconds on a CPU; tests), ``"mid"`` (ViT-B/16 + a t5-base-sized
LM) and ``"official"`` (EVA-CLIP-g/14 at 224 px, last block dropped, ``ln_vision``,
Q-Former with 32 queries, Flan-T5-XL) — see :data:`NAMED_CONFIGS` and ``configs/model/``.

Pretrained parts are always **local paths** (``encoder.weights``, ``qformer.init_from``,
``language.path``, ...); nothing is downloaded.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_checks import ConfigError, _build, merge_dicts, overrides_from_json  # noqa: F401 (part of this API)


@dataclass


class ViewsConfig:
    """Multi-view input (SPEC §1.1): n views of ``size``×``size`` pixels."""

    num_views: int = 3
    size: int = 224
    policy: str = "greedy"  # inference policy: greedy | greedy_unique | random | fixed
    fixed_ts: list[float] | None = None
    hash_flavour: str = "official"
    train_policy: str = "random"
    base_t: float = 0.0  # t of view 0: 0 = the region (SPEC); 1.0 only for the whole-image ablation arm


@dataclass


class EncoderConfig:
    """Frozen open_clip vision tower (SPEC §1.3.1).

    ``model`` is an open_clip model name (``"EVA01-g-14"``, ``"ViT-B-16"``, ...) or an inline
    open_clip model config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``). ``weights``
    is a local checkpoint file of that model (vision + text towers), or None for random.
    """

    model: Any = "ViT-B-16"
    weights: str | None = None
    #: Keyword arguments of ``timm.create_model`` for a timm-backed vision tower (open_clip passes none through):
    #: the trunk's sizes, e.g. ``{"embed_dim": 128, "depth": 4, "num_heads": 2, "mlp_ratio": 4.3637,
    #: "patch_size": 14}`` for a reduced EVA ViT-g. None: the sizes of ``vision_cfg.timm_model_name``.
    timm_kwargs: dict | None = None
    drop_last_blocks: int = 0
    final_norm: bool = True
    extra_norm: bool = False
    extra_norm_eps: float = 1e-5
    extra_norm_weights: str | None = None


@dataclass


class RoIConfig:
    """RoI-align of the region's view box on each view's patch map (SPEC §1.3.2)."""

    output_size: int | None = None  # None: the patch grid size (16 for 224 px / patch 14)
    sampling_ratio: int = 2
    aligned: bool = False
    #: The box RoI-align pools, as the official processor passes it: the clipped region box truncated to
    #: integers, moved to the integer crop origin, rescaled and truncated again (SPEC §1.1). True for the
    #: official configuration and every converted checkpoint (trained on it); False keeps float precision.
    truncate_boxes: bool = False


@dataclass


class AlignConfig:
    """Deformable alignment of views k ≥ 1 to view 0 (SPEC §1.3.3)."""

    enabled: bool = True
    groups: int = 4
    kernel_size: int = 3
    #: ``"zero"`` (official DCNv4 init: extra views add exactly 0 until learned in) or
    #: ``"identity"`` (modulation 1 at the centre kernel point: extra views pass through
    #: ``output_proj(value_proj(view))`` from the first step). Only the initialisation differs.
    init: str = "zero"


@dataclass


class QFormerConfig:
    """BLIP-2 Q-Former (SPEC §1.3.5). ``init_from``: a local BLIP-2 or BERT folder, or None."""

    num_query_tokens: int = 32
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_frequency: int = 2
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    init_from: str | None = None
    freeze_query_tokens: bool = True


@dataclass


class TagHeadConfig:
    """Tag decoder (SPEC §1.4): tags as queries over R, asymmetric loss."""

    enabled: bool = True
    vocab_file: str | None = None
    dim: int = 256
    num_layers: int = 2
    num_heads: int = 4
    ffn_dim: int = 1024
    threshold: float = 0.7
    loss_weight: float = 0.01
    gamma_neg: float = 7.0
    gamma_pos: float = 0.0
    clip: float = 0.05
    eps: float = 1e-8


@dataclass


class ContrastiveHeadConfig:
    """SigLIP-style contrastive decoder for attributes and categories (SPEC §1.4)."""

    enabled: bool = True
    dim: int = 256
    num_layers: int = 2
    num_heads: int = 4
    ffn_dim: int = 1024
    loss_weight: float = 0.5
    init_logit_scale: float = math.log(10.0)
    init_logit_bias: float = -10.0
    none_threshold: float | None = None
    #: Inference scores. ``"calibrated"``: attributes ``sigmoid(s·exp(t) + b)``, classes the softmax of the
    #: SigLIP logits. ``"official"`` (the original's evaluation): attributes ``sigmoid(s)``, classes the raw
    #: ``s`` (argmax), ``t`` and ``b`` unused.
    scores: str = "calibrated"
    #: The noun of the attribute prompts (``"the {attr} {noun}"``); the original uses an empty one.
    prompt_noun: str = "object"
    #: Extra synonyms per attribute name (OVAD ``"type:syn1/syn2"``), added to its prompts; the original expands
    #: OVAD's maturity attributes (:data:`OVAD_MATURITY_SYNONYMS`).
    extra_synonyms: dict | None = None


@dataclass


class LanguageConfig:
    """Language decoder (SPEC §1.4). ``path``: a local Hugging Face folder, or None with
    ``model_config`` (a transformers config dict) and ``tokenizer_path`` for a model trained
    from scratch."""

    enabled: bool = True
    kind: str = "seq2seq"  # seq2seq (T5 family) | causal
    path: str | None = None
    model_config: dict | None = None
    tokenizer_path: str | None = None
    frozen: bool | None = None  # None: frozen when pretrained (path given), trained otherwise
    lora_r: int = 0
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    num_beams: int = 2
    max_new_tokens: int = 20
    repetition_penalty: float = 1.5
    length_penalty: float = 0.0
    #: Token limit of control strings and captions (the original's ``max_txt_len`` is 32).
    max_caption_tokens: int = 40
    control_dropout: float = 0.5
    #: Tokenise the control string with the tokenizer's special tokens (T5: ``</s>`` at the end), as the
    #: original does; False: the bare string.
    control_eos: bool = False
    #: The LM's feed-forward activation, replacing the folder's (the original runs Flan-T5 with ``"gelu"``,
    #: exact GELU, whatever its config says: ``gelu_new``). None: the folder's own.
    dense_act_fn: str | None = None
    #: Strip white space around generated captions (the original returns them as decoded).
    strip_captions: bool = True


@dataclass


class DynReferConfig:
    """The whole model."""

    name: str = "custom"
    views: ViewsConfig = field(default_factory=ViewsConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    roi: RoIConfig = field(default_factory=RoIConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    tags: TagHeadConfig = field(default_factory=TagHeadConfig)
    contrastive: ContrastiveHeadConfig = field(default_factory=ContrastiveHeadConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, path=None, indent: int = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def to_yaml(self, path=None) -> str:
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict) -> DynReferConfig:
        return _build(cls, data, "")

    @classmethod
    def from_file(cls, path) -> DynReferConfig:
        """Load a ``.json`` or ``.yaml`` / ``.yml`` file (a LightningCLI-style file with a
        top-level ``model: {config: ...}`` is accepted too)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"cannot read config '{path}': no such file")
        import yaml

        text = path.read_text()
        try:
            data = yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else json.loads(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot parse config '{path}': {exc}") from None
        if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
            data = data["model"].get("config", data["model"])
        if not isinstance(data, dict):
            raise ConfigError(f"config '{path}' must hold a mapping, got {type(data).__name__}")
        return cls.from_dict(data)

    @classmethod
    def from_name(cls, name: str) -> DynReferConfig:
        """A named configuration (``tiny``, ``mid``, ``official``) or a config file path."""
        if name in NAMED_CONFIGS:
            return NAMED_CONFIGS[name]()
        if Path(name).suffix.lower() in (".json", ".yaml", ".yml"):
            return cls.from_file(name)
        raise ConfigError(f"unknown model config {name!r}; expected one of {sorted(NAMED_CONFIGS)} "
                          "or a .json/.yaml file")


# ------------------------------------------------------------------------------ presets
TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def tiny_config() -> DynReferConfig:
    return DynReferConfig(
        name="tiny",
        views=ViewsConfig(num_views=3, size=64),
        encoder=EncoderConfig(model=TINY_CLIP),
        qformer=QFormerConfig(
            num_query_tokens=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=128, vocab_size=128, max_position_embeddings=64,
        ),
        tags=TagHeadConfig(dim=32, num_layers=1, num_heads=2, ffn_dim=64),
        contrastive=ContrastiveHeadConfig(dim=32, num_layers=1, num_heads=2, ffn_dim=64),
        language=LanguageConfig(
            kind="seq2seq",
            model_config={"model_type": "t5", "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2,
                          "num_decoder_layers": 2, "num_heads": 4, "vocab_size": 512},
        ),
    )


def mid_config() -> DynReferConfig:
    return DynReferConfig(
        name="mid",
        views=ViewsConfig(num_views=3, size=224),
        encoder=EncoderConfig(model="ViT-B-16"),
        qformer=QFormerConfig(num_hidden_layers=6),
        language=LanguageConfig(
            kind="seq2seq",
            model_config={"model_type": "t5", "d_model": 768, "d_kv": 64, "d_ff": 2048, "num_layers": 12,
                          "num_decoder_layers": 12, "num_heads": 12, "vocab_size": 32128,
                          "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},
        ),
    )


#: The original's extra prompts for OVAD's maturity attributes (SPEC §1.4), by attribute name.
OVAD_MATURITY_SYNONYMS = {
    "maturity:young/baby": ["kid", "kids", "child", "toddler", "boy", "girl"],
    "maturity:adult/old/aged": ["teen", "elder"],
}

#: Every setting in which the original code (callsys/DynRefer) differs from a model we train, as config
#: overrides: the official configuration and every converted checkpoint use them (SPEC §1.1, §1.4).
OFFICIAL_BEHAVIOUR = {
    "roi": {"truncate_boxes": True},
    "contrastive": {"scores": "official", "prompt_noun": "", "extra_synonyms": OVAD_MATURITY_SYNONYMS},
    "language": {"control_eos": True, "dense_act_fn": "gelu", "max_caption_tokens": 32, "strip_captions": False},
}


def with_official_behaviour(config: DynReferConfig) -> DynReferConfig:
    """A copy of ``config`` with :data:`OFFICIAL_BEHAVIOUR` applied (sizes and everything else kept)."""
    return DynReferConfig.from_dict(merge_dicts(config.to_dict(), copy.deepcopy(OFFICIAL_BEHAVIOUR)))


def official_config() -> DynReferConfig:
    return with_official_behaviour(_official_sizes())


def _official_sizes() -> DynReferConfig:
    return DynReferConfig(
        name="official",
        views=ViewsConfig(num_views=3, size=224),
        encoder=EncoderConfig(model="EVA01-g-14", drop_last_blocks=1, final_norm=False, extra_norm=True),
        qformer=QFormerConfig(),
        language=LanguageConfig(
            kind="seq2seq",
            model_config={"model_type": "t5", "d_model": 2048, "d_kv": 64, "d_ff": 5120, "num_layers": 24,
                          "num_decoder_layers": 24, "num_heads": 32, "vocab_size": 32128,
                          "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},
        ),
    )


BUILTIN_CLIP = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 40, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}


def builtin_config() -> DynReferConfig:
    """The built-in model trained on generated scenes (SPEC §4): 64-px views, a small CLIP
    pretrained in stage 1 (``encoder.weights``), a small T5 over a word-level tokenizer."""
    return DynReferConfig(
        name="builtin",
        views=ViewsConfig(num_views=3, size=64),
        encoder=EncoderConfig(model=BUILTIN_CLIP),
        qformer=QFormerConfig(
            num_query_tokens=16, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=256, vocab_size=128, max_position_embeddings=64,
            freeze_query_tokens=False,  # trained from scratch: random frozen queries would only cost capacity
        ),
        tags=TagHeadConfig(dim=64, num_layers=2, num_heads=4, ffn_dim=256, threshold=0.5),
        contrastive=ContrastiveHeadConfig(dim=64, num_layers=2, num_heads=4, ffn_dim=256),
        language=LanguageConfig(
            kind="seq2seq",
            model_config={"model_type": "t5", "d_model": 128, "d_kv": 32, "d_ff": 256, "num_layers": 2,
                          "num_decoder_layers": 2, "num_heads": 4},
            max_new_tokens=24,
            num_beams=2,
        ),
    )


NAMED_CONFIGS = {"tiny": tiny_config, "mid": mid_config, "official": official_config, "builtin": builtin_config}
