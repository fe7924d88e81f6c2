"""The cross-attention-only decoder shared by the tag and contrastive heads (SPEC §1.4).

BERT-style post-norm layers with **cross-attention only** (no self-attention, no
embeddings): text queries attend to the region representation ``R``; each query is
processed independently, so scoring a large vocabulary can be chunked over queries without
changing any result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttentionLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))
        self.norm2 = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = self.norm1(queries + self._attend(queries, memory))
        return self.norm2(x + self.ffn(x))

    def _attend(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """``self.attn(queries, memory, memory)`` written with its own weights: projections, then
        ``scaled_dot_product_attention``. The same function; unlike ``nn.MultiheadAttention``'s fused inference
        path, its half-precision result for a region does not depend on how many regions share the batch."""
        attn = self.attn
        if attn.training and attn.dropout > 0:
            return attn(queries, memory, memory, need_weights=False)[0]
        q_w, k_w, v_w = attn.in_proj_weight.chunk(3)
        q_b, k_b, v_b = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
        heads = attn.num_heads

        def split(x, w, b):  # (B, L, D) -> (B, heads, L, D / heads)
            return F.linear(x, w, b).unflatten(-1, (heads, -1)).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(queries, q_w, q_b), split(memory, k_w, k_b), split(memory, v_w, v_b))
        return attn.out_proj(out.transpose(1, 2).flatten(2))


class CrossAttentionDecoder(nn.Module):
    """``queries (B, Q, D), memory (B, M, D) → (B, Q, D)``."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, ffn_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(CrossAttentionLayer(dim, num_heads, ffn_dim) for _ in range(num_layers))

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            queries = layer(queries, memory)
        return queries


def decode_vocabulary(decoder, head, text: torch.Tensor, memory: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Run ``head(decoder(text queries, memory))`` for every region and every text, in chunks.

    Args:
        text: (V, D) projected text queries, shared by all regions.
        memory: (B, M, D) projected region representations.
        head: maps (B, q, D) → (B, q) scores.

    Returns:
        (B, V) scores.
    """
    outs = []
    b = memory.shape[0]
    for start in range(0, text.shape[0], chunk):
        q = text[start : start + chunk].unsqueeze(0).expand(b, -1, -1).contiguous()  # one kernel whatever b (bf16)
        outs.append(head(decoder(q, memory)))
    if not outs:
        return memory.new_zeros((b, 0))
    return torch.cat(outs, dim=1)
