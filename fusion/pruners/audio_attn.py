"""``audio_attn``: attention-received audio pruning (the seed's own baseline).

An audio token's importance is the mean attention it receives from the other audio tokens in the audio encoder's
last layer (the scorer shared with OmniZip and segmentwise top-K, :mod:`fusion.pruners.audio_scoring`)::

    score[j] = 1/(H T) sum_h sum_i softmax_j(Q_h K_h^T / sqrt(d))[i, j]      (frame pairs averaged, 25 per second)

Per sample with ``N`` audio tokens, the kept set is the intersection of a count cap and an optional score floor::

    keep = top-ceil(r N) by score  ∩  {j : score[j] >= tau}                # ties -> earlier token

* no ``threshold`` (default): the registry's top fraction, exactly ``ceil(r N)`` tokens (the global top-K of the
  audio track, without segmentwise top-K's per-segment quota);
* ``threshold`` given: the score floor ``tau`` is ``threshold_mode="absolute"``: ``tau = threshold``;
  ``"quantile"``: ``tau`` = the ``threshold``-quantile of the sample's audio scores (``torch.quantile``, linear
  interpolation), so about ``1 - threshold`` of the tokens pass; ``"mean"``: ``tau = threshold * mean(score)``
  (scale-free: attention received averages ``~1/T`` and so shrinks with clip length, which makes absolute thresholds
  depend on the clip's duration). With ``retention = 1`` only the floor acts; a retention below 1 caps the count.
  The kept fraction is then data-dependent (possibly 0 for a sample whose scores all fall below ``tau``) and is
  reported as measured by ``model.last_stats``.

Video, text and image tokens are all kept (pair it with a video method, see :mod:`fusion.pruners.compose`). A sample
without audio tokens raises :class:`~fusion.errors.MissingModalityError`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fusion.errors import MethodConfigError
from fusion.pruners.audio_scoring import audio_scores, scoring_key
from fusion.pruners.base import Compressor, require_modality
from fusion.pruners.budget import keep_count
from fusion.pruners.ranking import topk_mask
from fusion.pruners.registry import METHODS
from fusion.tokens import AVTokens, Selection

THRESHOLD_MODES = ("absolute", "quantile", "mean")


def score_floor(scores: Tensor, audio: Tensor, threshold: float, mode: str) -> Tensor:
    """``(B,)`` score floor ``tau`` of every sample (module doc) from ``scores`` ``(B, L)`` on the ``audio`` pool."""
    B = scores.shape[0]
    if mode == "absolute":
        return torch.full((B,), float(threshold), device=scores.device)
    masked = torch.where(audio, scores, torch.full_like(scores, float("nan")))  # (B, L)
    if mode == "quantile":
        return torch.nanquantile(masked, threshold, dim=1)
    return threshold * torch.nanmean(masked, dim=1)


@METHODS.register("audio_attn")
class AudioAttn(Compressor):
    """Keep the audio tokens that receive the most attention in the audio encoder's last layer (module doc).

    Args:
        retention: fraction of the AUDIO tokens kept at most (``ceil(r N)``), in (0, 1]; 1.0 with no threshold keeps
            everything.
        threshold: optional score floor (module doc); None (default) keeps exactly the top ``ceil(r N)``.
        threshold_mode: ``"absolute"`` (default), ``"quantile"`` (``threshold`` in [0, 1]) or ``"mean"``
            (``threshold`` times the sample's mean score).
        audio_scoring: ``"global"`` (default; attention over the whole clip, as OmniZip computes it) or ``"window"``
            (the encoder's own attention windows).

    Raises:
        MissingModalityError: a sample of the batch has no audio tokens.
    """

    name = "audio_attn"

    def __init__(self, retention: float, threshold: float | None = None, threshold_mode: str = "absolute",
                 audio_scoring: str = "global") -> None:
        if threshold_mode not in THRESHOLD_MODES:
            raise MethodConfigError(f"audio_attn: threshold_mode={threshold_mode!r} is not one of "
                                    f"{list(THRESHOLD_MODES)}")
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
                raise MethodConfigError(f"audio_attn: threshold={threshold!r} must be a finite number or None")
            if threshold_mode == "quantile" and not 0.0 <= threshold <= 1.0:
                raise MethodConfigError(f"audio_attn: threshold={threshold} must be in [0, 1] with "
                                        "threshold_mode='quantile' (the quantile of the sample's scores)")
            threshold = float(threshold)
        self.retention = retention
        self.threshold = threshold
        self.threshold_mode = threshold_mode
        self.audio_scoring = audio_scoring
        self._key = scoring_key(audio_scoring, self.name)
        self.requires = frozenset({self._key})

    def select(self, tokens: AVTokens) -> Selection:
        if self.retention >= 1.0 and self.threshold is None:
            return tokens.keep_all()
        require_modality(tokens, self.name, audio=True)
        scores = audio_scores(tokens, self._key, self.name)  # (B, L)
        audio = tokens.audio_mask & tokens.attention_mask.bool()  # (B, L)
        chosen = topk_mask(scores, audio, keep_count(audio.sum(1), self.retention))  # (B, L)
        if self.threshold is not None:
            tau = score_floor(scores, audio, self.threshold, self.threshold_mode)  # (B,)
            chosen &= scores >= tau[:, None]
        return Selection(keep=(tokens.attention_mask.bool() & ~audio) | chosen)
