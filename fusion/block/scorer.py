"""The keep-score MLP: one scalar per (fused) audio/video token, and the per-modality standardisation of its scores."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Scorer(nn.Module):
    """``s = w_2 . GELU(W_1 LayerNorm(x) + b_1) + b_2`` for every token ``x`` in R^D (higher = keep first).

    EchoingPixels scores with RMSNorm -> Linear(D, D) -> SiLU -> Linear(D, 1); this is the same shape of MLP
    with a narrower hidden layer (``hidden``), which keeps the block light on a 3584-wide backbone.

    Args:
        width: D, the backbone's hidden size.
        hidden: width of the hidden layer.
    """

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        """``(..., D)`` -> ``(...)`` scores."""
        return self.mlp(self.norm(x)).squeeze(-1)


def standardise_within(scores: Tensor, pools: list[Tensor], eps: float = 1e-6) -> Tensor:
    """Standardise the scores within each pool of each row: ``z_i = (s_i - mu_p) / sqrt(sigma_p^2 + eps)``.

    ``mu_p`` and ``sigma_p^2`` are the mean and (biased) variance of the scores of pool ``p`` in the row; positions
    outside every pool are 0. An empty pool changes nothing and a one-token pool gives 0 (no NaN).

    Used on the video and audio pools before a joint top-k, it makes the selection invariant to an offset (and a
    positive scale) of one modality's scores: the joint split then follows the shape of the two distributions.

    Args:
        scores: ``(B, L)`` float scores.
        pools: ``(B, L)`` bool masks, disjoint.
    """
    out = torch.zeros_like(scores)  # (B, L)
    for pool in pools:  # video, audio
        count = pool.sum(1, keepdim=True).clamp(min=1)  # (B, 1)
        mean = torch.where(pool, scores, 0.0).sum(1, keepdim=True) / count  # (B, 1)
        var = torch.where(pool, (scores - mean) ** 2, 0.0).sum(1, keepdim=True) / count  # (B, 1)
        out = torch.where(pool, (scores - mean) / (var + eps).sqrt().clamp(min=1e-12), out)  # 0 / tiny -> 0
    return out
