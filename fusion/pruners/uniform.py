"""``uniform``: keep tokens evenly spaced in time (a deterministic control; not in the OmniZip tables)."""

from __future__ import annotations

from fusion.pruners.base import Compressor
from fusion.pruners.budget import Budget, budget_pools, keep_count
from fusion.pruners.ranking import evenly_spaced_mask
from fusion.pruners.registry import METHODS
from fusion.tokens import AVTokens, Selection


@METHODS.register("uniform")
class Uniform(Compressor):
    """Keep ``k = ceil(r * N)`` tokens at pool ranks ``floor((i + 0.5) * N / k)``, ``i = 0..k-1``.

    The pool is each modality's tokens in sequence order (``budget="modality"``: video tokens are in
    (t, h, w) raster order, so this is evenly spaced in time and rotates through spatial places), or the
    interleaved audio + video tokens (``budget="joint"``). Kept tokens keep their TMRoPE ids.

    Args:
        retention: fraction of tokens kept, in (0, 1].
        budget: ``"modality"`` (default) or ``"joint"``.
    """

    name = "uniform"

    def __init__(self, retention: float, budget: str = "modality") -> None:
        self.retention = retention
        self.budget = Budget.parse(budget, self.name)

    def select(self, tokens: AVTokens) -> Selection:
        if self.retention >= 1.0:
            return tokens.keep_all()
        keep = tokens.attention_mask.bool() & ~tokens.av_mask
        pools = budget_pools(tokens, self.budget)
        for pool in pools:
            keep |= evenly_spaced_mask(pool, keep_count(pool.sum(1), self.retention))
        return Selection(keep=keep)
