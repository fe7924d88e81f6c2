"""Stage 1 of the built-in model (SPEC §4): pretrain a small CLIP contrastively, then freeze it.

Pairs are (view of a region, one of its captions): the view parameter ``t`` is drawn from
{0, 0.1, …, 1.0}, so the encoder sees region crops (detail) as well as whole images with the
region inside (context). With ``detail_text_prob`` > 0 a pair is, that often, a close view (t ≤ 0.2)
with the region's *detail description* instead ("the striped red circle": its non-size attribute values
and its category, see :func:`detail_description`): whole captions can be told apart by colour and
position words alone, so without these pairs the encoder never has to see shape or pattern. With
``detail_subsets`` the detail text names a random subset of those values instead, with or without the
category ("the striped object", "the red star": :func:`dynrefer.train.data.short_description_facts`),
and every region of the batch it is true of counts as its positive — a pattern-only text makes the
encoder tell the patterns apart across the whole batch. The loss is open_clip's InfoNCE with every
identical text of the batch (and every region a detail text is true of) counted as a positive
(:func:`multi_positive_clip_loss`; the same as ``open_clip.ClipLoss`` when all texts differ). The model is an
open_clip ``CLIP`` built from a config dict (e.g.
``dynrefer.model.config.TINY_CLIP`` or the built-in model's encoder config) and trained with
that loss; the result is written as a safetensors file that
``EncoderConfig.weights`` loads.
"""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import InputError
from ..images import load_image
from ..model.encoder import build_open_clip, load_local_weights
from ..records import read_jsonl
from ..regions import parse_region
from ..views import CANDIDATE_TS, render_crops, view_geometry
from .data import attribute_synonyms, contrastive_positives, region_facts, short_description_facts, without_attributes

DETAIL_TS = (0.0, 0.1, 0.2)


CONTEXT_PREFIXES = ("size:", "position:")


def detail_description(spec: dict, skip_prefixes: tuple[str, ...] = CONTEXT_PREFIXES) -> str | None:
    """``"the {attribute values} {category}"`` of a region (attributes in their stored order, those
    with a prefix in ``skip_prefixes`` left out: a close crop cannot show absolute size or where the
    region is in the image); None without a category."""
    category = spec.get("category")
    if not category:
        return None
    values = [words[0] for a in spec.get("attributes") or [] if not str(a).startswith(skip_prefixes)
              for words in [attribute_synonyms(a)] if words]
    return " ".join(["the", *values, str(category)])


def multi_positive_clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
                             texts: list[str], positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE of normalised ``image`` / ``text`` (B, D) where pair (i, j) (image i, text j)
    is a positive when ``texts[i] == texts[j]`` or ``positives[i, j]`` ((B, B) bool: text j is true of
    image i); the targets are spread evenly over each row's positives (image → text) and each
    column's (text → image)."""
    logits = scale * image @ text.t()
    ids = {t: k for k, t in enumerate(dict.fromkeys(texts))}
    key = torch.tensor([ids[t] for t in texts], device=image.device)
    same = key[:, None] == key[None, :]
    if positives is not None:
        same = same | positives.to(device=image.device, dtype=torch.bool)
    same = same.to(logits.dtype)
    loss_i = -(same / same.sum(1, keepdim=True) * torch.log_softmax(logits, dim=1)).sum(1).mean()
    same_t = same.t()
    loss_t = -(same_t / same_t.sum(1, keepdim=True) * torch.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def collate_pairs(samples: list) -> tuple:
    """``(pixels, text, facts)`` samples of :class:`ViewCaptionDataset` → ``(pixels (B, 3, S, S), texts,
    positives (B, B) bool)`` (``positives[i, j]``: text j is true of region i; the diagonal always)."""
    pixels = torch.stack([p for p, _, _ in samples])
    facts = [{"text_facts": f[0], "region_facts": f[1]} for _, _, f in samples]
    return pixels, [t for _, t, _ in samples], contrastive_positives(facts)


class ViewCaptionDataset(Dataset):
    """(rendered view, text, facts) triples from a JSONL file, one per captioned region: a caption with a
    view at random t, or (``detail_text_prob``) the detail description with a close view — the whole
    description, or with ``detail_subsets`` a random subset of it. ``facts`` = ``(text facts, region
    facts)`` for :func:`collate_pairs` (text facts None for a caption or a whole description: only
    identical texts are its positives). ``detail_skip``: the attribute prefixes the detail texts leave
    out (default size and position; ``("position:",)`` names the absolute size too, which a close view
    shows only through the scale of the pattern, the grain and the edges)."""

    def __init__(self, path, *, split: str | None = "train", image_root=None, size: int = 64, train: bool = True,
                 detail_text_prob: float = 0.0, detail_subsets: bool = False,
                 detail_skip: tuple[str, ...] = CONTEXT_PREFIXES):
        self.path = Path(path)
        self.root = Path(image_root) if image_root else self.path.parent
        records = [r for r in read_jsonl(self.path) if split is None or r.get("split") == split]
        self.records = records
        self.items = [(i, j) for i, rec in enumerate(records) for j, reg in enumerate(rec.get("regions", []))
                      if reg.get("captions")]
        if not self.items:
            raise InputError(f"'{self.path}' has no captioned regions" + (f" in split {split!r}" if split else ""))
        self.size, self.train = size, train
        if not 0.0 <= float(detail_text_prob) <= 1.0:
            raise InputError(f"detail_text_prob must be in [0, 1], got {detail_text_prob!r}")
        self.detail_text_prob = float(detail_text_prob)
        self.detail_subsets = bool(detail_subsets)
        self.detail_skip = tuple(str(p) for p in detail_skip)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        i, j = self.items[index]
        record, spec = self.records[i], self.records[i]["regions"][j]
        image = load_image(self.root / record["image"])
        region = parse_region(spec, (int(image.shape[2]), int(image.shape[1])), index=j)
        visible = without_attributes(spec, self.detail_skip)  # what a close view is taken to show
        detail, text_facts = None, None
        if self.train and self.detail_text_prob > 0 and random.random() < self.detail_text_prob:
            if self.detail_subsets and spec.get("category"):
                detail, *text_facts = short_description_facts(visible, random.Random(random.getrandbits(62)))
                text_facts = tuple(text_facts)
            else:
                detail = detail_description(spec, self.detail_skip)
        if detail is not None:
            t, text = random.choice(DETAIL_TS), detail
        else:
            t = random.choice((0.0,) + CANDIDATE_TS) if self.train else 0.0
            text = random.choice(spec["captions"]) if self.train else spec["captions"][0]
        geom = view_geometry(region.box, (int(image.shape[2]), int(image.shape[1])), [t], self.size)
        pixels = render_crops(image, geom.crops, self.size)[0]
        return pixels, text, (text_facts, region_facts(visible))


class ClipPretrainModule(L.LightningModule):
    """Contrastive pretraining of an open_clip model given as a config dict."""

    def __init__(self, clip_config: dict, lr: float = 5e-4, weight_decay: float = 0.1, warmup_steps: int = 100):
        super().__init__()
        self.save_hyperparameters()
        self.clip = build_open_clip(clip_config)
        self.context_length = int(clip_config.get("text_cfg", {}).get("context_length", 77))

    def _step(self, batch):
        import open_clip

        pixels, captions, *rest = batch  # (pixels, texts[, positives]) — collate_pairs adds the positives
        tokens = open_clip.tokenize(list(captions), context_length=self.context_length).to(pixels.device)
        image = self.clip.encode_image(pixels, normalize=True)
        text = self.clip.encode_text(tokens, normalize=True)
        return multi_positive_clip_loss(image, text, self.clip.logit_scale.exp(), list(captions),
                                        rest[0] if rest else None)

    def training_step(self, batch, batch_idx):
        loss = self._step(batch)
        self.log("train/clip_loss", loss, prog_bar=True, batch_size=len(batch[1]))
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/clip_loss", self._step(batch), prog_bar=True, batch_size=len(batch[1]), sync_dist=True)

    def configure_optimizers(self):
        from .module import parameter_groups

        h = self.hparams
        opt = torch.optim.AdamW(parameter_groups(self.clip, h.weight_decay), lr=h.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self.trainer is not None else 1000
        warm = min(h.warmup_steps, total // 2)

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            import math

            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def export(self, path) -> Path:
        """Write the CLIP weights as safetensors (loadable as ``EncoderConfig.weights``)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.clip.state_dict().items()}
        save_file(state, str(path))
        return path


def pretrain_clip(jsonl, clip_config: dict, out, *, size: int = 64, batch_size: int = 128, max_epochs: int = 1,
                  max_steps: int = -1, num_workers: int = 2, lr: float = 5e-4, seed: int = 42, image_root=None,
                  accelerator: str = "auto", default_root_dir=None, detail_text_prob: float = 0.0,
                  detail_subsets: bool = False, detail_skip: tuple[str, ...] = CONTEXT_PREFIXES,
                  init_weights=None) -> Path:
    """Pretrain and export; returns the safetensors path. ``init_weights``: a safetensors file of the
    same config (an earlier export) to continue from instead of a random initialisation."""
    L.seed_everything(seed, workers=True)
    module = ClipPretrainModule(clip_config, lr=lr)
    if init_weights is not None:
        load_local_weights(module.clip, init_weights, what="CLIP weights")
    train = ViewCaptionDataset(jsonl, split="train", image_root=image_root, size=size,
                               detail_text_prob=detail_text_prob, detail_subsets=detail_subsets,
                               detail_skip=detail_skip)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
                        persistent_workers=num_workers > 0, collate_fn=collate_pairs)
    trainer = L.Trainer(max_epochs=max_epochs, max_steps=max_steps, accelerator=accelerator, logger=False,
                        enable_checkpointing=False, default_root_dir=default_root_dir, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=loader)
    return module.export(out)
