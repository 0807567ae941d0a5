"""Coverage-aware selection: the block splits each pool's budget over its cells (one cell = one modality of one
2-s time group), then keeps the best-scored tokens inside each cell.

For a pool ``p`` (a sample's joint audio+video tokens, or one modality of it) of ``N_p`` tokens and budget
``K_p = ceil(r * N_p)``, with cells ``c`` of ``n_c`` tokens and allocation logits ``a_c``::

    rho_c   = sigmoid(a_c + beta_p),   beta_p solved so that  sum_{c in p} n_c rho_c = K_p
    kappa_c = n_c rho_c                (continuous budget of the cell: 0 < kappa_c < n_c, sums to K_p)
    k_c     = largest-remainder rounding of kappa_c   (integers, 0 <= k_c <= n_c, sum_{c in p} k_c = K_p exactly)

At ``a = 0`` every cell gets the pool's retention (``rho_c = r``): an even spread over time and modality, the
hand-made allocation of segmentwise methods. The logits come from :class:`AllocationHead`, which reads the cell's
mean (fused) embedding and the question, so the split is learned per clip and per question.

Inside a cell: hard top-``k_c`` of the keep-scores at test time. In training, ``relaxation: soft`` keeps
``kappa_c`` tokens in expectation (:func:`fusion.block.relaxed.budget_logits`), so the LM loss reaches every
token's score and every cell's logit (dropped ones included); ``relaxation: marginal`` keeps the hard top-``k``
plus the next-best token at weight ``frac(kappa_c)`` (:func:`marginal_keep`), which reaches every cell's logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fusion.block.groups import GroupLayout, slot_within
from fusion.block.relaxed import sigmoid_budget
from fusion.pruners.budget import keep_count


@dataclass
class CellLayout:
    """Cells and pools of one batch (``N`` AV rows in ``GroupLayout.rows`` order, ``C = 2 G`` cells, ``P`` pools).

    Attributes:
        token_cell: ``(N,)`` cell of every row: ``2 * group + (1 if audio else 0)``.
        cell_size: ``(C,)`` ``n_c`` tokens per cell (0 for a modality absent from a group).
        cell_pool: ``(C,)`` pool of every cell: its sample (joint budget) or ``2 * sample + modality``.
        cell_is_audio: ``(C,)`` bool.
        pool_size: ``(P,)`` ``N_p``.
        pool_budget: ``(P,)`` ``K_p = ceil(r * N_p)`` (0 for an empty pool).
    """

    token_cell: Tensor
    cell_size: Tensor
    cell_pool: Tensor
    cell_is_audio: Tensor
    pool_size: Tensor
    pool_budget: Tensor

    def cell_pool_sample(self, layout: GroupLayout) -> Tensor:
        """``(C,)`` sample of every cell."""
        return layout.group_sample[torch.arange(self.n_cells, device=self.cell_size.device) // 2]

    @property
    def n_cells(self) -> int:
        return self.cell_size.shape[0]

    @property
    def n_pools(self) -> int:
        return self.pool_budget.shape[0]

    @classmethod
    def build(cls, layout: GroupLayout, batch_size: int, retention: float, joint: bool) -> CellLayout:
        G = layout.n_groups
        device = layout.rows.device
        token_cell = 2 * layout.group + (~layout.is_video).long()  # (N,)
        cell_size = torch.bincount(token_cell, minlength=2 * G)  # (C,)
        cell_group = torch.arange(2 * G, device=device) // 2  # (C,)
        cell_is_audio = torch.arange(2 * G, device=device) % 2 == 1  # (C,)
        sample = layout.group_sample[cell_group]  # (C,)
        cell_pool = sample if joint else 2 * sample + cell_is_audio.long()
        n_pools = batch_size if joint else 2 * batch_size
        pool_size = torch.zeros(n_pools, dtype=torch.long, device=device).index_add(0, cell_pool, cell_size)
        return cls(token_cell, cell_size, cell_pool, cell_is_audio, pool_size, keep_count(pool_size, retention))


def continuous_allocation(logits: Tensor, cells: CellLayout) -> Tensor:
    """``(C,)`` ``kappa_c = n_c sigmoid(a_c + beta_p)`` summing to ``K_p`` in every pool (differentiable in ``a``)."""
    size = cells.cell_size.to(logits.dtype)
    rho = sigmoid_budget(logits, cells.cell_pool, cells.n_pools, cells.pool_budget.to(logits.dtype), weight=size)
    return size * rho  # a pool kept whole (r = 1): rho = 1 to float precision, and the rounding restores n_c


ALLOCATION_GRID = 1024  # kappa is rounded to 1/1024 before the integer rounding (see integer_allocation)


def integer_allocation(kappa: Tensor, cells: CellLayout) -> Tensor:
    """``(C,)`` long ``k_c``: ``floor(kappa_c)`` plus one for the cells with the largest remainders, as many as the
    pool still misses, so that ``sum_{c in p} k_c = K_p`` exactly and ``0 <= k_c <= n_c`` (ties -> lower cell).

    ``kappa`` is first rounded to a grid of ``1 / ALLOCATION_GRID``: cells at the same retention have remainders
    equal in exact arithmetic (``n_c rho`` with one ``rho``) that differ by ~1e-5 in float32 depending on which
    other samples share the batch (the bisection's sums); unrounded, that noise, not the cells, broke the tie, and a
    sample kept other tokens batched than alone."""
    kappa = torch.round(kappa.detach().float() * ALLOCATION_GRID) / ALLOCATION_GRID
    size = cells.cell_size
    base = torch.minimum(kappa.floor().long().clamp(min=0), size)  # (C,)
    missing = cells.pool_budget - torch.zeros_like(cells.pool_budget).index_add(0, cells.cell_pool, base)  # (P,)
    remainder = torch.where(base < size, kappa - base.float(), torch.full_like(kappa, -1.0))  # full cells last
    order = torch.argsort(remainder, descending=True, stable=True)  # (C,) largest remainders first
    rank = torch.empty_like(base)
    rank[order] = slot_within(cells.cell_pool[order], cells.n_pools)  # (C,) rank of the remainder in its pool
    return torch.minimum(base + (rank < missing[cells.cell_pool]).long(), size)


def rank_in_cells(scores: Tensor, token_cell: Tensor, n_cells: int) -> Tensor:
    """``(N,)`` long: 0 for the best score of its cell, 1 for the next, ... (ties -> earlier row)."""
    order = torch.argsort(scores.detach(), descending=True, stable=True)  # (N,) best first
    rank = torch.empty_like(token_cell)
    rank[order] = slot_within(token_cell[order], n_cells)
    return rank


def topk_within_cells(scores: Tensor, token_cell: Tensor, k: Tensor) -> Tensor:
    """``(N,)`` bool: the ``k_c`` best scores of every cell (ties -> earlier row)."""
    return rank_in_cells(scores, token_cell, k.shape[0]) < k[token_cell]


def marginal_keep(rank: Tensor, token_cell: Tensor, kappa: Tensor, floor: float = 1e-3) -> Tensor:
    """``(N,)`` ``y_i = clamp(kappa_c - rank_i, 0, 1)``: 1 on the ``floor(kappa_c)`` best tokens of the cell, the
    fraction ``kappa_c - floor(kappa_c)`` (at least ``floor``) on the next one, 0 after. Differentiable in ``kappa``
    through the fractional ("marginal") token only: ``dL/dkappa_c`` is how much one more token of cell ``c`` helps."""
    y = (kappa[token_cell] - rank.to(kappa.dtype)).clamp(0, 1)
    return torch.where(y > 0, y.clamp(min=floor), y)


def cell_means(values: Tensor, token_cell: Tensor, n_cells: int) -> Tensor:
    """``(C, D)`` mean of the ``(N, D)`` rows of every cell (0 for an empty cell)."""
    sums = values.new_zeros(n_cells, values.shape[-1]).index_add(0, token_cell, values)
    counts = torch.bincount(token_cell, minlength=n_cells).clamp(min=1).to(values.dtype)
    return sums / counts[:, None]


class AllocationHead(nn.Module):
    """``a_c = w . GELU(W [LN(mean_{i in c} x_i) ; LN(q_b) ; e_m] + b) + u_m``, one logit per cell.

    ``x_i`` are the cell's (fused) embeddings, ``q_b`` the mean embedding of its sample's question tokens (zero
    without a question), ``e_m`` a one-hot of the cell's modality. The output layer starts at exactly zero, so an
    untrained head allocates every cell the pool's retention.

    Args:
        width: D, the backbone's hidden size.
        hidden: hidden width of the MLP.
    """

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.cell_norm = nn.LayerNorm(width)
        self.question_norm = nn.LayerNorm(width)
        self.hidden = nn.Linear(2 * width + 2, hidden)
        self.act = nn.GELU()
        self.out = nn.Linear(hidden, 1)
        self.modality_bias = nn.Parameter(torch.zeros(2))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, cell_mean: Tensor, question: Tensor, cell_is_audio: Tensor) -> Tensor:
        """``cell_mean (C, D)``, ``question (C, D)`` (the cell's sample's), ``cell_is_audio (C,)`` -> ``(C,)``."""
        modality = torch.nn.functional.one_hot(cell_is_audio.long(), 2).to(cell_mean.dtype)  # (C, 2)
        features = torch.cat([self.cell_norm(cell_mean), self.question_norm(question), modality], -1)
        return self.out(self.act(self.hidden(features))).squeeze(-1) + self.modality_bias[cell_is_audio.long()]
