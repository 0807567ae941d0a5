"""Hard top-k selection with a straight-through gradient to the scores (EchoingPixels' softmax-STE)."""

from __future__ import annotations

import torch
from torch import Tensor

from fusion.pruners.budget import keep_count
from fusion.pruners.ranking import topk_mask


def masked_softmax(logits: Tensor, pool: Tensor) -> Tensor:
    """``softmax`` over the pool positions of each row, 0 elsewhere; an empty pool gives a zero row (no NaN)."""
    floor = torch.finfo(logits.dtype).min
    soft = torch.where(pool, logits, torch.full_like(logits, floor)).softmax(dim=-1)  # (B, L)
    return torch.where(pool, soft, torch.zeros_like(soft))


def straight_through_topk(scores: Tensor, pools: list[Tensor], retention: float,
                          temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Keep the top ``k = ceil(r * N)`` tokens of each pool; return the keep mask and the STE gate.

    For each pool (one joint audio+video pool, or one per modality) of each sample::

        y_soft = softmax(s / tau) over the pool
        y_hard = 1 on the top-k scores (ties -> earlier position), 0 elsewhere
        y      = y_hard + (y_soft - stopgrad(y_soft))

    The forward value of ``y`` is exactly ``y_hard`` (``a - a == 0`` in floating point, unlike the usual
    ``y_hard - stopgrad(y_soft) + y_soft``), so kept embeddings multiplied by ``y`` are bit-identical to the
    unmultiplied ones; the backward pass is the softmax's Jacobian, ``dL/ds = J_softmax^T dL/dy / tau``, so the
    LM loss reaches every score of the pool. No ratio loss is needed because ``k`` is fixed.

    Args:
        scores: ``(B, L)`` float scores (only pool positions are read).
        pools: ``(B, L)`` bool candidate masks, disjoint.
        retention: fraction kept per pool, in (0, 1].
        temperature: tau.

    Returns:
        ``keep (B, L)`` bool (the union of the pools' kept tokens) and ``gate (B, L)`` float32 (``y`` on pool
        positions, 1 elsewhere).
    """
    s = scores.float()
    keep = torch.zeros_like(pools[0])
    for pool in pools:  # one or two pools
        keep = keep | topk_mask(s.detach(), pool, keep_count(pool.sum(1), retention))  # (B, L)
    return keep, straight_through_gate(s, keep, pools, temperature)


def straight_through_gate(scores: Tensor, keep: Tensor, pools: list[Tensor], temperature: float = 1.0) -> Tensor:
    """``(B, L)`` float32 ``y = y_hard + (y_soft - stopgrad(y_soft))`` on pool positions (1 elsewhere), for a hard
    ``keep`` chosen by any rule (a global or a per-cell top-k); ``y_soft = softmax(s / tau)`` over each pool."""
    s = scores.float()
    gate = torch.ones_like(s)
    for pool in pools:  # one or two pools
        soft = masked_softmax(s / temperature, pool)  # (B, L)
        gate = torch.where(pool, (keep & pool).to(s.dtype) + (soft - soft.detach()), gate)
    return gate
