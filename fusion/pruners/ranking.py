"""Vectorised per-sample selection helpers shared by the pruners."""

from __future__ import annotations

import torch
from torch import Tensor


def topk_mask(scores: Tensor, pool: Tensor, k: Tensor) -> Tensor:
    """Keep the ``k[b]`` highest-scoring pool tokens of every sample.

    Args:
        scores: ``(B, L)`` float; higher = keep first. Ties go to the earlier position.
        pool: ``(B, L)`` bool, the candidates.
        k: ``(B,)`` long, how many to keep per sample (clamped to the pool size).

    Returns:
        ``(B, L)`` bool mask, a subset of ``pool``.
    """
    masked = torch.where(pool, scores.float(), torch.full_like(scores, float("-inf"), dtype=torch.float))
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices  # (B, L)
    slots = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, slots)  # rank[b, order[b, i]] = i
    return pool & (rank < k[:, None])


def pool_rank(pool: Tensor) -> Tensor:
    """``(B, L)`` index of each pool token among its sample's pool tokens, in sequence order (-1 off pool)."""
    return torch.where(pool, pool.long().cumsum(1) - 1, torch.full_like(pool, -1, dtype=torch.long))


def evenly_spaced_mask(pool: Tensor, k: Tensor) -> Tensor:
    """Keep ``k[b]`` pool tokens evenly spaced in sequence order: pool ranks ``floor((i + 0.5) * N / k)``."""
    n = pool.sum(1)  # (B,)
    k = torch.minimum(k, n)
    width = int(n.max()) if pool.numel() else 0
    chosen = torch.zeros(pool.shape[0], width + 1, dtype=torch.bool, device=pool.device)
    kmax = int(k.max()) if k.numel() else 0
    if kmax > 0:
        i = torch.arange(kmax, device=pool.device)[None, :]  # (1, K)
        ranks = torch.div((2 * i + 1) * n[:, None], 2 * k.clamp(min=1)[:, None], rounding_mode="floor")  # (B, K)
        ranks = torch.where(i < k[:, None], ranks, torch.full_like(ranks, width))  # unused slots -> spill column
        chosen.scatter_(1, ranks, True)
    chosen[:, width] = False
    rank = pool_rank(pool)
    return pool & chosen.gather(1, rank.clamp(min=0))
