"""Contrastive decoder for attributes and categories (SPEC §1.4), SigLIP-style.

Text queries (CLIP text embeddings of prompts or captions, projected to ``dim``) attend to
the projected region representation in a cross-attention-only decoder; the output is
L2-normalised and scored by ``Linear(dim → 1)``; ``logit = s · exp(t) + b`` with learned
``t`` (init log 10) and ``b`` (init −10).

Training (official normalisation): each region against its own caption (label +1) and the
other captions of the batch (−1), per direction ``−Σ_ij log σ(label_ij · logit_ij) / B``
with ``B`` the local batch size, averaged over region→text and text→region. Under data
parallelism the caller passes the captions / regions gathered from all processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InputError
from ..config import ContrastiveHeadConfig
from .decoder import CrossAttentionDecoder, decode_vocabulary

#: ``contrastive.scores``: what inference reports (see :meth:`dynrefer.model.dynrefer.DynRefer.predict`).
SCORE_MODES = ("calibrated", "official")


class ContrastiveHead(nn.Module):
    """``R (B, Q, D_r), texts (V, D_t) → logits (B, V)``."""

    def __init__(self, cfg: ContrastiveHeadConfig, region_dim: int, text_dim: int):
        super().__init__()
        if cfg.scores not in SCORE_MODES:
            raise InputError(f"contrastive.scores must be one of {', '.join(SCORE_MODES)}, got {cfg.scores!r}")
        self.cfg = cfg
        self.text_proj = nn.Linear(text_dim, cfg.dim)
        self.region_proj = nn.Linear(region_dim, cfg.dim)
        self.decoder = CrossAttentionDecoder(cfg.dim, cfg.num_layers, cfg.num_heads, cfg.ffn_dim)
        self.score = nn.Linear(cfg.dim, 1)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(cfg.init_logit_bias)))

    def _raw(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.score(F.normalize(hidden, dim=-1)).squeeze(-1)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._raw(hidden) * self.logit_scale.exp() + self.logit_bias

    def forward(self, region: torch.Tensor, text_embeddings: torch.Tensor, chunk: int = 1024, *,
                raw: bool = False) -> torch.Tensor:
        """(B, V) logits ``s·exp(t) + b``; ``raw``: the scores ``s`` alone."""
        text = self.text_proj(text_embeddings.to(self.text_proj.weight.dtype))
        return decode_vocabulary(self.decoder, self._raw if raw else self._head, text, self.region_proj(region), chunk)

    def loss(
        self,
        region: torch.Tensor,
        text_embeddings: torch.Tensor,
        *,
        all_regions: torch.Tensor | None = None,
        all_texts: torch.Tensor | None = None,
        offset: int = 0,
        positives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """SigLIP loss of local regions/captions ``(B, ...)``; ``all_*`` are the gathered
        global batches (default: the local ones) and ``offset`` the local batch's position in them.
        ``positives`` (B, B) bool, without gathering only: region ``i`` / text ``j`` pairs labelled
        +1 besides the diagonal (texts true of several regions)."""
        b = region.shape[0]
        all_regions = region if all_regions is None else all_regions
        all_texts = text_embeddings if all_texts is None else all_texts
        labels_r2t = -torch.ones((b, all_texts.shape[0]), device=region.device, dtype=torch.float32)
        labels_r2t[torch.arange(b), offset + torch.arange(b)] = 1
        if positives is not None:
            if all_texts is not text_embeddings or tuple(positives.shape) != (b, b):
                raise ValueError(f"positives must be ({b}, {b}) and used without gathering, "
                                 f"got {tuple(positives.shape)}")
            labels_r2t = labels_r2t.masked_fill(positives.to(region.device), 1.0)
        r2t = self.forward(region, all_texts).float()  # (B, B_all); the loss in float32 whatever the precision
        loss_r2t = -F.logsigmoid(labels_r2t * r2t).sum() / b
        if all_regions is region and all_texts is text_embeddings:
            return loss_r2t  # without gathering both directions sum over the same pairs
        t2r = self.forward(all_regions, text_embeddings).float().transpose(0, 1)  # (B_texts, B_all regions)
        loss_t2r = -F.logsigmoid(labels_r2t * t2r).sum() / b
        return (loss_r2t + loss_t2r) / 2
