"""The audio-token importance shared by OmniZip and segmentwise top-K: attention received in the audio encoder's
last layer.

The thinker computes it on request (``Compressor.requires``) in :mod:`fusion.model.audio_attention`::

    score[j] = 1/(H * T) * sum_h sum_i softmax_j(Q_h K_h^T / sqrt(d))[i, j]     (then frame pairs averaged)

``scoring="global"`` (default, what OmniZip's ``return_logits`` codes) lets every frame attend to the whole clip;
``scoring="window"`` uses the encoder's own attention windows (the attention the layer really computed).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fusion.errors import InputMismatchError, MethodConfigError
from fusion.pruners.base import required_extra
from fusion.tokens import AVTokens

SCORINGS = ("global", "window")


def scoring_key(scoring: str, method: str) -> str:
    """The ``AVTokens.extras`` key of an audio scoring mode (``"audio_attention_global"`` / ``"..._window"``)."""
    if scoring not in SCORINGS:
        raise MethodConfigError(
            f"{method}: audio_scoring={scoring!r} is not one of {list(SCORINGS)}; use 'global' (attention over the "
            "whole clip, as OmniZip codes it) or 'window' (the audio encoder's own attention windows)"
        )
    return f"audio_attention_{scoring}"


def audio_scores(tokens: AVTokens, key: str, method: str) -> Tensor:
    """``(B, L)`` float32 attention received per audio token (NaN elsewhere), checked to be present and finite."""
    scores = required_extra(tokens, key, method, "attention received in the audio encoder's last layer")
    if scores.shape != tokens.input_ids.shape:
        raise InputMismatchError(
            f"tokens.extras[{key!r}] has shape {tuple(scores.shape)}; expected {tuple(tokens.input_ids.shape)} "
            "(one score per sequence position, NaN off audio tokens)"
        )
    scores = scores.float()
    bad = tokens.audio_mask & ~torch.isfinite(scores)
    if bool(bad.any()):
        raise InputMismatchError(
            f"tokens.extras[{key!r}] is NaN/Inf at {int(bad.sum())} audio token(s); every audio token needs a finite "
            "score (check that the audio features are finite and the extra covers every audio placeholder)"
        )
    return scores
