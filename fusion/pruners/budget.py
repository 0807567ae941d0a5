"""Retention (fraction of tokens KEPT) and how it turns into token counts.

Rounding rule, used by every method: a pool of ``n`` tokens at retention ``r`` keeps ``ceil(r * n)``
tokens (computed as ``ceil(r * n - 1e-9)`` so that ``0.25 * 100`` keeps 25, not 26 through float error).
So any non-empty pool keeps at least one token, and ``r = 1`` keeps everything.
"""

from __future__ import annotations

import enum
import math

import torch
from torch import Tensor

from fusion.errors import MethodConfigError, RetentionError

_EPS = 1e-9


class Budget(str, enum.Enum):
    """How a retention is spent over the audio-visual pool.

    ``modality``: video and audio each keep ``ceil(r * N)`` of their own tokens.
    ``joint``: one pool of ``N_v + N_a`` tokens keeps ``ceil(r * (N_v + N_a))``; the split between
    modalities is whatever the method's scores give.
    """

    MODALITY = "modality"
    JOINT = "joint"

    @classmethod
    def parse(cls, value: str | Budget, method: str) -> Budget:
        try:
            return cls(value)
        except ValueError:
            raise MethodConfigError(
                f"{method}: budget={value!r} is not one of {[b.value for b in cls]}; use 'modality' (per-modality "
                "counts) or 'joint' (one count over audio + video)"
            ) from None


def budget_pools(tokens, budget: Budget) -> list:
    """The ``(B, L)`` candidate pools a budget is spent over: ``[av_mask]`` (joint) or ``[video_mask, audio_mask]``."""
    return [tokens.av_mask] if budget is Budget.JOINT else [tokens.video_mask, tokens.audio_mask]


def check_retention(value, name: str = "retention") -> float:
    """Return ``value`` as a float if it is a retention in (0, 1]; raise :class:`RetentionError` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RetentionError(f"{name} must be a number in (0, 1] (the fraction of tokens KEPT), got {value!r}")
    value = float(value)
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise RetentionError(
            f"{name}={value} is outside (0, 1]: it is the fraction of tokens KEPT (0.25 keeps a quarter). "
            "Methods whose papers use a pruning ratio take it under their own parameter names"
        )
    return value


def keep_count(n: Tensor, retention: float) -> Tensor:
    """``ceil(retention * n)`` per entry of an integer tensor ``n`` (see module doc)."""
    return torch.ceil(n.double() * retention - _EPS).clamp(min=0).long().minimum(n.long())


def keep_count_int(n: int, retention: float) -> int:
    """Integer version of :func:`keep_count`."""
    return min(n, max(0, math.ceil(n * retention - _EPS)))
