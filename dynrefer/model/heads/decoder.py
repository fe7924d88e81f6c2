"""The cross-attention-only decoder shared by the tag and contrastive heads (SPEC §1.4).

BERT-style post-norm layers with **cross-attention only** (no self-attention, no
embeddings): text queries attend to the region representation ``R``; each query is
processed independently, so scoring a large vocabulary can be chunked over queries without
changing any result.
"""

from __future__ import annotations

import torch
from torch import nn


class CrossAttentionLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))
        self.norm2 = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attn(queries, memory, memory, need_weights=False)
        x = self.norm1(queries + attended)
        return self.norm2(x + self.ffn(x))


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
        q = text[start : start + chunk].unsqueeze(0).expand(b, -1, -1)
        outs.append(head(decoder(q, memory)))
    if not outs:
        return memory.new_zeros((b, 0))
    return torch.cat(outs, dim=1)
