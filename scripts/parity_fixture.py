"""The stages of ``scripts/check_parity.py``: a parity fixture read, converted and compared stage by stage.

A fixture folder (format of ``../shared/parity``, see its README) holds the official files (``dynrefer.pth``,
``blip2.pth``, ``eva_vit_g.pth``, ``eva_clip_psz14.pt``, ``t5/``, ``tags.txt``, ``ovad_small.json``,
``coco_small.json``) and ``fixture.json`` + ``fixture.safetensors`` (inputs and the original's outputs; a
``{"$tensor": KEY}`` in the JSON names a tensor of the safetensors file). The model sizes come from
``fixture.json`` → ``summary.sizes``; everything else is the official configuration.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from dynrefer.errors import InputError
from dynrefer.inference.records import region_records

#: Limits of :func:`run_check` (see ``check_parity.py``).
TOLERANCE = {"rel": 1e-4, "lm_loss": 1e-5, "scores": 1e-5}
OFFICIAL_FILES = ("dynrefer.pth", "blip2.pth", "eva_vit_g.pth", "eva_clip_psz14.pt", "t5", "tags.txt",
                  "ovad_small.json", "coco_small.json", "fixture.json", "fixture.safetensors")


# ------------------------------------------------------------------------------------------ reading
class Fixture:
    """A fixture folder: ``data`` (fixture.json with its tensors in place), ``sizes``, vocabularies. An unreadable
    or incomplete folder is an :class:`InputError` naming what is wrong."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        missing = [f for f in OFFICIAL_FILES if not (self.folder / f).exists()]
        if missing:
            raise InputError(f"'{self.folder}' is not a parity fixture: {', '.join(missing)} missing")
        try:
            self._read()
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:  # json / safetensors errors included
            raise InputError(f"cannot read the parity fixture '{self.folder}': {type(err).__name__}: {err}") from None

    def _read(self) -> None:
        from safetensors.torch import load_file

        tensors = load_file(str(self.folder / "fixture.safetensors"))
        raw = json.loads((self.folder / "fixture.json").read_text())
        self.data = _resolve(raw, tensors)
        self.inputs, self.outputs = self.data["inputs"], self.data["outputs"]
        self.sizes = self.data["summary"]["sizes"]
        self.tags = [t.strip() for t in (self.folder / "tags.txt").read_text().splitlines() if t.strip()]
        self.attributes = json.loads((self.folder / "ovad_small.json").read_text())["attributes"]
        self.classes = json.loads((self.folder / "coco_small.json").read_text())
        self.tag_threshold = float(self.outputs["tag_thr"])

    @property
    def regions(self) -> int:
        return int(sum(len(m["boxes"]) for m in self.inputs["meta"]))

    def images(self) -> list[torch.Tensor]:
        """The images as (3, H, W) uint8 tensors."""
        return [m["pixels_uint8"].permute(2, 0, 1).contiguous() for m in self.inputs["meta"]]


def _resolve(obj, tensors):
    if isinstance(obj, dict):
        if set(obj) == {"$tensor"}:
            return tensors[obj["$tensor"]]
        return {k: _resolve(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v, tensors) for v in obj]
    return obj


def fixture_config(fixture: Fixture):
    """The official configuration at the fixture's sizes: ``summary.sizes.eva`` are ``timm.create_model``'s EVA
    arguments (``encoder.timm_kwargs``; ``depth`` = the blocks kept: a further block in the file is ignored on
    purpose by the converter, as the real file's 40th), ``text`` the EVA-CLIP text tower (open_clip's names, with
    ``embed_dim``), ``qformer`` the Q-Former's; the T5 is the fixture's folder; views and tag threshold as the
    fixture's inputs."""
    from dynrefer.model.config import DynReferConfig, QFormerConfig, merge_dicts, official_config

    s = fixture.sizes
    text = dict(s["text"])
    embed_dim = int(text.pop("embed_dim"))
    views = fixture.inputs["views"]
    size = int(views.shape[-1])
    timm_kwargs = dict(s["eva"])
    if size != 224:
        timm_kwargs.setdefault("img_size", size)
    qformer_keys = {f for f in QFormerConfig.__dataclass_fields__}
    overrides = {
        "name": "official-parity-fixture",
        "views": {"num_views": int(views.shape[1]), "size": size},
        "encoder": {
            "model": {
                "embed_dim": embed_dim,
                "vision_cfg": {"image_size": size, "timm_model_name": "eva_giant_patch14_224", "timm_pool": "token",
                               "timm_proj": None},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, **text},
                "custom_text": True,
            },
            "timm_kwargs": timm_kwargs,
            "drop_last_blocks": 0,
        },
        "qformer": {k: v for k, v in s["qformer"].items() if k in qformer_keys},
        "tags": {"threshold": fixture.tag_threshold},
        "language": {"path": str(fixture.folder / "t5"), "model_config": None},
    }
    return DynReferConfig.from_dict(merge_dicts(official_config().to_dict(), overrides))


def convert(fixture: Fixture):
    """The fixture's official files through the public converter (as ``dynrefer convert-official``)."""
    from dynrefer.model.dynrefer import DynRefer
    from dynrefer.model.official import convert_official

    f = fixture.folder
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        fixture_config(fixture).to_json(path)
        model, _ = convert_official(DynRefer, f / "dynrefer.pth", eva=f / "eva_vit_g.pth", blip2=f / "blip2.pth",
                                    llm=f / "t5", tags=f / "tags.txt", eva_clip_text=f / "eva_clip_psz14.pt",
                                    config=str(path))
    model.categories = list(fixture.classes)
    model.attributes = list(fixture.attributes)
    return model.eval()


# ------------------------------------------------------------------------------------------ stages
def compare(stage: str, ours, theirs) -> dict:
    ours, theirs = torch.as_tensor(ours).double(), torch.as_tensor(theirs).double()
    if tuple(ours.shape) != tuple(theirs.shape):
        return {"stage": stage, "max_abs": math.inf, "rel": math.inf,
                "error": f"shape {tuple(ours.shape)} != original {tuple(theirs.shape)}"}
    scale = float(theirs.abs().max()) if theirs.numel() else 0.0
    diff = float((ours - theirs).abs().max()) if theirs.numel() else 0.0
    return {"stage": stage, "max_abs": diff, "rel": diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)}


class Recorder:
    """Forward hooks keeping the inputs / outputs of named submodules (the model's own forward runs)."""

    def __init__(self, model, names):
        self.seen: dict = {}
        self.handles = []
        modules = dict(model.named_modules())
        for name in names:
            self.handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def keep(module, args, output):
            self.seen[name] = (tuple(a.detach() for a in args if isinstance(a, torch.Tensor)), output)
        return keep

    def close(self):
        for h in self.handles:
            h.remove()


def view_stages(fixture: Fixture) -> tuple[list[dict], list]:
    """Our greedy pHash views and RoI boxes against the official processor's."""
    from dynrefer.regions import parse_region
    from dynrefer.view_selection import select_views

    stages, ts_ok, pixels, boxes = [], 0, [], []
    shape = fixture.inputs["views"].shape
    for meta, image in zip(fixture.inputs["meta"], fixture.images()):
        size = (int(image.shape[2]), int(image.shape[1]))
        regions = [parse_region(list(map(float, box)), size).box for box in meta["boxes"]]  # as describe reads them
        views = select_views(image, np.asarray(regions, dtype=np.float64), num_views=int(shape[1]), policy="greedy",
                             size=int(shape[-1]))
        for k, rv in enumerate(views):
            want = [float(meta["cascade_ratios"][v][k]) for v in range(len(meta["cascade_ratios"]))]
            ts_ok += int(np.allclose(rv.ts, want))
            pixels.append(rv.pixels)
            boxes.append(torch.as_tensor(rv.geometry.roi_boxes(truncate=True)))
    stages.append(compare("views", torch.stack(pixels), fixture.inputs["views"]))
    stages.append(compare("view_boxes", torch.stack(boxes), fixture.inputs["view_boxes"]))
    return stages, [f"{ts_ok}/{fixture.regions}"]


def _view_major(x: torch.Tensor, regions: int) -> torch.Tensor:
    """Rows ordered (region, view) → (view, region), as the original orders the extra views' maps."""
    return x.reshape(regions, -1, *x.shape[1:]).transpose(0, 1).reshape(-1, *x.shape[1:])


@torch.no_grad()
def model_stages(model, fixture: Fixture) -> tuple[list[dict], torch.Tensor]:
    """Every stage from the fixture's views and RoI boxes to the LM, compared with the original's outputs;
    and R (the Q-Former output)."""
    from dynrefer.model.vocab import attribute_prompts, category_prompts

    o = fixture.outputs
    views, boxes = fixture.inputs["views"], fixture.inputs["view_boxes"]
    regions, n = views.shape[:2]
    rec = Recorder(model, ["encoder.ln_vision", "roi", "align", "fusion"])
    try:
        region = model.encode_regions(views.reshape(-1, *views.shape[2:]), boxes.reshape(-1, 4))
    finally:
        rec.close()
    (vit,), ln_out = rec.seen["encoder.ln_vision"]
    tokens = rec.seen["roi"][1]
    (extra, reference), aligned = rec.seen["align"]
    h = w = model.roi.output_size
    packed = model.align.packed_offset_mask(extra, reference)
    stages = [
        compare("vit_out", vit, o["vit_out"][0]),
        compare("ln_vision_out", ln_out, o["ln_vision_out"][0]),
        compare("roi_align_out", tokens[:, 1:].transpose(1, 2).unflatten(2, (h, w)), o["roi_align_out"][0]),
        # the original's names: source = view 0 (the reference), target = the extra view being aligned
        compare("align_in_source", _view_major(reference, regions), o["align_in_source"][0]),
        compare("align_in_target", _view_major(extra, regions), o["align_in_target"][0]),
        compare("align_offset_mask", _view_major(packed.flatten(1, 2), regions), o["align_offset_mask"][0]),
        compare("align_out", _view_major(aligned, regions), o["align_out"][0]),
        compare("fused", rec.seen["fusion"][1], o["fused"][0]),
        compare("qformer_out", region, o["qformer_out"][0]),
        compare("clip_embeds", model.tag_embeddings, o["clip_embeds"]),
        compare("tag_fc_out", model.tag_head(region, model.tag_embeddings), o["tag_fc_out"][0][..., 0]),
    ]
    c = model.config.contrastive
    prompts, _ = attribute_prompts(fixture.attributes, c.prompt_noun, c.extra_synonyms)
    classes = category_prompts(fixture.classes)
    stages.append(compare("att_embeds", model.embed_texts(prompts), o["att_embeds"]))
    stages.append(compare("ov_embeds", model.embed_texts(classes), o["ov_embeds"]))
    raw = model.score_texts(region, [prompts, classes], raw=True)
    stages.append(compare("attr_fc_out", raw[:, : len(prompts)], o["attr_fc_out"][0][..., 0]))
    stages.append(compare("class_fc_out", raw[:, len(prompts):], o["attr_fc_out"][1][..., 0]))
    head = model.language_head
    stages.append(compare("t5_proj_out", head.proj(region), o["t5_proj_out"][0]))
    ids, mask = head._tokens(list(o["controls_teacher"]), add_eos=head.cfg.control_eos)
    stages.append(compare("control_token_ids", ids, o["control_token_ids"]))
    stages.append(compare("control_attention", mask, o["control_attention"]))
    out, labels = head.teacher_forced(region, list(o["controls_teacher"]), list(o["captions_teacher"]))
    stages.append(compare("lm_logits", out.logits, o["lm_logits"]))
    per_token = torch.nn.functional.cross_entropy(out.logits.transpose(1, 2).float(), labels, reduction="none")
    per_region = per_token.sum(1) / (labels != -100).sum(1)
    stages.append(compare("lm_loss_per_region", per_region, torch.tensor(o["lm_loss_per_region"])))
    stages.append({"stage": "lm_loss_batch", "max_abs": abs(float(out.loss) - float(o["lm_loss_batch"])),
                   "rel": abs(float(out.loss) - float(o["lm_loss_batch"])) / abs(float(o["lm_loss_batch"]))})
    return stages, region


def _tag_set(names) -> set:
    return {str(t) for t in names}


@torch.no_grad()
def prediction_checks(model, fixture: Fixture, region: torch.Tensor) -> dict:
    """Captions (fixed controls and ``pred``), tags, attribute ranking, class argmax and scores."""
    o = fixture.outputs
    n = fixture.regions
    fixed = o["captions_fixed_controls"]
    caps, _ = model.caption(region, controls=list(o["controls_teacher"]))
    fixed_ok = sum(a == b for a, b in zip(caps, fixed["caps"]))
    pred = region_records(model.predict({"pixels": fixture.inputs["views"].flatten(0, 1),
                          "boxes_in_view": fixture.inputs["view_boxes"].reshape(-1, 4)},
                         attributes=fixture.attributes, categories=fixture.classes,
                         tag_threshold=fixture.tag_threshold, controls=list(o["control_words_from_tags"])))
    names = [a["name"] for a in fixture.attributes]
    counts = dict(captions_pred=0, tags=0, attribute_ranking=0, category=0)
    attr_diff = class_diff = 0.0
    details = []
    for ours, theirs in zip(pred, o["pred"]):
        counts["captions_pred"] += ours["caption"] == theirs["caption"]
        tags = _tag_set(n for n, _ in ours["tags"])
        counts["tags"] += tags == _tag_set(theirs["tag_set1"]) == _tag_set(theirs.get("tag_set2", theirs["tag_set1"]))
        attr = dict(ours["attributes"])
        attr_ours = [attr[name] for name in names]
        counts["attribute_ranking"] += (list(np.argsort(-np.asarray(attr_ours), kind="stable"))
                                        == list(np.argsort(-np.asarray(theirs["attr"]), kind="stable")))
        attr_diff = max(attr_diff, float(np.abs(np.asarray(attr_ours) - np.asarray(theirs["attr"])).max()))
        cls = dict(ours["categories"])
        cls_ours = [cls[c] for c in fixture.classes]
        counts["category"] += ours["category"][0] == fixture.classes[int(np.argmax(theirs["cls"]))]
        class_diff = max(class_diff, float(np.abs(np.asarray(cls_ours) - np.asarray(theirs["cls"])).max()))
        details.append({"id": theirs.get("id"), "caption": ours["caption"], "original": theirs["caption"],
                        "caption_score": ours["caption_score"], "original_score": theirs.get("score")})
    return {"regions": n, "captions_fixed_controls": f"{fixed_ok}/{n}",
            **{k: f"{v}/{n}" for k, v in counts.items()},
            "attribute_score_max_diff": attr_diff, "class_score_max_diff": class_diff, "details": details}


def run_check(folder: Path, model_out=None) -> dict:
    """Convert the fixture's files, run every stage, compare; ``{"stages": [...], "summary": {...}}``."""
    fixture = Fixture(folder)
    stages, (views_ok,) = view_stages(fixture)
    model = convert(fixture)
    more, region = model_stages(model, fixture)
    stages += more
    checks = prediction_checks(model, fixture, region)
    details = checks.pop("details")
    loss_diff = next(s["max_abs"] for s in stages if s["stage"] == "lm_loss_batch")
    n = fixture.regions
    all_of = lambda key: checks[key] == f"{n}/{n}"  # noqa: E731
    float_ok = all(s["rel"] <= TOLERANCE["rel"] for s in stages if s["stage"] != "lm_loss_batch")
    passed = (float_ok and views_ok == f"{n}/{n}" and loss_diff <= TOLERANCE["lm_loss"]
              and all(all_of(k) for k in ("captions_fixed_controls", "captions_pred", "tags", "attribute_ranking",
                                          "category"))
              and checks["attribute_score_max_diff"] <= TOLERANCE["scores"]
              and checks["class_score_max_diff"] <= TOLERANCE["scores"])
    summary = {"pass": bool(passed), **checks, "view_ts": views_ok, "lm_loss_abs_diff": loss_diff,
               "worst_stage": max(stages, key=lambda s: s["rel"])["stage"]}
    if model_out is not None:
        model.config.tags.threshold = fixture.tag_threshold
        model.save_pretrained(model_out)
        summary["model_out"] = str(model_out)
    return {"stages": stages, "summary": summary, "details": details}
