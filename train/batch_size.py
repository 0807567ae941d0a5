"""How many samples one optimizer step reads, per forward, per rank and over all ranks.

Two ways to say it in ``train.*``:

* ``global_batch_size: G`` (the recipe's default): the samples of one optimizer step over ALL ranks, constant
  whatever the number of ranks. Each rank then accumulates ``A = G / (micro_batch_size * W)`` micro-batches, so
  the same YAML on 1, 2 or 8 ranks gives the same global batch and, with the same ``micro_batch_size``, the same
  micro-batches and the same loss curve (up to float summation order).
* ``grad_accum: A`` (``global_batch_size`` null): micro-batches per rank; the global batch is ``m * A * W`` and
  grows with the number of ranks.

Setting both is refused (:class:`~fusion.errors.ConfigError` from :class:`train.config.TrainConfig`), as is a
``G`` that ``m * W`` does not divide (:func:`plan_batches`, with the micro-batch sizes that would fit).
"""

from __future__ import annotations

from dataclasses import dataclass

from fusion.errors import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    """The resolved batch of one optimizer step."""

    micro: int
    """Samples per rank per forward (``train.micro_batch_size``)."""
    accum: int
    """Micro-batches per rank per optimizer step (DeepSpeed ``gradient_accumulation_steps``)."""
    world: int
    """Number of ranks (data-parallel processes)."""

    @property
    def micro_batches(self) -> int:
        """Micro-batches per optimizer step over all ranks (the loss is their mean)."""
        return self.accum * self.world

    @property
    def global_size(self) -> int:
        """Samples per optimizer step over all ranks (DeepSpeed ``train_batch_size``)."""
        return self.micro * self.accum * self.world

    def describe(self) -> str:
        return f"global batch {self.global_size} = {self.micro} x {self.accum} accum x {self.world} rank(s)"


def plan_batches(micro_batch_size: int, grad_accum: int | None, global_batch_size: int | None,
                 world: int) -> BatchPlan:
    """The :class:`BatchPlan` of ``world`` ranks (module doc). Raises :class:`ConfigError` when
    ``global_batch_size`` is not a multiple of ``micro_batch_size * world`` or both it and ``grad_accum`` are set."""
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    if global_batch_size is None:
        return BatchPlan(micro_batch_size, grad_accum or 1, world)
    if grad_accum is not None:
        raise ConfigError(f"train.grad_accum={grad_accum} and train.global_batch_size={global_batch_size} are both "
                          "set; set one (global_batch_size keeps the batch constant over ranks, grad_accum is per "
                          "rank) and null the other")
    per_forward = micro_batch_size * world
    if global_batch_size % per_forward:
        fits = [m for m in range(1, global_batch_size // world + 1) if global_batch_size % (m * world) == 0]
        hint = (f"use train.micro_batch_size in {fits}" if fits else
                f"use a train.global_batch_size that is a multiple of {world} (the ranks)")
        raise ConfigError(f"train.global_batch_size={global_batch_size} is not a multiple of train.micro_batch_size"
                          f" ({micro_batch_size}) x {world} rank(s) = {per_forward}, so the ranks cannot accumulate "
                          f"whole micro-batches; with {world} rank(s) {hint}")
    return BatchPlan(micro_batch_size, global_batch_size // per_forward, world)


def plan_of(train, world: int) -> BatchPlan:
    """:func:`plan_batches` of a :class:`train.config.TrainConfig` on ``world`` ranks."""
    return plan_batches(train.micro_batch_size, train.grad_accum, train.global_batch_size, world)
