"""Saving and loading ``DynRefer`` folders: ``config.json`` + ``model.safetensors`` (+ files).

A folder holds:

* ``config.json``: the :class:`~dynrefer.model.config.DynReferConfig`;
* ``model.safetensors``: the tensors (tied tensors stored once; their other names are
  listed in the file's metadata under ``aliases``);
* ``tags.txt``: the tag vocabulary, one tag per line;
* ``vocab.json``: the default category and attribute vocabularies of ``predict``;
* ``tokenizer/``: the language model's tokenizer files;
* ``frozen.json`` when saved with ``include_frozen=False``: for each frozen part left out
  (``encoder``, ``language``), its source path and the file's sha256, checked on loading.

No pickle anywhere. Loading fails with a message that lists missing, unexpected or
mis-shaped tensors.

Why not ``safetensors.torch.save_model`` / ``load_model`` (they handle shared tensors too): ``load_model``
copies the file into a model that was built, initialised and had its tags embedded first. Here the model is
built on the ``meta`` device and given the file's memory-mapped tensors in their stored dtype (issue #32:
the ``mid`` folder loads in 1.97 s and 944 MB instead of 8.78 s and 4,105 MB), so the ties are restored by
hand after the assignment; the saving side keeps its alias metadata so that loading knows them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from ..errors import InputError
from ..records import default_file_mode
from .config import DynReferConfig

WEIGHTS = "model.safetensors"
LM_CONFIG = "language_config.json"  # a pretrained LM's architecture, when its tensors are in the folder
FROZEN_PREFIXES = {"encoder": ("encoder.",), "language": ("language_head.lm.",)}


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _frozen_parts(model) -> dict[str, str | None]:
    """Frozen parts that come from a local source (name → source path)."""
    cfg = model.config
    parts = {"encoder": cfg.encoder.weights}
    head = model.language_head
    if head is not None and cfg.language.path and not any(p.requires_grad for p in head.lm.parameters()):
        parts["language"] = cfg.language.path
    return parts


def save_pretrained(model, directory, *, include_frozen: bool = True, frozen_dtype: str | None = None) -> Path:
    """Write ``model`` into ``directory`` (created). See the module docstring.

    ``frozen_dtype`` (``"float16"`` / ``"bfloat16"``): store the frozen CLIP towers in that
    dtype to halve the folder (e.g. the built-in model shipped in the package); they are cast
    back to the model's dtype on loading.
    """
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    frozen = {}
    if not include_frozen:
        for name, source in _frozen_parts(model).items():
            if source is None:
                raise InputError(f"cannot leave out the frozen {name}: it has no source file (it was random)")
            src = Path(source)
            digest = sha256_of(src) if src.is_file() else None
            frozen[name] = {"path": str(src), "sha256": digest}
            state = {k: v for k, v in state.items() if not k.startswith(FROZEN_PREFIXES[name])}
    if frozen_dtype is not None:
        if frozen_dtype not in ("float16", "bfloat16"):
            raise InputError(f"frozen_dtype must be 'float16' or 'bfloat16', got {frozen_dtype!r}")
        cast = getattr(torch, frozen_dtype)
        state = {k: (v.to(cast) if k.startswith("encoder.") and v.is_floating_point() else v) for k, v in state.items()}
    tensors, aliases, seen = {}, {}, {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().contiguous().cpu()
    # a new file renamed over the old one: never a half-written file, and a model loaded from this folder (its
    # tensors map the old file: from_pretrained assigns them without a copy) keeps reading the old one
    fd, tmp = tempfile.mkstemp(prefix=f".{WEIGHTS}.", suffix=".tmp", dir=out)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"aliases": json.dumps(aliases), "format": "pt"})
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, out / WEIGHTS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(model.config), indent=2) + "\n")
    (out / "tags.txt").write_text("".join(f"{t}\n" for t in model.tag_names))
    (out / "vocab.json").write_text(json.dumps({"categories": model.categories, "attributes": model.attributes},
                                               indent=1) + "\n")
    if model.language_head is not None:
        model.language_head.tokenizer.save_pretrained(str(out / "tokenizer"))
        if model.config.language.path and "language" not in frozen:  # the LM's tensors are in the folder: its
            lm_config = model.language_head.lm.config.to_dict()   # architecture too, so that the folder stands alone
            (out / LM_CONFIG).write_text(json.dumps(lm_config, indent=1, default=str) + "\n")
    if frozen:
        (out / "frozen.json").write_text(json.dumps(frozen, indent=2) + "\n")
    return out


def from_pretrained(cls, directory, *, encoder_path=None, llm_path=None, check_hashes: bool = True, strict=True,
                    dtype: torch.dtype | None = None):
    """Build a ``DynRefer`` from a folder written by :func:`save_pretrained`; ``dtype``: see
    :meth:`DynRefer.from_pretrained <dynrefer.model.dynrefer.DynRefer.from_pretrained>`."""
    from safetensors import SafetensorError, safe_open

    src = resolve_model_dir(directory)
    for required in ("config.json", WEIGHTS, "tags.txt", "vocab.json"):  # what save_pretrained writes
        if not (src / required).is_file():
            raise InputError(f"'{src}' is not a complete dynrefer model folder: {required} is missing")
    config = DynReferConfig.from_file(src / "config.json")
    if config.language.enabled and not (src / "tokenizer").is_dir():
        raise InputError(f"'{src}' is not a complete dynrefer model folder: tokenizer/ is missing "
                         "(the model has a language head)")
    tags = [t for t in _read_text(src / "tags.txt").splitlines() if t]
    frozen = _read_json(src / "frozen.json") if (src / "frozen.json").is_file() else {}
    if encoder_path is not None:
        config.encoder.weights = str(encoder_path)
    if llm_path is not None:
        config.language.path = str(llm_path)
    for name, info in frozen.items():
        path = config.encoder.weights if name == "encoder" else config.language.path
        if path is None or not Path(path).exists():
            raise InputError(f"the frozen {name} was saved by reference to '{info['path']}', which is missing; "
                             f"pass {'encoder_path' if name == 'encoder' else 'llm_path'}=...")
        if check_hashes and info.get("sha256") and Path(path).is_file() and sha256_of(path) != info["sha256"]:
            raise InputError(f"the frozen {name} at '{path}' does not match the saved sha256 {info['sha256'][:12]}...")
    if (src / "tokenizer").is_dir() and config.language.enabled:
        config.language.tokenizer_path = str(src / "tokenizer")
    if "encoder" not in frozen:
        config.encoder.weights = None  # the folder's tensors hold the encoder
        config.encoder.extra_norm_weights = None  # and ln_vision
    config.qformer.init_from = None  # the Q-Former and the BLIP-2 projection are in the folder's tensors
    if "language" not in frozen and config.language.path and (src / LM_CONFIG).is_file():
        # the LM's tensors are in the folder: build it from its saved architecture, not from the source folder
        if config.language.frozen is None:
            config.language.frozen = True  # what a pretrained LM (``path``) is by default
        config.language.model_config, config.language.path = _read_json(src / LM_CONFIG), None
    vocab = _read_json(src / "vocab.json")
    if not isinstance(vocab, dict):
        raise InputError(f"cannot read '{src / 'vocab.json'}': expected an object with 'categories' and 'attributes'")
    try:
        with safe_open(str(src / WEIGHTS), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
        aliases = json.loads(meta.get("aliases", "{}"))
    except (SafetensorError, OSError, ValueError) as err:  # ValueError: the aliases metadata is not JSON
        raise InputError(f"cannot read '{src / WEIGHTS}': corrupt or truncated safetensors file "
                         f"({type(err).__name__}: {err})") from None
    for alias, target in aliases.items():
        state[alias] = state[target]
    dtype = stored_dtype(state) if dtype is None else dtype  # one rule for both ways of building
    kwargs = dict(categories=vocab.get("categories"), attributes=vocab.get("attributes"))
    skip = tuple(p for n in frozen for p in FROZEN_PREFIXES[n])
    if not frozen and config.language.lora_r == 0 and not config.language.path:  # every tensor in the folder (an
        # LM read from its own folder, as older folders have it, cannot be built on the meta device)
        model = _assigned(cls, config, kwargs, tags, state, strict=strict, source=str(src / WEIGHTS), dtype=dtype)
        if model is not None:
            return model
    # built without tags, then given their names and a buffer of the saved shape: the saved embeddings are loaded
    # below (embedding every tag with the text tower first would be overwritten; for the official 4,585 tags, minutes)
    model = cls(config, **kwargs)
    model.tag_names = list(tags)
    model.tag_embeddings = torch.zeros(len(tags), model.tag_embeddings.shape[1], dtype=model.tag_embeddings.dtype)
    load_checked(model, state, skip_prefixes=skip, strict=strict, source=str(src / WEIGHTS))
    return model if dtype == torch.float32 else model.to(dtype)


def stored_dtype(state: dict) -> torch.dtype:
    """The dtype a folder's model runs in: the one every floating tensor has when it was saved cast as a whole
    (``model.to(torch.bfloat16)``, ``convert-official --dtype bfloat16``), else float32 (a float32 model, also one
    whose frozen towers were stored in half precision to halve the folder: ``frozen_dtype``)."""
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def _assigned(cls, config, kwargs: dict, tags: list[str], state: dict, *, strict: bool, source: str,
              dtype: torch.dtype):
    """The model built on the ``meta`` device (no memory, no random initialisation, no tag embedding) and given
    the saved tensors themselves (``load_state_dict(assign=True)``), in ``dtype``; the
    few tensors a folder does not store (non-persistent buffers) are rebuilt by :func:`_rebuild_buffer`. None when
    one of them is of an unknown kind: the caller then builds the model as usual."""
    with torch.device("meta"):
        model = cls(config, **kwargs)
    model.tag_names = list(tags)
    model.tag_embeddings = torch.zeros(len(tags), model.tag_embeddings.shape[1], device="meta")
    own = model.state_dict()
    check_state(own, state, strict=strict, source=source)
    state = {k: (v.to(dtype) if v.is_floating_point() and v.dtype != dtype else v) for k, v in state.items()
             if k in own}
    untie_differing(model, state)
    tied = [names for names in _parameter_groups(model).values() if len(names) > 1]
    model.load_state_dict(state, strict=False, assign=True)
    for names in tied:  # assign gives each name a Parameter of its own: tie them again (one Parameter)
        first = model.get_parameter(names[0])
        for name in names[1:]:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, first)
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta:
            value = _rebuild_buffer(name, buffer, dtype)
            if value is None:
                return None
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, value)
    if any(p.is_meta for p in model.parameters()):
        return None
    return model


def _rebuild_buffer(name: str, buffer: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """A non-persistent buffer as its module builds it: open_clip's causal text mask (``-inf`` above the diagonal),
    timm EVA's zero key bias; None for any other."""
    leaf = name.rpartition(".")[2]
    if leaf == "attn_mask" and buffer.dim() == 2 and buffer.shape[0] == buffer.shape[1]:
        return torch.full(tuple(buffer.shape), float("-inf")).triu_(1).to(buffer.dtype)
    if leaf == "k_bias" and buffer.dim() == 1:
        return torch.zeros(tuple(buffer.shape), dtype=dtype)
    return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read '{path}': {err}") from None


def _read_json(path: Path):
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise InputError(f"cannot read '{path}': not valid JSON ({err})") from None


def builtin_dir() -> Path:
    """Where the built-in model ships inside the package."""
    return Path(__file__).resolve().parent.parent / "builtin"


def model_identity(model) -> str:
    """What names a model given as ``builtin``, a folder (its absolute path: the same after a chdir) or a model
    object (its class)."""
    if not isinstance(model, (str, Path)):
        return f"<{type(model).__name__} object>"
    return "builtin" if str(model) == "builtin" else str(Path(model).resolve())


def resolve_model_dir(directory) -> Path:
    """``"builtin"`` → the packaged built-in model; anything else → a path."""
    if str(directory) == "builtin":
        path = builtin_dir()
        if not (path / "config.json").is_file():
            raise InputError("the built-in model is not bundled with this installation "
                             "(train it with projects/builtin/train_builtin.sh, or pass a model folder)")
        return path
    path = Path(directory)
    if path.is_file():
        hint = (" (a Lightning checkpoint: export a model folder with the dynrefer.train.callbacks.ExportPretrained "
                "callback, see docs/training.md)" if path.suffix == ".ckpt" else "")
        raise InputError(f"'{path}' is a file, not a model folder (save_pretrained output){hint}")
    if not path.is_dir():
        raise InputError(f"cannot read model folder '{path}': no such folder")
    return path


def check_state(own: dict, state: dict, *, skip_prefixes=(), strict=True, source="checkpoint") -> None:
    """Fail listing the missing, unexpected and mis-shaped tensors of ``state`` against a model's ``own`` state."""
    expected = {k for k in own if not k.startswith(skip_prefixes)} if skip_prefixes else set(own)
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
                    for k in set(state) & set(own) if tuple(state[k].shape) != tuple(own[k].shape))
    if strict and (missing or unexpected or shapes):
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
            if items:
                parts.append(f"{label} ({len(items)}): {', '.join(items[:20])}{' ...' if len(items) > 20 else ''}")
        raise InputError(f"cannot load '{source}': " + "; ".join(parts))


def load_checked(model, state: dict, *, skip_prefixes=(), strict=True, source="checkpoint") -> None:
    """``load_state_dict`` that fails listing missing, unexpected and mis-shaped tensors."""
    own = model.state_dict()
    check_state(own, state, skip_prefixes=skip_prefixes, strict=strict, source=source)
    if untie_differing(model, state):
        own = model.state_dict()
    with torch.no_grad():
        for k, v in state.items():
            if k in own and tuple(v.shape) == tuple(own[k].shape):
                own[k].copy_(v)


def _parameter_groups(model) -> dict[int, list[str]]:
    """The names of each parameter (several when the model ties it), by parameter identity."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return groups


def untie_differing(model, state: dict) -> list[str]:
    """Give its own tensor to each parameter that ``model`` ties to another (one tensor under several names) but
    that ``state`` saves with other values; returns their names.

    A model built from a config ties what the config says (transformers 5 ties every T5's ``lm_head`` to its
    embeddings), while the saved tensors may hold them apart (Flan-T5's ``lm_head`` is its own: transformers'
    ``from_pretrained`` leaves such weights untied). Copying both into one shared tensor would keep only the last.
    """
    groups = _parameter_groups(model)
    untied = []
    for names in groups.values():
        first = next((n for n in names if n in state), None)
        if first is None:
            continue
        for name in names:
            value = state.get(name)
            if name == first or value is None or (value.shape == state[first].shape
                                                  and torch.equal(value, state[first])):
                continue
            owner, _, attr = name.rpartition(".")
            module = model.get_submodule(owner)
            if module is model.get_submodule(first.rpartition(".")[0]):
                raise InputError(f"'{name}' and '{first}' are one module of this model, but the saved tensors differ: "
                                 "they cannot be loaded apart")
            old = getattr(module, attr)
            setattr(module, attr, torch.nn.Parameter(old.detach().clone(), requires_grad=old.requires_grad))
            untied.append(name)
    return untied
