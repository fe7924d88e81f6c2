"""``DynRefer``: the whole network as a pure ``nn.Module`` (SPEC §1.3–§1.4).

No device, precision or loop logic: it runs on whatever device / dtype the caller puts it
on. Inputs are batches of already-rendered views (see :mod:`dynrefer.view_selection`):

* ``pixels`` (P, 3, S, S): CLIP-normalised views (or uint8 RGB views, normalised by the model);
  ``view_index`` (R·n,) optionally maps each
  region's views onto rows of ``pixels`` (identical crops encoded once); without it
  ``pixels`` holds the R·n views region-major;
* ``boxes_in_view`` (R·n, 4): the region box in each view's pixels (for RoI-align);
* training only: ``captions`` (R strings), ``controls`` (R control strings), ``tags``
  (R lists of tag names); optional ``contrastive_texts`` (R texts the contrastive head pairs
  with the regions instead of the captions) and ``contrastive_positives`` ((R, R) bool: extra
  matching region/text pairs; used on one process, ignored when the loss is gathered across
  processes, where only each region's own text is its positive).

``forward(batch)`` returns the weighted losses; ``predict(...)`` the per-region outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from ..view_policies import check_model_views
from ..views import normalize
from .align import DeformableAlignment
from .config import DynReferConfig
from .encoder import FrozenCLIP
from .fusion import ViewFusion
from .heads.contrastive import ContrastiveHead
from .heads.language import LanguageHead, control_string
from .heads.tags import TagHead
from .outputs import RegionOutputs, ranked
from .qformer import RegionQFormer
from .roi import ViewRoIAlign


class DynRefer(nn.Module):
    """DynRefer model. ``DynRefer(config, tags=[...])`` builds it with random trainable parts.

    Args:
        config: the model configuration.
        categories, attributes: default class names and attribute names (or OVAD-style
            metadata dicts) used when ``predict`` is given none.
        tags: the tag vocabulary (the RAM tag list officially); embedded once by the frozen
            text tower into the ``tag_embeddings`` buffer. Empty: no tag head outputs.
    """

    def __init__(self, config: DynReferConfig, tags: list[str] | None = None, categories: list[str] | None = None,
                 attributes: list | None = None):
        super().__init__()
        self.config = config
        #: Default vocabularies of ``predict`` / ``describe`` (saved in ``vocab.json``).
        self.categories = list(categories or [])
        self.attributes = list(attributes or [])
        self.encoder = FrozenCLIP(config.encoder)
        c = self.encoder.width
        grid = config.views.size // self.encoder.patch_size
        self.roi = ViewRoIAlign(config.roi.output_size or grid, self.encoder.patch_size,
                                config.roi.sampling_ratio, config.roi.aligned)
        n = config.views.num_views
        if config.views.policy == "fixed" or config.views.train_policy == "fixed":
            check_model_views("fixed", n, config.views.fixed_ts, where="views.fixed_ts")
        self.align = (DeformableAlignment(c, groups=config.align.groups, kernel_size=config.align.kernel_size,
                                          init=config.align.init)
                      if config.align.enabled and n > 1 else None)
        self.fusion = ViewFusion(c, n)
        self.qformer = RegionQFormer(config.qformer, c)
        hidden = config.qformer.hidden_size
        text_dim = self._text_dim()
        self.tag_names = list(tags or [])
        self.tag_head = TagHead(config.tags, hidden, text_dim) if config.tags.enabled else None
        self.register_buffer("tag_embeddings", torch.zeros(len(self.tag_names), text_dim), persistent=True)
        if self.tag_names and self.tag_embeddings.device.type != "meta":
            self.tag_embeddings.copy_(self.embed_texts(self.tag_names))
        self.contrastive_head = (ContrastiveHead(config.contrastive, hidden, text_dim) if config.contrastive.enabled
                                 else None)
        self.language_head = LanguageHead(config.language, hidden) if config.language.enabled else None
        if self.language_head is not None and config.qformer.init_from:
            self._load_blip2_projection(config.qformer.init_from)
        self._text_cache: dict[tuple[str, ...], torch.Tensor] = {}

    def _load_blip2_projection(self, source) -> None:
        """BLIP-2's ``language_projection`` → the LM projection, when the source has it and it fits."""
        from pathlib import Path

        from .encoder import read_weights

        state = read_weights(Path(source))
        weight, bias = state.get("language_projection.weight"), state.get("language_projection.bias")
        proj = self.language_head.proj
        if weight is not None and tuple(weight.shape) == tuple(proj.weight.shape):
            with torch.no_grad():
                proj.weight.copy_(weight)
                if bias is not None:
                    proj.bias.copy_(bias)

    # ------------------------------------------------------------------------- encoders
    def _text_dim(self) -> int:
        proj = getattr(self.encoder.clip, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[1])
        if isinstance(proj, nn.Linear):
            return int(proj.out_features)
        text = getattr(self.encoder.clip, "text", None)
        return int(getattr(text, "output_dim", None) or self.encoder.clip.visual.output_dim)

    @torch.no_grad()
    def embed_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Frozen CLIP text embeddings (T, D_text) of ``texts``, on the model's device."""
        device = self.tag_embeddings.device
        outs = []
        for start in range(0, len(texts), batch_size):
            tokens = self.encoder.tokenize(texts[start : start + batch_size]).to(device)
            outs.append(self.encoder.encode_text(tokens).float())
        if not outs:
            return torch.zeros((0, self.tag_embeddings.shape[1]), device=device)
        return torch.cat(outs)

    def cached_text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """:meth:`embed_texts` computed once per vocabulary (cache keyed by the text tuple)."""
        key = tuple(texts)
        hit = self._text_cache.get(key)
        if hit is None or hit.device != self.tag_embeddings.device:
            hit = self.embed_texts(list(texts))
            self._text_cache[key] = hit
        return hit

    def _encode(self, pixels: torch.Tensor):
        if pixels.dtype == torch.uint8:  # raw views: CLIP-normalised here, on the model's device, chunk by chunk
            pixels = normalize(pixels)
            weight = self.tag_embeddings
            if weight.dtype != pixels.dtype and not torch.is_autocast_enabled(pixels.device.type):
                pixels = pixels.to(weight.dtype)  # a model cast as a whole (model.to(torch.bfloat16))
        return self.encoder(pixels)

    def encode_views(self, pixels: torch.Tensor, batch_size: int | None = None):
        """The frozen encoder over (P, 3, S, S) views, ``batch_size`` views at a time:
        CLS (P, C) and patch maps (P, C, h, w). ``pixels``: CLIP-normalised floats, or uint8 RGB views
        (normalised here: a quarter of the bytes to move to the device)."""
        if batch_size is None or pixels.shape[0] <= batch_size:
            return self._encode(pixels)
        parts = [self._encode(pixels[i : i + batch_size]) for i in range(0, pixels.shape[0], batch_size)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def encode_regions(self, pixels, boxes_in_view, view_index=None, encoder_batch_size=None) -> torch.Tensor:
        """Region representations R (num_regions, num_query_tokens, hidden)."""
        cls, patches = self.encode_views(pixels, encoder_batch_size)
        if view_index is not None and not (view_index.shape[0] == cls.shape[0] and bool(
                torch.equal(view_index, torch.arange(cls.shape[0], device=view_index.device)))):
            cls, patches = cls[view_index], patches[view_index]  # (an identity map: every view unique, in order)
        n = self.config.views.num_views
        if cls.shape[0] % n:
            raise ValueError(f"{cls.shape[0]} views is not a multiple of num_views={n}")
        tokens = self.roi(cls, patches, boxes_in_view)  # (R*n, 1 + h*w, C)
        r = tokens.shape[0] // n
        tokens = tokens.reshape(r, n, tokens.shape[1], tokens.shape[2])
        if self.align is not None:
            h = w = self.roi.output_size
            maps = tokens[:, :, 1:].unflatten(2, (h, w))  # (R, n, h, w, C), channels-last throughout
            extra = maps[:, 1:].reshape(r * (n - 1), h, w, -1)
            reference = maps[:, 0].repeat_interleave(n - 1, dim=0)
            aligned = self.align(extra.permute(0, 3, 1, 2), reference.permute(0, 3, 1, 2))  # (B, C, h, w)
            aligned = aligned.permute(0, 2, 3, 1).reshape(r, n - 1, h * w, -1)
            tokens = torch.cat([tokens[:, :1], torch.cat([tokens[:, 1:, :1], aligned], dim=2)], dim=1)
        fused = self.fusion(tokens)
        return self.qformer(fused)

    # ------------------------------------------------------------------------- training
    def tag_targets(self, tags: list[list[str]]) -> torch.Tensor:
        index = {t: i for i, t in enumerate(self.tag_names)}
        out = torch.zeros((len(tags), len(self.tag_names)), device=self.tag_embeddings.device)
        for r, names in enumerate(tags):
            for name in names:
                if name in index:
                    out[r, index[name]] = 1.0
        return out

    def forward(self, batch: dict, gather=None, rank: int = 0) -> dict[str, torch.Tensor]:
        """Weighted losses: ``loss`` = LM + 0.01·tag + 0.5·contrastive (config weights).

        ``gather`` (data parallelism): a callable concatenating a tensor across processes
        with gradients (equal local batch sizes); ``rank``: this process's index in it. The
        contrastive loss then uses every process's captions and regions as negatives.
        """
        region = self.encode_regions(batch["pixels"], batch["boxes_in_view"], batch.get("view_index"))
        losses: dict[str, torch.Tensor] = {}
        captions = batch["captions"]
        if self.language_head is not None:
            controls = batch.get("controls") or [control_string([])] * len(captions)
            losses["loss_lm"] = self.language_head.loss(region, controls, captions)
        if self.tag_head is not None and self.tag_names:
            logits = self.tag_head(region, self.tag_embeddings)
            losses["loss_tag"] = (self.config.tags.loss_weight
                                  * self.tag_head.loss(logits, self.tag_targets(batch["tags"])))
        if self.contrastive_head is not None:
            texts = self.embed_texts(list(batch.get("contrastive_texts") or captions))
            extra = {}
            if gather is not None:
                extra = dict(all_regions=gather(region), all_texts=gather(texts), offset=rank * region.shape[0])
            elif batch.get("contrastive_positives") is not None:
                extra = dict(positives=batch["contrastive_positives"])
            loss = self.contrastive_head.loss(region, texts, **extra)
            losses["loss_contrastive"] = self.config.contrastive.loss_weight * loss
        losses["loss"] = sum(losses.values()) if losses else region.sum() * 0
        return losses

    # ------------------------------------------------------------------------ inference
    @torch.no_grad()
    def tag_probabilities(self, region: torch.Tensor) -> torch.Tensor:
        """(R, T) float32 sigmoid probability of every tag, on the CPU (float32 whatever the model's dtype: no
        bfloat16 rounding flips a tag at the threshold); (R, 0) without a tag head or tags."""
        if self.tag_head is None or not self.tag_names:
            return torch.zeros(region.shape[0], 0)
        return torch.sigmoid(self.tag_head(region, self.tag_embeddings).float()).cpu()

    def predict_tags(self, region: torch.Tensor, threshold: float | None = None) -> list[list[tuple[str, float]]]:
        """Per region, the tags above ``threshold`` (default ``config.tags.threshold``) with their probabilities,
        highest first: the order the control strings of captions use."""
        thr = self.config.tags.threshold if threshold is None else threshold
        return ranked(self.tag_names, self.tag_probabilities(region), thr)

    @torch.no_grad()
    def score_texts(self, region: torch.Tensor, texts: list, *, raw: bool = False) -> torch.Tensor:
        """Contrastive logits (R, V) of regions against ``texts`` (embeddings cached): a list of strings, or a
        list of such lists (vocabularies cached one by one, scored in one pass, columns in that order).
        ``raw``: the scores ``s`` before the SigLIP scale and bias."""
        if self.contrastive_head is None:
            raise ValueError("this model has no contrastive head")
        if len(texts) and not isinstance(texts[0], str):
            embeddings = torch.cat([self.cached_text_embeddings(group) for group in texts])
        else:
            embeddings = self.cached_text_embeddings(texts)
        return self.contrastive_head(region, embeddings, raw=raw)

    @torch.no_grad()
    def caption(self, region: torch.Tensor, tags: list[list[str]] | None = None, *, controls: list[str] | None = None,
                **generate_kwargs):
        """Captions and scores; ``tags`` (per region, deterministic order) form the control strings, unless
        ``controls`` (one control string per region, e.g. ``"red car,street|"``) gives them."""
        if self.language_head is None:
            raise ValueError("this model has no language head")
        if controls is None:
            controls = [control_string(t) for t in (tags or [[] for _ in range(region.shape[0])])]
        elif len(controls) != region.shape[0]:
            raise ValueError(f"{len(controls)} control strings for {region.shape[0]} regions")
        return self.language_head.generate(region, list(controls), **generate_kwargs)

    # ---------------------------------------------------------------------------- I/O
    def save_pretrained(self, directory, *, include_frozen: bool = True, frozen_dtype: str | None = None):
        """Write ``config.json`` + ``model.safetensors`` (+ ``tags.txt``, ``tokenizer/``).

        With ``include_frozen=False`` the frozen parts that came from local files (encoder
        weights, a pretrained LM) are recorded by path and sha256 instead of stored.
        """
        from .io import save_pretrained

        return save_pretrained(self, directory, include_frozen=include_frozen, frozen_dtype=frozen_dtype)

    @classmethod
    def from_pretrained(cls, directory, *, encoder_path=None, llm_path=None, check_hashes: bool = True,
                        dtype: torch.dtype | None = None):
        """Load a folder written by :meth:`save_pretrained`; ``encoder_path`` / ``llm_path``
        point frozen parts saved by reference elsewhere. ``dtype``: the floating tensors' dtype (None: as the
        folder stores them: a folder saved from a bfloat16 model loads as bfloat16, any other as float32)."""
        from .io import from_pretrained

        return from_pretrained(cls, directory, encoder_path=encoder_path, llm_path=llm_path, check_hashes=check_hashes,
                               dtype=dtype)

    @torch.no_grad()
    def predict(
        self,
        batch: dict,
        tasks=("caption", "tags", "attributes", "category"),
        *,
        attributes=None,
        categories=None,
        tag_threshold: float | None = None,
        none_threshold: float | None = None,
        noun: str | None = None,
        encoder_batch_size: int | None = None,
        controls: list[str] | None = None,
        **generate_kwargs,
    ) -> RegionOutputs:
        """The outputs of the requested ``tasks`` for a batch of rendered views (see the module docstring), as
        tensors: a :class:`~dynrefer.model.outputs.RegionOutputs` (records: ``inference.records``).

        Captions are generated from control strings made of the tags above ``tag_threshold`` (default
        ``config.tags.threshold``), by score, unless ``controls`` gives one string per region. ``attributes`` /
        ``categories``: the vocabularies to score (names; attributes also OVAD-style ``{"name": ...}``); scores
        follow ``config.contrastive.scores``. ``none_threshold`` (default ``config.contrastive.none_threshold``):
        a region whose best class logit is below it has no category. ``noun``: the attribute prompts' noun
        (default ``config.contrastive.prompt_noun``). ``encoder_batch_size`` bounds the views per encoder call.
        """
        from .vocab import attribute_prompts, category_prompts, max_over_prompts

        tasks = tuple(tasks)
        unknown = set(tasks) - {"caption", "tags", "attributes", "category"}
        if unknown:
            raise ValueError(f"unknown task(s) {sorted(unknown)}; expected caption, tags, attributes, category")
        region = self.encode_regions(batch["pixels"], batch["boxes_in_view"], batch.get("view_index"),
                                     encoder_batch_size)
        thr = self.config.tags.threshold if tag_threshold is None else tag_threshold
        out = RegionOutputs(tasks=tasks, num_regions=int(region.shape[0]), tag_names=list(self.tag_names),
                            tag_threshold=thr, region=region)
        if "tags" in tasks or "caption" in tasks:
            out.tag_probs = self.tag_probabilities(region)
        if "caption" in tasks:
            tags = [[n for n, _ in t] for t in ranked(out.tag_names, out.tag_probs, thr)]
            if controls is None:
                controls = [control_string(t) for t in tags]
            captions, scores = self.caption(region, tags, controls=controls, **generate_kwargs)
            out.captions, out.controls = list(captions), list(controls)
            out.caption_scores = torch.tensor(scores, dtype=torch.float64)  # exact for any Python float
        want_attributes = "attributes" in tasks and bool(attributes)
        want_categories = "category" in tasks and bool(categories)
        ccfg = self.config.contrastive
        official = ccfg.scores == "official"
        noun = ccfg.prompt_noun if noun is None else noun
        prompts, owner = (attribute_prompts(attributes, noun, ccfg.extra_synonyms) if want_attributes else ([], []))
        category_texts = category_prompts(categories) if want_categories else []
        if want_attributes or want_categories:  # one decoder pass for both vocabularies: its queries are independent
            scores = self.score_texts(region, [t for t in (prompts, category_texts) if t], raw=official)
        if want_attributes:
            out.attribute_names = [a if isinstance(a, str) else a["name"] for a in attributes]
            logits = max_over_prompts(scores[:, : len(prompts)].float(), owner, len(out.attribute_names))
            out.attribute_scores = torch.sigmoid(logits).cpu()
        if want_categories:
            logits = scores[:, len(prompts) :].float()
            out.category_names = list(categories)
            out.category_scores = (logits if official else torch.softmax(logits, dim=1)).cpu()
            out.category_logits = logits.cpu()
            out.none_threshold = ccfg.none_threshold if none_threshold is None else none_threshold
        return out

    @classmethod
    def from_official(cls, checkpoint, *, eva=None, blip2=None, llm=None, tags=None, eva_clip_text=None, config=None):
        """The paper's model from the published files (DynRefer ``.pth``, ``eva_vit_g.pth``, BLIP-2,
        Flan-T5-XL folder); see :mod:`dynrefer.model.official`. Nothing is unpickled freely."""
        from .official import from_official

        return from_official(cls, checkpoint, eva=eva, blip2=blip2, llm=llm, tags=tags, eva_clip_text=eva_clip_text,
                             config=config)
