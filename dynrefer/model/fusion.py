"""Multi-view fusion (SPEC §1.3.4): per region, the tokens of the n views concatenated along
channels (view order) → ``Linear(C·n → C) → ReLU → Linear(C → C)``."""

from __future__ import annotations

import torch
from torch import nn


class ViewFusion(nn.Module):
    """``(R, n, T, C)`` view tokens → ``(R, T, C)`` fused tokens."""

    def __init__(self, channels: int, num_views: int):
        super().__init__()
        self.num_views = int(num_views)
        self.fc1 = nn.Linear(channels * num_views, channels)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(channels, channels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        r, n, t, c = tokens.shape
        if n != self.num_views:
            raise ValueError(f"this fusion layer is sized for {self.num_views} views, got {n}")
        x = tokens.permute(0, 2, 1, 3).reshape(r, t, n * c)
        return self.fc2(self.act(self.fc1(x)))
