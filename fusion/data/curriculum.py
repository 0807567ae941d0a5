"""Loss-balanced category sampling: draw more of the question categories the model still gets wrong.

A ToyWorld backbone learns the single-modality counts in ~1,000 steps and the cross-modal questions only much
later; with uniform sampling, half of every later batch is already-solved count questions. This sampler keeps an
exponential moving average of the per-sample loss of each category and draws a batch's categories from

    w_c = floor / C + (1 - floor) * ema_c / sum_k ema_k

(``C`` categories; ``floor`` keeps every category at least ``floor / C`` of the batch, so solved ones are not
forgotten), then a sample uniformly inside each drawn category. ``ema`` starts equal for all categories, so the
first draws are category-uniform. Deterministic for a seeded generator.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fusion.errors import ConfigError


class LossBalancedSampler:
    """Batches of sample indices whose category mix follows the running per-category loss.

    Args:
        categories: the category of every sample of the split, by index.
        floor: share of the batch spread evenly over categories whatever their loss, in [0, 1].
        momentum: EMA factor of the per-category loss (``ema = momentum * ema + (1 - momentum) * batch mean``).
        generator: the random source.
    """

    def __init__(self, categories: list[str], floor: float = 0.2, momentum: float = 0.95,
                 generator: torch.Generator | None = None) -> None:
        if not categories:
            raise ConfigError("LossBalancedSampler needs at least one sample")
        if not 0.0 <= floor <= 1.0:
            raise ConfigError(f"floor must be in [0, 1], got {floor}")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
        self.names = sorted(set(categories))
        code = {name: i for i, name in enumerate(self.names)}
        self.codes = torch.tensor([code[c] for c in categories])  # (N,) category index per sample
        self.members = [torch.nonzero(self.codes == i).squeeze(1) for i in range(len(self.names))]
        self.floor, self.momentum = floor, momentum
        self.ema = torch.ones(len(self.names))  # (C,) running loss per category
        self.generator = generator or torch.Generator().manual_seed(0)

    def weights(self) -> Tensor:
        """``(C,)`` the current category probabilities (module formula)."""
        share = self.ema / self.ema.sum().clamp(min=1e-12)
        return self.floor / len(self.names) + (1.0 - self.floor) * share

    def draw(self, batch_size: int) -> Tensor:
        """``(batch_size,)`` sample indices: categories from :meth:`weights`, then uniform inside each."""
        drawn = torch.multinomial(self.weights(), batch_size, replacement=True, generator=self.generator)  # (B,)
        index = torch.empty(batch_size, dtype=torch.long)
        for c in drawn.unique().tolist():  # one category per iteration (a handful)
            slots = torch.nonzero(drawn == c).squeeze(1)
            pool = self.members[c]
            index[slots] = pool[torch.randint(len(pool), (len(slots),), generator=self.generator)]
        return index

    def update(self, index: Tensor, losses: Tensor) -> None:
        """Fold the per-sample ``losses`` ``(B,)`` of the samples ``index`` ``(B,)`` into the per-category EMA."""
        codes = self.codes[index]
        losses = losses.detach().float()
        for c in codes.unique().tolist():  # one category per iteration
            batch_mean = losses[codes == c].mean()
            self.ema[c] = self.momentum * self.ema[c] + (1.0 - self.momentum) * batch_mean

    def state(self) -> dict[str, float]:
        """``{category: probability}`` now (for logs)."""
        return {name: round(float(w), 3) for name, w in zip(self.names, self.weights())}


class SameLengthBatches:
    """Make every sample of a batch as long as its first one: a long-clip batch is padded to its longest row, so
    a batch mixing 8-s and 16-s clips spends about a third of its compute on padding.

    ``match(index)`` keeps ``index[0]`` and replaces each other index by a uniformly drawn sample of the SAME
    category and the same length (seconds) as ``index[0]`` (the sample itself when it is the only one), so the
    category mix a sampler chose and the length distribution of the split are both kept.

    Args:
        categories: the category of every sample, by index.
        lengths: the clip length (any hashable, e.g. seconds) of every sample, by index.
        generator: the random source.
    """

    def __init__(self, categories: list[str], lengths: list, generator: torch.Generator | None = None) -> None:
        if len(categories) != len(lengths):
            raise ConfigError(f"SameLengthBatches: {len(categories)} categories for {len(lengths)} lengths")
        self.categories, self.lengths = list(categories), list(lengths)
        self.generator = generator or torch.Generator().manual_seed(0)
        self.pools: dict[tuple, Tensor] = {}
        for i, key in enumerate(zip(self.categories, self.lengths)):  # one sample per iteration (setup only)
            self.pools.setdefault(key, []).append(i)
        self.pools = {k: torch.tensor(v) for k, v in self.pools.items()}

    def match(self, index: Tensor) -> Tensor:
        """``(B,)`` indices -> ``(B,)`` indices, all of ``index[0]``'s length, each of its input's category."""
        length = self.lengths[int(index[0])]
        out = index.clone()
        for j in range(1, len(index)):  # one batch slot per iteration
            pool = self.pools.get((self.categories[int(index[j])], length))
            if pool is not None:
                out[j] = pool[int(torch.randint(len(pool), (1,), generator=self.generator))]
        return out
