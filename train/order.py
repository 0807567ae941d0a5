"""Which samples every rank reads at every step: a pure function of (data seed, step), so a resumed run reads
exactly what the uninterrupted run would have read, and any number of ranks what one rank reads for the same global
batch; and the seeds of the randomness tied to a stream position (:func:`position_seed`)."""

from __future__ import annotations

import functools
import hashlib

import torch


def position_seed(seed: int, position: int, purpose: str) -> int:
    """Generator seed of the randomness ``purpose`` tied to stream position ``position`` (e.g. ``"explore"``: the
    searched split's draw for that sample; ``"noise"``: dropout of the micro-batch starting there). A function of
    ``(seed, position, purpose)`` only, never of the rank, the number of ranks or what ran before, so 2 ranks draw
    what 1 rank does and a resumed run what the uninterrupted one did; distinct purposes get unrelated seeds."""
    digest = hashlib.blake2b(f"{purpose}:{seed}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class SampleOrder:
    """The global stream of sample indices: epoch ``e`` is ``randperm(n)`` drawn from generator seed
    ``seed * 1_000_003 + e``; stream position ``p`` is ``perm_{p // n}[p % n]``.

    Micro-batch ``j`` of optimizer step ``s`` on rank ``r`` (``W`` ranks, ``A`` micro-batches per step, ``m``
    samples per micro-batch) reads stream positions ``((s * A + j) * W + r) * m`` .. ``+ m - 1``: the ranks read
    disjoint shards, and step ``s`` reads positions ``[s * A * W * m, (s + 1) * A * W * m)`` whatever ``W``. With
    ``A * W`` fixed (a constant global batch) global micro-batch ``g = j * W + r`` is the same samples on any number
    of ranks: 2 ranks x 2 micro-batches read what 1 rank x 4 micro-batches reads.
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

    @staticmethod
    def micro_batch_start(step: int, micro: int, rank: int, world: int, accum: int, size: int) -> int:
        """Stream position of the first sample of micro-batch ``micro`` of step ``step`` (0-based) on ``rank``."""
        return ((step * accum + micro) * world + rank) * size

    def micro_batch(self, step: int, micro: int, rank: int, world: int, accum: int, size: int) -> list[int]:
        """Indices of micro-batch ``micro`` of optimizer step ``step`` (0-based) on ``rank``."""
        return self.positions(self.micro_batch_start(step, micro, rank, world, accum, size), size)
