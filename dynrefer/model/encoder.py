"""Frozen open_clip towers (SPEC §1.3.1): patch maps + CLS for the views, text embeddings.

Any open_clip image model works, native ViTs and timm-backed ones (EVA): the vision
tower's ``forward_intermediates`` gives the output of its last kept block. Options:

* ``drop_last_blocks``: remove the last blocks (official: EVA-CLIP-g keeps 39 of 40);
  they are deleted from memory after the weights are loaded.
* ``final_norm``: apply the tower's own final norm (``ln_post`` / timm ``norm``) or not
  (official: not).
* ``extra_norm``: a further frozen LayerNorm (BLIP-2's ``ln_vision``), loaded from
  ``extra_norm_weights`` (a safetensors / torch file with ``weight``/``bias`` or
  ``ln_vision.*`` or ``vision_model.post_layernorm.*`` keys, or a Hugging Face BLIP-2 folder).

Weights come from a local file (``EncoderConfig.weights``) and nothing is downloaded. The
towers are frozen: no gradients, always in eval mode.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from .config import EncoderConfig
from .fast_attention import use_sdpa_self_attention


def build_open_clip(model, *, weights=None, timm_kwargs: dict | None = None) -> nn.Module:
    """An open_clip CLIP model from a registered name or a config dict, with ``weights`` (a local file) loaded.

    A registered name with weights goes through open_clip's own factory (``open_clip.create_model(name,
    pretrained=file)``: open_clip's checkpoint loading, with its conversions of older layouts). Otherwise the
    model is built from its config with open_clip's classes, as the factory does: a random tower (the factory
    warns on the root logger when it loads nothing), a config dict (the factory takes registered names only),
    and ``timm_kwargs`` (open_clip's timm adapter passes no size arguments to
    ``timm.create_model``: the trunk is built here with them, see :func:`_resized_timm_tower`). Nothing is
    downloaded: no pretrained tags, no timm / Hugging Face base weights.
    """
    import open_clip

    if weights is not None and not Path(weights).is_file():
        raise InputError(f"cannot read encoder weights '{weights}': no such file")
    if isinstance(model, str):
        if ":" in model:  # hf-hub: / local-dir: take weights of their own (and may download): not a local file's
            raise InputError(f"encoder.model {model!r}: give a registered open_clip name (or a config dict) and the "
                             "weights as encoder.weights, a local file")
        cfg = open_clip.get_model_config(model)
        if cfg is None:
            raise InputError(f"unknown open_clip model {model!r}; pass a registered name or a config dict")
        if weights is not None and not timm_kwargs and "multimodal_cfg" not in cfg:
            return _create_registered(model, weights)
    elif isinstance(model, dict):
        cfg = copy.deepcopy(model)
    else:
        raise InputError(f"encoder.model must be an open_clip model name or a config dict, got {type(model).__name__}")
    cfg = dict(cfg)  # "quick_gelu" kept: an OpenAI *-quickgelu tower needs QuickGELU
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    cfg.pop("multimodal_cfg", None)  # CoCa's text decoder: not a tower DynRefer uses
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    text = cfg.get("text_cfg", {})
    if "hf_model_name" in text:
        text["hf_model_pretrained"] = False  # never fetch Hugging Face weights
    vision = cfg.get("vision_cfg", {})
    if vision.get("timm_model_name"):
        vision["timm_model_pretrained"] = False  # never fetch timm weights
    if timm_kwargs:
        if not vision.get("timm_model_name"):
            raise InputError("encoder.timm_kwargs sizes a timm-backed vision tower, but this config's vision_cfg "
                             "has no timm_model_name")
        tower = _resized_timm_tower(vision, int(cfg["embed_dim"]), timm_kwargs)
        cfg["vision_cfg"] = _PLACEHOLDER_VISION  # replaced by the resized tower below
        clip = cls(**cfg)
        clip.visual = tower
    else:
        clip = cls(**cfg)
    if weights is not None:
        load_local_weights(clip, weights, what="encoder weights")
    return clip


#: A minimal native vision tower that stands in while a CLIP whose vision tower is built separately is created.
_PLACEHOLDER_VISION = {"image_size": 8, "layers": 1, "width": 8, "head_width": 8, "patch_size": 8}


def _create_registered(name: str, weights) -> nn.Module:
    """``open_clip.create_model(name, pretrained=weights)`` with the weights as an absolute path (a relative one
    named like a pretrained tag, e.g. ``openai``, would be taken for the tag) and its errors as one line."""
    import pickle

    import open_clip

    try:
        return open_clip.create_model(name, pretrained=str(Path(weights).resolve()), pretrained_image=False,
                                      pretrained_text=False, weights_only=True)
    except (RuntimeError, ValueError, KeyError, OSError, EOFError, pickle.UnpicklingError) as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        if len(detail) > 600:
            detail = detail[:600] + " ..."
        raise InputError(f"encoder weights '{weights}' do not load into open_clip model {name!r}: {detail}") from None


def _resized_timm_tower(vision: dict, embed_dim: int, timm_kwargs: dict) -> nn.Module:
    """open_clip's timm adapter around ``timm.create_model(vision["timm_model_name"], **timm_kwargs)``.

    The adapter is built on the ``meta`` device (the named trunk's own sizes are never materialised) and its
    trunk replaced by the resized one. Only towers whose adapter adds no head of its own (``timm_proj`` null /
    ``"none"`` / empty, no attention pool: e.g. EVA01-g-14, where the trunk's classifier is the projection) can be
    resized so; the adapter's head would keep the named trunk's width.
    """
    import timm
    from open_clip.timm_model import TimmModel

    name = vision["timm_model_name"]
    pool, proj = vision.get("timm_pool", "avg"), vision.get("timm_proj", "linear")
    if proj in ("linear", "mlp") or pool in ("abs_attn", "rot_attn"):
        raise InputError(f"encoder.timm_kwargs resizes timm trunks whose open_clip adapter adds no head "
                         f"(timm_proj null or 'none', no attention pool, as EVA01-g-14); this tower has "
                         f"timm_proj={proj!r}, timm_pool={pool!r}")
    with torch.device("meta"):
        tower = TimmModel(name, embed_dim, image_size=vision.get("image_size", 224), pool=pool, proj=proj,
                          pretrained=False)
    kwargs = dict(timm_kwargs)
    kwargs.setdefault("img_size", vision.get("image_size", 224))  # the tower's input size, as the config says
    try:
        tower.trunk = timm.create_model(name, pretrained=False, num_classes=0 if proj == "none" else embed_dim,
                                        global_pool=pool, **kwargs)
    except TypeError as err:
        raise InputError(f"encoder.timm_kwargs {timm_kwargs} do not fit timm model {name!r}: {err}") from None
    return tower


def load_local_weights(module: nn.Module, path, *, what: str = "weights") -> None:
    """Load a local ``.safetensors`` / ``.pt`` / ``.bin`` checkpoint (no pickle of objects)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cannot read {what} '{path}': no such file")
    state = read_state_dict(path)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes of another config: torch lists every mismatch, keep the first
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err).strip())
        raise InputError(f"{what} '{path}' does not match the model: {first}") from None
    if missing or unexpected:
        raise InputError(
            f"{what} '{path}' does not match the model: missing {sorted(missing)[:10]}"
            f"{'...' if len(missing) > 10 else ''}, unexpected {sorted(unexpected)[:10]}"
            f"{'...' if len(unexpected) > 10 else ''}"
        )


def read_state_dict(path) -> dict:
    """Tensors of a safetensors or torch checkpoint, read without unpickling objects."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
        raise InputError(f"cannot read checkpoint '{path}': {type(exc).__name__}: {exc}") from None


def read_weights(source, *, reader=read_state_dict, bin_glob: str = "pytorch_model*.bin") -> dict:
    """Tensors of a checkpoint file, or of every ``*.safetensors`` (else ``bin_glob``) file of a
    Hugging Face style folder, read with ``reader``."""
    path = Path(source)
    if not path.is_dir():
        return reader(path)
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob(bin_glob))
    if not files:
        raise InputError(f"no model weights (*.safetensors / {bin_glob}) in '{path}'")
    state: dict = {}
    for f in files:
        state.update(reader(f))
    return state


def _blocks(visual: nn.Module) -> tuple[nn.Module, str]:
    if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
        return visual.transformer, "resblocks"
    if hasattr(visual, "trunk") and hasattr(visual.trunk, "blocks"):
        return visual.trunk, "blocks"
    raise InputError(f"unsupported open_clip vision tower {type(visual).__name__}: no transformer blocks found")


def _vision_geometry(visual: nn.Module) -> tuple[int, int]:
    """(width C, patch size) of a vision tower."""
    if hasattr(visual, "trunk"):
        patch = visual.trunk.patch_embed.patch_size
        return int(visual.trunk.embed_dim), int(patch[0] if isinstance(patch, (tuple, list)) else patch)
    patch = visual.patch_size
    return int(visual.transformer.width), int(patch[0] if isinstance(patch, (tuple, list)) else patch)


class FrozenCLIP(nn.Module):
    """Frozen open_clip vision and text towers.

    ``forward(pixels)``: (N, 3, S, S) normalised views → ``(cls, patches)`` with ``cls``
    (N, C) and ``patches`` (N, C, S/p, S/p). ``encode_text(tokens)`` → (T, D) embeddings
    (the CLIP text embedding, unnormalised). ``tokenize(texts)`` uses open_clip's tokenizer
    (bundled with the package, no download).
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.clip = clip = build_open_clip(cfg.model, weights=cfg.weights or None, timm_kwargs=cfg.timm_kwargs)
        self.context_length = int(getattr(getattr(clip, "text", clip), "context_length", 77))
        self.width, self.patch_size = _vision_geometry(self.visual)
        owner, attr = _blocks(self.visual)
        blocks = getattr(owner, attr)
        if not 0 <= cfg.drop_last_blocks < len(blocks):
            raise InputError(f"encoder.drop_last_blocks={cfg.drop_last_blocks} but the tower has {len(blocks)} blocks")
        if cfg.drop_last_blocks:
            setattr(owner, attr, nn.ModuleList(list(blocks)[: len(blocks) - cfg.drop_last_blocks])
                    if isinstance(blocks, nn.ModuleList) else blocks[: len(blocks) - cfg.drop_last_blocks])
        self.ln_vision = nn.LayerNorm(self.width, eps=cfg.extra_norm_eps) if cfg.extra_norm else None
        if self.ln_vision is not None and cfg.extra_norm_weights:
            self.ln_vision.load_state_dict(read_extra_norm(cfg.extra_norm_weights))
        for p in self.parameters():
            p.requires_grad_(False)
        use_sdpa_self_attention(self.visual)  # the fused attention kernel; same weights, same result
        self.eval()

    def train(self, mode: bool = True):  # frozen: always eval
        return super().train(False)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cls (N, C), patches (N, C, h, w))``; for open_clip's own towers ``patches`` is a view of the
        token tensor (channels-last memory: ``patches.permute(0, 2, 3, 1)`` is the (N, h, w, C) tokens, no
        copy), for timm trunks a contiguous map."""
        timm = hasattr(self.visual, "trunk")
        out = self.visual.forward_intermediates(
            pixels,
            indices=1,
            stop_early=True,
            normalize_intermediates=self.cfg.final_norm,
            intermediates_only=True,
            output_fmt="NCHW" if timm else "NLC",
            output_extra_tokens=True,
        )
        patches = out["image_intermediates"][-1]
        cls = out["image_intermediates_prefix"][-1][:, 0]
        if not timm:  # (N, h·w, C) tokens -> an (N, C, h, w) view
            h, w = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
            patches = patches.unflatten(1, (h, w)).permute(0, 3, 1, 2)
        if self.ln_vision is not None:
            n, c, h, w = patches.shape
            tokens = torch.cat([cls[:, None], patches.flatten(2).transpose(1, 2)], dim=1)
            tokens = self.ln_vision(tokens)
            cls = tokens[:, 0]
            patches = tokens[:, 1:].unflatten(1, (h, w)).permute(0, 3, 1, 2)
        return cls, patches

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @torch.no_grad()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        import open_clip

        return open_clip.tokenize(texts, context_length=self.context_length)


def read_extra_norm(source) -> dict:
    """``weight`` / ``bias`` of BLIP-2's ``ln_vision`` from a checkpoint file or HF folder."""
    path = Path(source)
    state = read_weights(path, bin_glob="*.bin")
    for prefix in ("", "ln_vision.", "vision_model.post_layernorm."):
        if f"{prefix}weight" in state and f"{prefix}bias" in state:
            return {"weight": state[f"{prefix}weight"], "bias": state[f"{prefix}bias"]}
    raise InputError(f"'{path}' holds no ln_vision / vision_model.post_layernorm weight and bias")
