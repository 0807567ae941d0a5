"""Which tokens of a ToyWorld sample hold its answer, from the scene the generator recorded.

Evidence per category: ``colour_at_beep`` / ``tone_at_shape``: the square token and the beep tokens of the key
second; ``beep_count``: every beep's tokens; ``shape_count``: every square's token; ToyWorld-Long's
``beep_order``: every square's and every beep's tokens, ``shape_colour``: every square's. With the toy
processors' frames at 2 fps a video token at grid place ``(t, h, w)`` shows second ``t``, cell ``G h + w`` (``G``
cells per row: 2 in ToyWorld, the scene's ``grid`` in ToyWorld-Long); audio token ``i`` covers
``[0.04 i, 0.04 (i + 1))`` s of its block (TMRoPE: 25 ids per second).

Two users: :class:`EvidenceOracle` (a diagnostic compressor: evidence first, then an even spread, at the usual
per-modality budget) and :class:`EvidenceDropout` (pre-training augmentation: drop random NON-evidence tokens, so
the backbone stops reading the count of background tokens and every label stays right).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fusion.data.toyworld import ToyWorldConfig
from fusion.pruners.base import Compressor, select_by_scores
from fusion.pruners.budget import Budget, keep_count
from fusion.pruners.ranking import evenly_spaced_mask
from fusion.pruners.registry import METHODS
from fusion.tokens import AVTokens, Selection

AUDIO_TOKEN_SECONDS = 0.04


def key_evidence(scene: dict, category: str, beep_seconds: float) -> tuple[set[tuple[int, int]], list[tuple]]:
    """``(cells, intervals)``: the evidence squares as ``(second, cell)`` and beeps as ``(start_s, end_s)``."""
    squares, beeps = scene["squares"], scene["beeps"]
    if category == "beep_count":
        seconds_v, seconds_a = [], [s for s, b in enumerate(beeps) if b]
    elif category in ("shape_count", "shape_colour"):
        seconds_v, seconds_a = [s for s, q in enumerate(squares) if q], []
    elif category == "beep_order":
        seconds_v, seconds_a = [s for s, q in enumerate(squares) if q], [s for s, b in enumerate(beeps) if b]
    elif category == "colour_at_beep":
        seconds_v = seconds_a = [s for s, b in enumerate(beeps) if b]
    elif category == "tone_at_shape":
        seconds_v = seconds_a = [s for s, q in enumerate(squares) if q]
    else:
        raise ValueError(f"no evidence rule for category {category!r}")
    cells = {(s, squares[s][0]) for s in seconds_v if squares[s]}
    intervals = [(s + beeps[s][0], s + beeps[s][0] + beep_seconds) for s in seconds_a if beeps[s]]
    return cells, intervals


def evidence_mask(tokens: AVTokens, scenes: list[dict], categories: list[str],
                  cfg: ToyWorldConfig | None = None) -> Tensor:
    """``(B, L)`` bool: True at the evidence tokens of each row (``scenes[b]``, ``categories[b]``).

    Video token of row b at place (t, h, w) is evidence iff ``(t, G h + w)`` is a key square (``G`` = the scene's
    ``grid``, default 2); audio token at time ``x`` s is evidence iff ``[x, x + 0.04)`` overlaps a key beep
    ``[start, end)`` (beep length: the scene's ``beep``, default ``cfg.beep``).
    """
    cfg = cfg or ToyWorldConfig()
    mask = torch.zeros(tokens.input_ids.shape, dtype=torch.bool, device=tokens.input_ids.device)
    place, seconds = tokens.grid_place, tokens.seconds()  # (B, L, 3), (B, L)
    for b, (scene, category) in enumerate(zip(scenes, categories)):  # one sample per iteration
        cell = place[b, :, 1] * scene.get("grid", 2) + place[b, :, 2]  # (L,)
        cells, intervals = key_evidence(scene, category, scene.get("beep", cfg.beep))
        for s, c in cells:  # one key square per iteration
            mask[b] |= tokens.video_mask[b] & (place[b, :, 0] == s) & (cell == c)
        for start, end in intervals:  # one key beep per iteration
            mask[b] |= tokens.audio_mask[b] & (seconds[b] + AUDIO_TOKEN_SECONDS > start) & (seconds[b] < end)
    return mask


class _SceneAware(Compressor):
    """A compressor told, before each forward, which samples (scenes, categories) the batch holds."""

    def __init__(self, cfg: ToyWorldConfig | None = None) -> None:
        self.cfg = cfg or ToyWorldConfig()
        self.scenes: list[dict] = []
        self.categories: list[str] = []

    def set_batch(self, scenes: list[dict], categories: list[str]) -> None:
        self.scenes, self.categories = list(scenes), list(categories)

    def _evidence(self, tokens: AVTokens) -> Tensor:
        if len(self.scenes) != tokens.batch_size:
            raise ValueError(f"{type(self).__name__}: set_batch() got {len(self.scenes)} scenes for a batch of "
                             f"{tokens.batch_size}; call it before every forward")
        return evidence_mask(tokens, self.scenes, self.categories, self.cfg)


@METHODS.register("evidence_oracle")
class EvidenceOracle(_SceneAware):
    """Keep ``ceil(r * N)`` tokens per modality (or of the joint pool, ``budget="joint"``): evidence first, then
    evenly spaced ones (scores ``evidence + 0.5 * evenly_spaced``; ties to the earlier token). What selection alone
    can reach at a given budget. ToyWorld only: the harness tells it each batch's scenes (``set_batch``).

    Args:
        retention: fraction kept, in (0, 1].
        budget: ``"modality"`` (default) or ``"joint"`` (the learned block's budget: compare at the same total).
    """

    name = "evidence_oracle"

    def __init__(self, retention: float, budget: str = "modality", cfg: ToyWorldConfig | None = None) -> None:
        super().__init__(cfg)
        self.retention = retention
        self.budget = Budget.parse(budget, self.name)

    def select(self, tokens: AVTokens) -> Selection:
        if self.retention >= 1.0:
            return tokens.keep_all()
        spread = torch.zeros_like(tokens.av_mask)
        for pool in (tokens.video_mask, tokens.audio_mask):
            spread |= evenly_spaced_mask(pool, keep_count(pool.sum(1), self.retention))
        scores = self._evidence(tokens).float() + 0.5 * spread.float()
        return select_by_scores(tokens, scores, self.retention, self.budget)


class EvidenceDropout(_SceneAware):
    """Training augmentation: with probability ``p`` per sample, keep every evidence token and each other AV token
    with probability ``r ~ U(r_min, 1)`` (drawn per sample); otherwise keep everything.

    Args:
        p: fraction of samples augmented.
        r_min: lowest keep probability of a non-evidence token.
        generator: the random source (seed it for a reproducible run).
    """

    name = "evidence_dropout"

    def __init__(self, p: float = 0.5, r_min: float = 0.1, generator: torch.Generator | None = None,
                 cfg: ToyWorldConfig | None = None) -> None:
        super().__init__(cfg)
        self.p, self.r_min = p, r_min
        self.generator = generator or torch.Generator().manual_seed(0)

    def select(self, tokens: AVTokens) -> Selection:
        B, L = tokens.input_ids.shape
        g = self.generator
        augmented = torch.rand(B, generator=g) < self.p  # (B,)
        rate = self.r_min + (1.0 - self.r_min) * torch.rand(B, generator=g)  # (B,)
        coin = torch.rand(B, L, generator=g) < rate[:, None]  # (B, L)
        drop = tokens.av_mask & ~self._evidence(tokens) & ~coin.to(tokens.av_mask.device)
        drop &= augmented[:, None].to(drop.device)
        return Selection(keep=tokens.attention_mask.bool() & ~drop)
