"""The relaxed (soft) top-k of training: a sigmoid around a threshold solved so that the kept mass is the budget.

For entries ``m`` of groups ``p`` (tokens of a cell, or cells of a pool) with logits ``z_m``, weights ``w_m`` and
targets ``T_p``::

    y_m = sigmoid((z_m + b_p) / tau),      b_p such that  sum_{m in p} w_m y_m = T_p

``b_p`` is found by bisection (no gradient), then one Newton step that is zero in value but carries the implicit
gradient ``db_p/dz_m = -w_m y_m' / sum_j w_j y_j'`` and ``db_p/dT_p = tau / sum_j w_j y_j'`` (``y' = y (1 - y)``),
so ``y`` stays on the budget for every small change of the logits and the targets. As ``tau -> 0`` it becomes the
hard top-k (``y`` -> 1 on the ``T_p`` largest logits); every entry's logit gets gradient at any ``tau > 0``.

Used twice by the block: over the cells of a pool (``w = n_c``, targets ``K_p``: the allocation) and over the tokens
of a cell (``w = 1``, targets ``kappa_c``: which tokens). In the LM the soft keep ``y_i`` enters as the attention
bias ``log y_i = log sigmoid(x_i)`` on token ``i``'s key (:func:`key_bias`): ``y_i = 1`` is a kept token,
``y_i -> 0`` a dropped one.
"""

from __future__ import annotations

import torch
from torch import Tensor

BISECTION_STEPS = 40
BIAS_FLOOR = -1e4  # log y never goes below this: exp(-1e4) is 0 in float32, as if the key were masked


def _group_sum(values: Tensor, index: Tensor, n_index: int) -> Tensor:
    return values.new_zeros(n_index).index_add(0, index, values)


def sigmoid_budget(logits: Tensor, index: Tensor, n_index: int, target: Tensor, weight: Tensor | None = None,
                   temperature: float = 1.0) -> Tensor:
    """``(M,)`` ``y_m = sigmoid((z_m + b_p) / tau)`` with ``sum_{m in p} w_m y_m = T_p`` (see module doc)."""
    return budget_logits(logits, index, n_index, target, weight, temperature).sigmoid()


def budget_logits(logits: Tensor, index: Tensor, n_index: int, target: Tensor, weight: Tensor | None = None,
                  temperature: float = 1.0) -> Tensor:
    """``(M,)`` keep logits ``x_m = (z_m + b_p) / tau`` of :func:`sigmoid_budget` (``y = sigmoid(x)``).

    Args:
        logits: ``(M,)`` float.
        index: ``(M,)`` long group of each entry, in ``[0, n_index)``.
        target: ``(n_index,)`` float, ``0 <= T_p <= sum_{m in p} w_m``.
        weight: ``(M,)`` non-negative, default 1.
        temperature: tau > 0.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)  # float32, or float64 for a float64 input
    z = logits.to(dtype) / temperature  # (M,)
    w = torch.ones_like(z) if weight is None else weight.to(dtype)
    target = target.to(dtype)
    with torch.no_grad():
        span = float(z.detach().abs().max()) + 40.0 if z.numel() else 40.0
        lo = torch.full((n_index,), -span, device=z.device, dtype=dtype)  # total(lo) ~ 0 <= T
        hi = torch.full((n_index,), span, device=z.device, dtype=dtype)  # total(hi) ~ sum w >= T
        steps = BISECTION_STEPS if dtype == torch.float32 else 2 * BISECTION_STEPS
        for _ in range(steps):  # a fixed number of vectorised halvings of every group's interval
            mid = (lo + hi) / 2
            over = _group_sum(w * torch.sigmoid(z.detach() + mid[index]), index, n_index) > target
            hi = torch.where(over, mid, hi)
            lo = torch.where(over, lo, mid)
        shift = (lo + hi) / 2  # (n_index,)
    y0 = torch.sigmoid(z + shift[index])  # (M,)
    slope = _group_sum((w * y0 * (1 - y0)).detach(), index, n_index).clamp(min=1e-12)  # (n_index,)
    excess = _group_sum(w * y0, index, n_index) - target  # ~0 in value
    shift = shift - excess / slope  # the implicit-function gradient
    return z + shift[index]


def key_bias(keep_logits: Tensor) -> Tensor:
    """``log y = log sigmoid(x)`` of keep logits ``x``: the additive attention bias of a soft-kept key.

    Not clamped near 0 (only at ``BIAS_FLOOR``, far below any attention logit): a clamp at, say, ``log 1e-6``
    leaves dropped tokens a fixed, small weight that LoRA learned to overcome by scaling up ``q . k`` (a trained
    run reached the uncompressed loss at tau = 0.05 while its hard selection did not).
    """
    return torch.nn.functional.logsigmoid(keep_logits).clamp(min=BIAS_FLOOR)
