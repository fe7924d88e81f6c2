"""Tag decoder (SPEC §1.4): tag text embeddings as queries over ``R``, asymmetric loss.

Tag texts are embedded once by the frozen CLIP text tower (the caller passes the
``(T, D_text)`` embeddings, e.g. the model's ``tag_embeddings`` buffer); they are projected
to ``dim``, ``R`` is projected to ``dim``, a cross-attention-only decoder runs with the tags
as queries, and ``Linear(dim → 1)`` gives one logit per tag. Targets are the tags parsed
from the region's captions; the loss is the asymmetric loss (γ− = 7, γ+ = 0, clip 0.05,
eps 1e-8), summed over tags and regions. Inference: sigmoid > threshold.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import TagHeadConfig
from .decoder import CrossAttentionDecoder, decode_vocabulary


def asymmetric_loss(logits, targets, *, gamma_neg=7.0, gamma_pos=0.0, clip=0.05, eps=1e-8) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al. 2021), summed: timm's ``AsymmetricLossMultiLabel``, computed in float32
    whatever the model's precision (in float16 the sigmoid underflows and the loss is NaN).

    ``p = σ(x)``; negatives use the shifted probability ``p_m = max(p − clip, 0)``;
    ``loss = −Σ [y (1 − p)^γ+ log p + (1 − y) p_m^γ− log(1 − p_m)]`` with both logarithms clamped at ``eps``
    (``tests/test_model_parts.py`` checks it against that formula, written out).
    """
    from timm.loss import AsymmetricLossMultiLabel

    loss = AsymmetricLossMultiLabel(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, eps=eps, reduction="sum")
    return loss(logits.float(), targets.float())


class TagHead(nn.Module):
    """``R (B, Q, D_r), tag embeddings (T, D_t) → logits (B, T)``."""

    def __init__(self, cfg: TagHeadConfig, region_dim: int, text_dim: int):
        super().__init__()
        self.cfg = cfg
        self.text_proj = nn.Linear(text_dim, cfg.dim)
        self.region_proj = nn.Linear(region_dim, cfg.dim)
        self.decoder = CrossAttentionDecoder(cfg.dim, cfg.num_layers, cfg.num_heads, cfg.ffn_dim)
        self.classifier = nn.Linear(cfg.dim, 1)

    def forward(self, region: torch.Tensor, tag_embeddings: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        text = self.text_proj(tag_embeddings.to(self.text_proj.weight.dtype))
        memory = self.region_proj(region)
        return decode_vocabulary(self.decoder, lambda h: self.classifier(h).squeeze(-1), text, memory, chunk)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        return asymmetric_loss(logits, targets, gamma_neg=c.gamma_neg, gamma_pos=c.gamma_pos, clip=c.clip, eps=c.eps)
