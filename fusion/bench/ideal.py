"""The ideal prefill of a compression method, and how the method's speed-up compares to it.

**Ideal.** The same encoders and the same language model fed the same kept tokens, with a selection that costs
nothing: :class:`FixedKeep` replays a keep mask recorded from the method's own run (so per-sample kept counts,
positions and sequence lengths are identical) and returns it at once. The method's time minus the ideal time is
then exactly what selecting costs (its scoring, its own extras such as audio-encoder attention, replacement
embeddings), and nothing else.

For FastV (tokens drop at LLM layer ``K`` of ``N``), the ideal is the pre-LLM ideal at the kept count plus the
first ``K`` layers run at full length instead::

    T_ideal = T_fixed(n_kept) + (K / N) * (T_llm(n) - T_llm(n_kept))

with ``T_llm`` the measured language-model times of the uncompressed run and of the fixed-keep run.

**Comparison** (all times are medians of interleaved runs, see :class:`Comparison`)::

    speed-up        S   = T_none / T_method
    ideal speed-up  S*  = T_none / T_ideal
    achieved        a   = S / S* = T_ideal / T_method        (the issue's target: a >= 0.95)
    saving achieved     = (T_none - T_method) / (T_none - T_ideal)   (share of the ideal time saving obtained)
    selection overhead  = T_select / T_none                  (the learned block's target: <= 0.02)
    excess              = (T_method - T_ideal) / T_none      (overhead measured end to end)

On a shared machine :func:`paired_ratio` estimates ``a`` more robustly: the median over rounds of
``T_ideal,i / T_method,i``, each pair run back to back, so slow drift cancels within a pair.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from fusion.errors import BenchmarkError
from fusion.pruners.base import Compressor
from fusion.tokens import AVTokens, Selection


class FixedKeep(Compressor):
    """The ideal selection: returns a recorded ``(B, L)`` keep mask for any tokens of that shape (module doc)."""

    name = "ideal"

    def __init__(self, keep: Tensor) -> None:
        self.keep = keep
        self.retention = 1.0

    def select(self, tokens: AVTokens) -> Selection:
        return Selection(keep=self.keep)


def keep_from_source(source_index: Tensor, length: int) -> Tensor:
    """``(B, L)`` bool keep mask over the unpruned input from a pruned batch's ``source_index`` ``(B, L')``
    (``-1`` on padding), e.g. ``CompressedOutput.source_index``: ``keep[b, source_index[b, j]] = True``."""
    keep = torch.zeros(source_index.shape[0], length, dtype=torch.bool, device=source_index.device)
    valid = source_index >= 0  # (B, L')
    rows = torch.arange(source_index.shape[0], device=source_index.device)[:, None].expand_as(source_index)
    keep[rows[valid], source_index[valid]] = True  # padding (-1) writes nothing
    return keep


def fastv_ideal(t_fixed: float, llm_full: float, llm_kept: float, k: int, layers: int) -> float:
    """``T_fixed + (K / N) (T_llm(n) - T_llm(n_kept))``: FastV's ideal (module doc)."""
    return t_fixed + k / layers * (llm_full - llm_kept)


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """``median_i(numerators[i] / denominators[i])`` (e.g. ``T_ideal,i / T_method,i`` per round)."""
    if len(numerators) != len(denominators) or not numerators:
        raise BenchmarkError(f"paired_ratio needs two equally long, non-empty sequences of times (got "
                             f"{len(numerators)} and {len(denominators)}); pass one value per round to each")
    return statistics.median(_ratio(n, d) for n, d in zip(numerators, denominators))


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else math.nan


@dataclass(frozen=True)
class Comparison:
    """A method's prefill against the uncompressed one and its ideal (formulas in the module doc); seconds."""

    t_none: float
    t_method: float
    t_ideal: float
    t_select: float

    @property
    def speedup(self) -> float:
        return _ratio(self.t_none, self.t_method)

    @property
    def ideal_speedup(self) -> float:
        return _ratio(self.t_none, self.t_ideal)

    @property
    def achieved(self) -> float:
        return _ratio(self.speedup, self.ideal_speedup)

    @property
    def saving_achieved(self) -> float:
        return _ratio(self.t_none - self.t_method, self.t_none - self.t_ideal)

    @property
    def select_overhead(self) -> float:
        return _ratio(self.t_select, self.t_none)

    @property
    def excess(self) -> float:
        return _ratio(self.t_method - self.t_ideal, self.t_none)

    def as_dict(self) -> dict[str, float]:
        """The inputs and every derived figure, JSON-friendly."""
        return {**asdict(self), **{name: getattr(self, name) for name in (
            "speedup", "ideal_speedup", "achieved", "saving_achieved", "select_overhead", "excess")}}
