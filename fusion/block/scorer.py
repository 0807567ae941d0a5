"""The keep-score MLP: one scalar per (fused) audio/video token."""

from __future__ import annotations

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
