"""How OmniZip's pruning ratios (rho_audio, rho_video) relate to the project's ``retention`` (fraction kept).

OmniZip's budget is set by two pruning ratios. Its nominal retention on a sample with ``N_a`` audio and ``N_v`` video
tokens (the paper's arithmetic, before per-grid integer truncation) is::

    anchors = min(c, rho_a) if anchors are made else 0        # contextual anchors kept from the dropped audio
    r_nom(rho_a, rho_v) = ((1 - rho_a + anchors) * N_a + (1 - rho_v) * N_v) / (N_a + N_v)

e.g. 50 audio + 288 video tokens per 2-s window: (0.3, 0.6) -> (37.5 + 115.2) / 338 = 45.2 %; (0.4, 0.7) -> 35.2 %.

Given a retention, :func:`solve_rhos` picks the ratios so that ``r_nom`` matches it on the sample's actual layout:

* neither ratio given: keep the paper's relationship ``rho_v = rho_a + 0.3`` (both published settings, 45 % and
  35 %, satisfy it) and solve for ``rho_a``; on samples with one modality only, solve that modality's ratio;
* one ratio given: solve the other;
* both given: ``retention`` must be 1.0 (then it is unused) or match ``r_nom`` within ``TOLERANCE``.

With both modalities, OmniZip clips every audio-guided window's video ratio to ``[rho_min, rho_max]``, so the solved
``rho_v`` is clipped there too and a retention outside the attainable range raises :class:`RetentionError`.
The harness reports the MEASURED retention, which is a little lower (``int()`` truncation per grid, partial grids).
"""

from __future__ import annotations

from dataclasses import dataclass

from fusion.errors import MethodConfigError, RetentionError

PAPER_OFFSET = 0.3  # rho_v - rho_a in both published settings: (0.3, 0.6) -> 45 %, (0.4, 0.7) -> 35 %
TOLERANCE = 0.01  # allowed |r_nom - retention| (absolute) when the ratios cannot hit it exactly
_BISECT_STEPS = 60


@dataclass(frozen=True)
class Layout:
    """What the nominal retention depends on: token counts and whether contextual anchors are made."""

    n_audio: int
    n_video: int
    contextual_ratio: float
    anchors: bool  # core: c > 0 and G > 0; units: c > 0

    @property
    def guided(self) -> bool:
        """Both modalities present: video ratios are audio-guided and clipped to [rho_min, rho_max]."""
        return self.n_audio > 0 and self.n_video > 0


def nominal_retention(layout: Layout, rho_audio: float, rho_video: float) -> float:
    """``r_nom`` of the module doc (fraction of the sample's audio + video tokens kept)."""
    total = layout.n_audio + layout.n_video
    if total == 0:
        return 1.0
    anchors = min(layout.contextual_ratio, rho_audio) if layout.anchors else 0.0
    kept = (1.0 - rho_audio + anchors) * layout.n_audio + (1.0 - rho_video) * layout.n_video
    return kept / total


def _bisect(f, lo: float, hi: float, target: float) -> float:
    """``x`` in ``[lo, hi]`` with ``f(x) ~= target`` for a non-increasing ``f`` (clamped to the ends)."""
    if f(lo) <= target:
        return lo
    if f(hi) >= target:
        return hi
    for _ in range(_BISECT_STEPS):  # iterations of a scalar solve, not a loop over tokens
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) > target else (lo, mid)
    return (lo + hi) / 2


def solve_rhos(
    retention: float,
    layout: Layout,
    rho_audio: float | None,
    rho_video: float | None,
    rho_min: float,
    rho_max: float,
) -> tuple[float, float]:
    """``(rho_a, rho_v)`` for one sample (see the module doc). ``retention < 1`` unless both ratios are given."""
    v_lo, v_hi = (rho_min, rho_max) if layout.guided else (0.0, 1.0)
    clip_v = lambda v: min(max(v, v_lo), v_hi)
    if rho_audio is not None and rho_video is not None:
        if retention < 1.0:
            r_nom = nominal_retention(layout, rho_audio, rho_video)
            if abs(r_nom - retention) > TOLERANCE:
                raise MethodConfigError(
                    f"omnizip: rho_audio={rho_audio}, rho_video={rho_video} keep {r_nom:.3f} nominally on a sample "
                    f"with {layout.n_audio} audio + {layout.n_video} video tokens, but retention={retention} was "
                    "asked; give either the ratios (leave retention at 1.0) or the retention, not both"
                )
        return rho_audio, rho_video
    if retention >= 1.0:  # one ratio given, no retention: the other follows the paper's relationship
        if rho_audio is not None:
            return rho_audio, min(1.0, rho_audio + PAPER_OFFSET)
        return max(0.0, rho_video - PAPER_OFFSET), rho_video

    if rho_audio is not None:
        pair = lambda x: (rho_audio, x)
        lo, hi = (v_lo, v_hi) if layout.n_video else (0.0, 0.0)
    elif rho_video is not None:
        pair = lambda x: (x, rho_video)
        lo, hi = (0.0, 1.0) if layout.n_audio else (0.0, 0.0)
    elif layout.guided:
        pair = lambda x: (x, clip_v(x + PAPER_OFFSET))
        lo, hi = 0.0, 1.0
    elif layout.n_video:  # video only: the video ratio alone sets the budget
        pair = lambda x: (max(0.0, x - PAPER_OFFSET), x)
        lo, hi = 0.0, 1.0
    else:  # audio only
        pair = lambda x: (x, min(1.0, x + PAPER_OFFSET))
        lo, hi = 0.0, 1.0
    f = lambda x: nominal_retention(layout, *pair(x))
    x = _bisect(f, lo, hi, retention)
    if abs(f(x) - retention) > TOLERANCE:
        raise RetentionError(
            f"omnizip cannot keep {retention} of a sample with {layout.n_audio} audio + {layout.n_video} video "
            f"tokens: its nominal retention spans [{f(hi):.3f}, {f(lo):.3f}] there (audio-guided video ratios are "
            f"clipped to [rho_min, rho_max] = [{rho_min}, {rho_max}]); ask for a retention in that range, widen "
            "rho_min/rho_max, or fix rho_audio/rho_video yourself"
        )
    return pair(x)
