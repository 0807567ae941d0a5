"""``divprune``: DivPrune, greedy max–min diversity selection (Alvar et al., CVPR 2025; vbdi/divprune).

Pre-LLM and feature-only. On a pool of tokens ``x_1..x_n`` with cosine distance ``D[i, j] = 1 - cos(x_i, x_j)``:

* first pick ``s_1 = argmax_i min_{j != i} D[i, j]`` (the token farthest from its nearest neighbour);
* then, until ``k`` tokens are chosen, ``s_{m+1} = argmax_{j not in S} min_{s in S} D[s, j]``.

Ties go to the earliest token (``torch.argmax``). This is the function as reproduced in third-party repositories
(e.g. ModelTC llmc), which compute the first pick as the second-smallest entry of each column (the smallest being the
token itself) and never re-pick a chosen token because its own distance 0 is the column minimum; here chosen tokens
are masked explicitly, which gives the same picks whenever distinct tokens have distinct features. A zero vector has
cosine 0 to everything (distance 1).

Time groups. The paper runs on one image's ~576 tokens; a 60-s clip has ~10k audio-visual tokens, so the ``N x N``
distance matrix (and an ``O(N)`` loop of ``O(N)`` steps) would be wasteful. The selection runs independently in every
2-second time group (:attr:`AVTokens.time_group`), on the group's pool:

* ``budget="modality"`` (default): the group's video tokens and, separately, its audio tokens;
* ``budget="joint"``: the group's video and audio tokens together (one cosine space for both).

Every pool of ``n_g`` tokens keeps ``ceil(r * n_g)`` (the project's rounding; the original uses ``round(r * N)``
once), so per modality (or jointly) a sample keeps ``sum_g ceil(r n_g) >= ceil(r N)`` tokens: per-group rounding adds
less than one token per non-empty group. Memory: all groups of one sample are padded to the largest group ``n_max``
and processed together, in chunks of at most ``max_elements // n_max**2`` groups, so the largest distance matrix
held is ``(chunk, n_max, n_max)``, never ``N x N``. The greedy loop runs ``max_g k_g`` steps (a loop over selection
steps is inherent to max–min greedy); each step is one vectorised update over every group of the chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fusion.pruners.base import Compressor
from fusion.pruners.budget import Budget, budget_pools, keep_count
from fusion.pruners.registry import METHODS
from fusion.tokens import AVTokens, Selection

MAX_ELEMENTS = 1 << 25  # distance-matrix entries held at once (128 MiB in float32)


def cosine_distance(x: Tensor) -> Tensor:
    """``D = 1 - cos`` between all pairs of rows of each group: ``x`` ``(G, n, d)`` -> ``(G, n, n)``."""
    unit = F.normalize(x.float(), dim=-1)  # (G, n, d)
    return 1.0 - unit @ unit.transpose(1, 2)


def greedy_maxmin(dist: Tensor, valid: Tensor, k: Tensor) -> Tensor:
    """Max–min greedy picks of every group at once (module doc).

    Args:
        dist: ``(G, n, n)`` pairwise distances (only ``valid`` rows/columns are read).
        valid: ``(G, n)`` bool, the group's real tokens (padding is False).
        k: ``(G,)`` long, picks per group (at most the group's size).

    Returns:
        ``(G, max k)`` long slot indices in pick order; ``-1`` after a group's ``k`` picks.
    """
    G, n, _ = dist.shape
    rows = torch.arange(G, device=dist.device)
    kmax = int(k.max()) if G else 0
    order = torch.full((G, max(kmax, 0)), -1, dtype=torch.long, device=dist.device)
    if kmax == 0:
        return order
    eye = torch.eye(n, dtype=torch.bool, device=dist.device)
    others = valid[:, None, :] & ~eye  # (G, n, n): j is another real token of i's group
    nearest = dist.masked_fill(~others, float("inf")).amin(dim=2)  # (G, n); a singleton group gets +inf
    nearest = nearest.masked_fill(~valid, float("-inf"))
    pick = nearest.argmax(dim=1)  # (G,)
    order[:, 0] = torch.where(k > 0, pick, torch.full_like(pick, -1))
    min_dist = dist[rows, pick].masked_fill(~valid, float("-inf"))  # (G, n) distance to the chosen set
    min_dist[rows, pick] = float("-inf")
    for step in range(1, kmax):  # one vectorised update per selection step
        pick = min_dist.argmax(dim=1)  # (G,)
        order[:, step] = torch.where(step < k, pick, torch.full_like(pick, -1))
        min_dist = torch.minimum(min_dist, dist[rows, pick])
        min_dist[rows, pick] = float("-inf")
    return order


def pack_groups(group: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Slots of pool tokens in a padded ``(G, n_max)`` layout, by their group ids ``(n,)`` (any integers).

    Returns ``(g, slot, sizes)``: ``(n,)`` dense group index, ``(n,)`` place inside the group (sequence order kept),
    ``(G,)`` group sizes.
    """
    _, g = torch.unique(group, return_inverse=True)  # (n,) dense ids, in increasing group order
    sizes = torch.bincount(g)  # (G,)
    order = torch.sort(g, stable=True).indices  # (n,)
    starts = sizes.cumsum(0) - sizes  # (G,)
    slot = torch.empty_like(g)
    slot[order] = torch.arange(g.shape[0], device=g.device) - starts[g[order]]
    return g, slot, sizes


def divprune_groups(x: Tensor, group: Tensor, retention: float, max_elements: int = MAX_ELEMENTS) -> Tensor:
    """``(n,)`` bool keep mask of a pool ``x`` ``(n, d)`` whose tokens belong to time groups ``group`` ``(n,)``:
    DivPrune inside every group, ``ceil(r * n_g)`` picks per group (module doc)."""
    keep = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    if x.shape[0] == 0:
        return keep
    g, slot, sizes = pack_groups(group)
    G, n_max = sizes.shape[0], int(sizes.max())
    padded = torch.zeros(G, n_max, x.shape[1], dtype=x.dtype, device=x.device)  # (G, n_max, d)
    padded[g, slot] = x
    valid = torch.zeros(G, n_max, dtype=torch.bool, device=x.device)
    valid[g, slot] = True
    k = keep_count(sizes, retention)  # (G,)
    chosen = torch.zeros(G, n_max + 1, dtype=torch.bool, device=x.device)  # last column collects the -1 slots
    per_chunk = max(1, max_elements // (n_max * n_max))
    for start in range(0, G, per_chunk):  # chunks of groups bound the distance matrices held at once
        part = slice(start, start + per_chunk)
        picks = greedy_maxmin(cosine_distance(padded[part]), valid[part], k[part])  # (g_chunk, k_max)
        chosen[part].scatter_(1, torch.where(picks < 0, n_max, picks), True)
    return chosen[g, slot]


@METHODS.register("divprune")
class DivPrune(Compressor):
    """DivPrune (CVPR 2025): keep a maximally diverse subset (greedy max–min cosine distance) per 2-s time group.

    Args:
        retention: fraction of tokens kept in every group pool, in (0, 1] (the paper's default is 0.098 on images).
        budget: ``"modality"`` (default: video and audio of a group are separate pools) or ``"joint"``.
    """

    name = "divprune"

    def __init__(self, retention: float, budget: str = "modality") -> None:
        self.retention = retention
        self.budget = Budget.parse(budget, self.name)

    def select(self, tokens: AVTokens) -> Selection:
        if self.retention >= 1.0:
            return tokens.keep_all()
        keep = tokens.attention_mask.bool() & ~tokens.av_mask  # (B, L) text, specials, images
        pools = budget_pools(tokens, self.budget)
        time_group = tokens.time_group  # (B, L)
        for b in range(tokens.batch_size):  # one iteration per sample: its groups are batched together
            for pool in pools:
                where = pool[b] & tokens.attention_mask[b].bool()  # (L,)
                if bool(where.any()):
                    keep[b, where] = divprune_groups(tokens.embeds[b, where], time_group[b, where], self.retention)
        return Selection(keep=keep)
