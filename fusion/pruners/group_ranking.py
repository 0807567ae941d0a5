"""Rank items inside groups by score, vectorised (used for per-segment and per-anchor top-k)."""

from __future__ import annotations

import torch
from torch import Tensor


def rank_in_group(scores: Tensor, group: Tensor) -> Tensor:
    """Rank of every item among the items of its group, by descending score (0 = best).

    ``rank[i] = #{j : group[j] == group[i] and (s[j] > s[i] or (s[j] == s[i] and j < i))}``; ties go to the earlier
    item, so ``rank < k`` is a deterministic per-group top-k.

    Args:
        scores: ``(N,)`` float, finite.
        group: ``(N,)`` long, ``>= 0``.

    Returns:
        ``(N,)`` long.
    """
    n = scores.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    by_score = torch.sort(scores, descending=True, stable=True).indices  # (N,)
    by_group = torch.sort(group[by_score], stable=True).indices  # (N,) groups ascending, score order inside
    order = by_score[by_group]  # (N,) sorted by (group, -score, index)
    sorted_group = group[order]
    counts = torch.bincount(sorted_group)  # (G,)
    starts = counts.cumsum(0) - counts  # (G,) first slot of each group
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=scores.device) - starts[sorted_group]
    return rank
