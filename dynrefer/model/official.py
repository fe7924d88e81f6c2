"""Load the published DynRefer checkpoints (LAVIS naming) into our ``DynRefer`` (SPEC §1.3–§1.4).

``from_official(DynRefer, checkpoint, eva=..., blip2=..., llm=..., tags=..., eva_clip_text=...)`` (or
``DynRefer.from_official(checkpoint, ...)``; the class is passed in, as to :mod:`~dynrefer.model.io`)
builds the official
configuration and fills it from the user's local files:

* ``checkpoint``: a DynRefer checkpoint (``vg1.2_5e.pth``, ``refcocog_ft.pth``): the trained parts
  (``cvem_align``, ``cvem_mlp``, ``cem_memory``, ``Qformer``, ``t5_proj``, tag / attribute heads);
* ``eva``: LAVIS's ``eva_vit_g.pth`` (EVA ViT-g, 40 blocks; the last one is dropped);
* ``blip2``: the BLIP-2 FlanT5-XL stage-2 checkpoint (LAVIS ``.pth``) or a Hugging Face BLIP-2 folder:
  the frozen ``query_tokens`` and ``ln_vision`` (and anything the DynRefer checkpoint lacks);
* ``llm``: a Hugging Face Flan-T5-XL folder (used as it is);
* ``tags``: the RAM tag list (one tag per line), ``eva_clip_text``: the EVA-CLIP checkpoint whose text tower
  embeds tags, attribute prompts and class prompts.

Every official tensor maps to one of ours or is ignored on purpose with a reason (the tables are in
:mod:`dynrefer.model.official_keys`); an unmapped, mis-shaped or missing tensor fails the conversion with its
name. Checkpoints are read with ``torch.load(weights_only=True)``; only inert pickled types (numpy scalars and
dtypes) are ever added to the allowed set.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputError
from . import official_keys as K
from .encoder import read_weights


def _inert_globals() -> dict:
    """Pickled globals allowed beyond torch's defaults: plain data (no code of theirs runs on unpickling)."""
    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    allowed = {"numpy.core.multiarray.scalar": scalar, "numpy._core.multiarray.scalar": scalar,
               "numpy.dtype": np.dtype, "collections.OrderedDict": collections.OrderedDict}
    for name in dir(getattr(np, "dtypes", object())):
        obj = getattr(np.dtypes, name)
        if isinstance(obj, type) and issubclass(obj, np.dtype):
            allowed[f"numpy.dtypes.{name}"] = obj
    return allowed


def read_official_checkpoint(path) -> dict[str, torch.Tensor]:
    """The tensors of an official checkpoint (``{"model": ...}``, ``{"state_dict": ...}`` or bare), never
    unpickling anything but tensors, containers and inert numpy scalars / dtypes."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise InputError(f"cannot read checkpoint '{path}': no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return _state_of(load_file(str(path)), path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except (RuntimeError, ValueError, OSError) as exc:
            raise InputError(f"cannot read checkpoint '{path}': {type(exc).__name__}: {exc}") from None
        allowed = _inert_globals()
        bad = [n for n in names if n not in allowed]
        if bad:
            raise InputError(f"refusing to read checkpoint '{path}': it pickles objects that are not plain data: "
                             f"{', '.join(bad)} (only tensors, containers and numpy scalars are loaded)") from None
        entries = [allowed[n] if f"{allowed[n].__module__}.{allowed[n].__qualname__}" == n else (allowed[n], n)
                   for n in names]
        if "numpy.dtype" in names:  # numpy dtypes pickle through their (inert) per-dtype classes
            entries += [v for n, v in allowed.items() if n.startswith("numpy.dtypes.")]
        with torch.serialization.safe_globals(entries):
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as exc:
                raise InputError(f"refusing to read checkpoint '{path}': {str(exc).splitlines()[0]}") from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise InputError(f"cannot read checkpoint '{path}': {type(exc).__name__}: {exc}") from None
    return _state_of(obj, path)


def _state_of(obj, path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise InputError(f"checkpoint '{path}' holds no state dict (expected a mapping of tensors)")
    bad = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise InputError(f"checkpoint '{path}': these entries of the state dict are not tensors: {bad[:10]}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def read_blip2(source) -> dict[str, torch.Tensor]:
    """A LAVIS BLIP-2 ``.pth`` or a Hugging Face BLIP-2 folder (safetensors / ``pytorch_model*.bin``)."""
    return read_weights(source, reader=read_official_checkpoint)


# ------------------------------------------------------------------------------------ key mapping
@dataclass
class Mapped:
    """The result of mapping one source: ``targets[our_key] = [(part, tensor, official_key)]``."""

    source: str
    targets: dict = field(default_factory=dict)
    ignored: dict = field(default_factory=dict)  # official key -> reason
    unmapped: list = field(default_factory=list)


_COMPILED: dict = {}


def _compiled(table):
    key = id(table)
    if key not in _COMPILED:
        _COMPILED[key] = [(re.compile(p), t) for p, t in table]
    return _COMPILED[key]


def _match(key, rules, ignored):
    for pat, target in _compiled(rules):
        if pat.match(key):
            return pat.sub(target, key), None
    for pat, reason in _compiled(ignored):
        if pat.match(key):
            return None, reason
    return None, None


def _add(out: Mapped, name: str, value, official: str, target: str | None, reason: str | None) -> None:
    if target is None:
        if reason is None:
            out.unmapped.append(official)
        else:
            out.ignored[official] = reason
        return
    part = None
    m = re.match(r"^(.*)\[(\d)/3\]$", target)
    if m:
        target, part = m.group(1), int(m.group(2))
    out.targets.setdefault(target, []).append((part, value, official))


def map_eva(state: dict, source: str, kept_blocks: int | None, prefix: str = "", out: Mapped | None = None) -> Mapped:
    """EVA ViT-g tensors (LAVIS names, optionally under ``visual_encoder.`` / ``visual.``) → our trunk."""
    out = out or Mapped(source)
    for key, value in state.items():
        name = key[len(prefix):] if prefix and key.startswith(prefix) else key
        for strip in ("visual_encoder.", "visual."):
            if not prefix and name.startswith(strip):
                name = name[len(strip):]
        m = re.match(r"^blocks\.(\d+)\.", name)
        if m and kept_blocks is not None and int(m.group(1)) >= kept_blocks:
            out.ignored[key] = f"EVA block {m.group(1)}: dropped (the official tower keeps {kept_blocks} blocks)"
            continue
        target, reason = _match(name, K.EVA_RULES, K.EVA_IGNORED)
        _add(out, name, value, key, target, reason)
    return out


def map_lavis(state: dict, source: str, kept_blocks: int | None) -> Mapped:
    """A DynRefer or LAVIS BLIP-2 state dict (``visual_encoder.*`` and ``text_encoder.*`` included)."""
    out = Mapped(source)
    eva = {k: v for k, v in state.items() if k.startswith("visual_encoder.")}
    if eva:
        map_eva(eva, source, kept_blocks, prefix="visual_encoder.", out=out)
    for key, value in state.items():
        if key.startswith("visual_encoder."):
            continue
        if key.startswith("text_encoder."):
            target, reason = _match("text." + key[len("text_encoder."):], K.CLIP_TEXT_RULES, [])
        else:
            target, reason = _match(key, K.DYNREFER_RULES, K.DYNREFER_IGNORED)
        _add(out, key, value, key, target, reason)
    return out


def _map_by_rules(state: dict, source: str, rules, ignored) -> Mapped:
    out = Mapped(source)
    for key, value in state.items():
        target, reason = _match(key, rules, ignored)
        _add(out, key, value, key, target, reason)
    return out


def map_hf_blip2(state: dict, source: str) -> Mapped:
    return _map_by_rules(state, source, K.HF_BLIP2_RULES, K.HF_BLIP2_IGNORED)


def map_clip_text(state: dict, source: str) -> Mapped:
    return _map_by_rules(state, source, K.CLIP_TEXT_RULES, K.CLIP_TEXT_IGNORED)


def map_blip2(state: dict, source: str, kept_blocks: int | None) -> Mapped:
    hf = any(k.startswith(("qformer.", "language_projection.", "vision_model.")) for k in state)
    return map_hf_blip2(state, source) if hf else map_lavis(state, source, kept_blocks)


# ------------------------------------------------------------------------------------ loading
def _matches(key: str, table) -> bool:
    return any(p.match(key) for p, _ in _compiled(table))


def apply_official(model, mapped: list[Mapped], *, keep: tuple = (), optional: tuple = ()) -> dict:
    """Copy the mapped tensors into ``model`` (a later source wins over an earlier one).

    Fails, listing them, on official keys that match no rule, mapped tensors that do not exist in the model or
    are mis-shaped, and model tensors that no source supplies (except those under ``keep`` prefixes, matching
    :data:`official_keys.UNUSED_OURS`, or named in ``optional``). Returns ``{our key: source}``.
    """
    unmapped = [f"{m.source}: {k}" for m in mapped for k in m.unmapped]
    if unmapped:
        raise InputError(f"{len(unmapped)} official tensor(s) match no rule of the key map: "
                         f"{', '.join(unmapped[:30])}{' ...' if len(unmapped) > 30 else ''}")
    own = model.state_dict()
    merged: dict = {}
    problems = []
    for m in mapped:
        for target, items in m.targets.items():
            names = ", ".join(i[2] for i in items)
            if target not in own:
                problems.append(f"{m.source}: {names} -> {target} (not a tensor of this model)")
                continue
            parts = sorted((i for i in items if i[0] is not None), key=lambda i: i[0])
            if parts and [p[0] for p in parts] != [0, 1, 2]:
                problems.append(f"{m.source}: {target} needs query, key and value; got only {names}")
                continue
            if not parts and len(items) > 1:
                problems.append(f"{m.source}: {names} all map to {target}")
                continue
            value = torch.cat([p[1] for p in parts], 0) if parts else items[0][1]
            if tuple(value.shape) != tuple(own[target].shape):
                problems.append(f"{m.source}: {names} {tuple(value.shape)} -> {target} {tuple(own[target].shape)}")
                continue
            merged[target] = (value, m.source)
    if problems:
        raise InputError(f"cannot convert the official weights, {len(problems)} mis-mapped or mis-shaped: "
                         + "; ".join(problems[:20]) + (" ..." if len(problems) > 20 else ""))
    missing = sorted(k for k in own if k not in merged and not k.startswith(tuple(keep))
                     and k not in optional and not _matches(k, K.UNUSED_OURS))
    if missing:
        raise InputError(f"the official files do not supply {len(missing)} tensor(s) of the model: "
                         f"{', '.join(missing[:30])}{' ...' if len(missing) > 30 else ''}")
    with torch.no_grad():
        for key, (value, _) in merged.items():
            own[key].copy_(value.to(own[key].dtype))
    return {k: src for k, (_, src) in merged.items()}


def _read_tags(tags) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, (list, tuple)):
        return [str(t) for t in tags]
    path = Path(tags)
    if not path.is_file():
        raise InputError(f"cannot read tag list '{path}': no such file")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def convert_official(cls, checkpoint, eva=None, blip2=None, llm=None, tags=None, eva_clip_text=None, config=None):
    """``(model, report)``: a ``cls`` (:class:`~dynrefer.model.dynrefer.DynRefer`) model, see :func:`from_official`.
    ``report`` lists, per source, the mapped and the
    ignored-on-purpose tensors (with reasons) and any warnings."""
    from .config import DynReferConfig, official_config, with_official_behaviour

    if config is None:
        config = official_config()
    elif not isinstance(config, DynReferConfig):
        config = DynReferConfig.from_name(str(config))
    # the weights were trained with the original's processing: the converted model behaves as the original does
    config = with_official_behaviour(config)  # (a copy: the caller's config is left as it is)
    config.qformer.init_from = None
    if llm is not None:
        if not Path(llm).is_dir():
            raise InputError(f"cannot read language model folder '{llm}': no such folder")
        config.language.path, config.language.tokenizer_path = str(llm), None
    elif config.language.enabled and not (config.language.path or config.language.model_config):
        raise InputError("the official model needs its LLM: pass llm= / --llm (a Flan-T5-XL folder)")
    tag_names = _read_tags(tags)
    model = cls(config)  # tags are embedded below, once the text tower is loaded
    blocks = model.encoder.visual.trunk.blocks if hasattr(model.encoder.visual, "trunk") else None
    kept = len(blocks) if blocks is not None else None

    mapped = []  # lowest precedence first
    if eva is not None:
        mapped.append(map_eva(read_official_checkpoint(eva), str(eva), kept))
    if eva_clip_text is not None:
        mapped.append(map_clip_text(read_official_checkpoint(eva_clip_text), str(eva_clip_text)))
    if blip2 is not None:
        mapped.append(map_blip2(read_blip2(blip2), str(blip2), kept))
    mapped.append(map_lavis(read_official_checkpoint(checkpoint), str(checkpoint), kept))

    stored = [m for m in mapped if "tag_embeddings" in m.targets]
    if stored and not tag_names:
        n = stored[-1].targets["tag_embeddings"][0][1].shape[0]
        raise InputError(f"'{stored[-1].source}' stores {n} tag embeddings (clip_embeds): pass tags= / --tags "
                         f"(the tag list they were computed from, e.g. the RAM tag list)")
    model.tag_names = tag_names
    model.tag_embeddings = torch.zeros(len(tag_names), model.tag_embeddings.shape[1])

    keep = ["language_head.lm."]
    if config.encoder.weights:
        keep.append("encoder.clip.")  # the tower came from encoder.weights
    if config.encoder.extra_norm_weights:
        keep.append("encoder.ln_vision.")
    has_text = any(k.startswith("encoder.clip.text.") for m in mapped for k in m.targets)
    warnings = []
    if not has_text and not config.encoder.weights:
        keep.append("encoder.clip.text.")
        warnings.append("no EVA-CLIP text tower given (eva_clip_text= / --eva-clip-text): attribute and class "
                        "scores use a random text tower")
    sources = apply_official(model, mapped, keep=tuple(keep), optional=("tag_embeddings",))
    if tag_names and "tag_embeddings" not in sources:
        if not has_text and not config.encoder.weights:
            raise InputError("the tag embeddings need the EVA-CLIP text tower (eva_clip_text= / --eva-clip-text) "
                             "or clip_embeds stored in the checkpoint")
        model.tag_embeddings = model.embed_texts(tag_names).to(model.tag_embeddings.dtype)
    report = {
        "sources": {m.source: {"mapped": sum(len(v) for v in m.targets.values()), "ignored": len(m.ignored)}
                    for m in mapped},
        "ignored": {f"{m.source}: {k}": r for m in mapped for k, r in m.ignored.items()},
        "loaded": len(sources),
        "warnings": warnings,
    }
    return model, report


def from_official(cls, checkpoint, eva=None, blip2=None, llm=None, tags=None, eva_clip_text=None, config=None):
    """The paper's model on our stack from the published files (see the module docstring).

    ``config``: a :class:`DynReferConfig`, a named config or a config file (default: ``official``).
    """
    return convert_official(cls, checkpoint, eva=eva, blip2=blip2, llm=llm, tags=tags, eva_clip_text=eva_clip_text,
                            config=config)[0]
