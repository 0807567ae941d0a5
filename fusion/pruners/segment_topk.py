"""``segment_topk``: segmentwise top-K audio pruning (Gibier et al., "Segmentwise Pruning in Audio-Language Models",
arXiv 2511.14293, ICASSP 2026 submission; no official code was released)."""

from __future__ import annotations

import torch

from fusion.errors import MethodConfigError
from fusion.pruners.audio_scoring import audio_scores, scoring_key
from fusion.pruners.base import Compressor, require_modality
from fusion.pruners.budget import keep_count
from fusion.pruners.group_ranking import rank_in_group
from fusion.pruners.registry import METHODS
from fusion.tokens import AVTokens, Selection


def segment_of(rank, n, segments: int):
    """Segment index of the audio token with rank ``i`` among a sample's ``N`` audio tokens: ``floor(i * S / N)``.

    So segment ``s`` holds ranks ``ceil(s N / S) .. ceil((s + 1) N / S) - 1`` (contiguous, sizes differ by <= 1;
    empty segments when ``N < S``).
    """
    return torch.div(rank * segments, n.clamp(min=1), rounding_mode="floor")


@METHODS.register("segment_topk")
class SegmentTopK(Compressor):
    """Keep the ``floor(K / S)`` most-attended audio tokens of each of ``S`` equal time segments.

    Per sample with ``N`` audio tokens (all its audio, in sequence order)::

        K = ceil(r * N)                              # the project's rounding rule
        segment(i) = floor(i * S / N)                # S contiguous, near-equal segments of the audio tokens
        keep = U_s top-min(floor(K / S), |seg_s|) of seg_s by score   # ties -> earlier token

    ``score`` = attention received in the audio encoder's last layer (shared with OmniZip, see
    :mod:`fusion.pruners.audio_scoring`). As the paper states, the remainder ``K - S * floor(K / S)`` is **not**
    kept, so a sample keeps ``S * floor(K / S) <= K`` audio tokens, and none at all when ``K < S``.
    Video tokens are kept untouched (an audio method; pair it with a video method for both). Text is kept.

    Paper defaults: ``S = 10``; 25 % of the audio tokens kept in the headline results.

    Args:
        retention: fraction of the AUDIO tokens targeted (``K = ceil(r * N)``), in (0, 1]; 1.0 keeps everything.
        segments: ``S`` (default 10).
        audio_scoring: ``"global"`` (default; attention over the whole clip, as OmniZip computes it) or
            ``"window"`` (the encoder's own attention windows).

    Raises:
        MissingModalityError: a sample of the batch has no audio tokens.
    """

    name = "segment_topk"

    def __init__(self, retention: float, segments: int = 10, audio_scoring: str = "global") -> None:
        if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
            raise MethodConfigError(f"segment_topk: segments={segments!r} must be an integer >= 1 (paper: 10)")
        self.retention = retention
        self.segments = segments
        self.audio_scoring = audio_scoring
        self._key = scoring_key(audio_scoring, self.name)
        self.requires = frozenset({self._key})

    def select(self, tokens: AVTokens) -> Selection:
        if self.retention >= 1.0:
            return tokens.keep_all()
        require_modality(tokens, self.name, audio=True)
        scores = audio_scores(tokens, self._key, self.name)  # (B, L)
        audio = tokens.audio_mask  # (B, L)
        n = audio.sum(1)  # (B,)
        per_segment = keep_count(n, self.retention) // self.segments  # (B,) floor(K / S)
        b, pos = audio.nonzero(as_tuple=True)  # (N_total,) row-major: each sample's audio in sequence order
        rank = audio.long().cumsum(1)[b, pos] - 1  # (N_total,) index of the token among its sample's audio
        group = b * self.segments + segment_of(rank, n[b], self.segments)  # (N_total,) one group per (sample, seg)
        chosen = rank_in_group(scores[b, pos], group) < per_segment[b]  # (N_total,)
        keep = tokens.attention_mask.bool() & ~audio
        keep[b[chosen], pos[chosen]] = True
        return Selection(keep=keep)
