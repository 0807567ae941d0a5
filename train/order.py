"""Which samples every rank reads at every step: a pure function of (data seed, step), so a resumed run reads
exactly what the uninterrupted run would have read."""

from __future__ import annotations

import functools

import torch


class SampleOrder:
    """The global stream of sample indices: epoch ``e`` is ``randperm(n)`` drawn from generator seed
    ``seed * 1_000_003 + e``; stream position ``p`` is ``perm_{p // n}[p % n]``.

    Micro-batch ``j`` of optimizer step ``s`` on rank ``r`` (``W`` ranks, ``A`` micro-batches per step, ``m``
    samples per micro-batch) reads stream positions ``((s * A + j) * W + r) * m`` .. ``+ m - 1``.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed

    @functools.lru_cache(maxsize=4)  # noqa: B019  (a few epochs; the instance lives as long as the run)
    def _epoch(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def positions(self, start: int, count: int) -> list[int]:
        """Sample indices at stream positions ``start .. start + count - 1``."""
        return [self._epoch(p // self.n)[p % self.n] for p in range(start, start + count)]

    def micro_batch(self, step: int, micro: int, rank: int, world: int, accum: int, size: int) -> list[int]:
        """Indices of micro-batch ``micro`` of optimizer step ``step`` (0-based) on ``rank``."""
        return self.positions(((step * accum + micro) * world + rank) * size, size)
