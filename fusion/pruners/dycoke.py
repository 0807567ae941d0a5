"""``dycoke``: DyCoke (Tao et al., CVPR 2025, arXiv 2411.15024), both stages, ported to Qwen2.5-Omni.

Stage 1 (pre-LLM) is TTM (:mod:`fusion.pruners.dycoke_ttm`) with one video "frame" = one temporal grid (as
VidCom²'s omni port does) and, in the "DyCoke (V&A)" setting OmniZip compares against, the same TTM on audio.
Stage 2 prunes the KV cache during decoding through the in-LLM hook (:mod:`fusion.model.llm_hooks`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fusion.errors import MethodConfigError, RetentionError
from fusion.model.llm_hooks import LLMHook
from fusion.pruners.base import Compressor, require_modality
from fusion.pruners.dycoke_ttm import (
    ODD_FRAME,
    audio_frame_positions,
    k_for_retention,
    ttm_keep,
    video_frame_positions,
)
from fusion.pruners.ranking import topk_mask
from fusion.pruners.registry import METHODS
from fusion.tokens import AVTokens, Modality, Selection

MODALITIES = ("video", "audio_video")
STAGE2_MODES = ("as_coded", "as_paper")


@METHODS.register("dycoke")
class DyCoke(Compressor):
    """DyCoke: temporal token merging before the LLM, dynamic KV-cache pruning while decoding.

    Stage 1, TTM (``K`` = pruning ratio of non-pivot frames; see :mod:`fusion.pruners.dycoke_ttm`): per 4-frame
    window frame 0 stays whole and frames 1-3 keep the ``floor((1-K)·P)`` tokens least similar to their reference
    frame, so retention is ``(1 + 3(1-K)) / 4`` on a clean layout. Video frames are temporal grids (``P = H'·W'``
    tokens). Audio (``modalities="audio_video"``, OmniZip's "DyCoke (V&A)", whose audio grouping is unpublished):
    OUR choice is audio frames = runs of ``audio_frame_tokens`` (25 = 1 s, the span of one video grid at the
    processor's default 2 fps) consecutive tokens of an audio block, TTM with the same ``K``; a block's final
    partial run is kept whole.

    Stage 2 (``stage2=True``), per decoding step, DyCoke's ``PrunableDynamicCache``: the current token's attention
    row at layer ``L-1`` (mean over heads) restricted to the AV prefill entries, ``a``; ``sim = cos(a, a_prev)``
    (0 at the first step); if ``sim < threshold`` layers ``>= L`` attend only to the ``floor(N·(1-P))`` AV entries
    with the highest ``a`` (plus all text and generated tokens). ``stage2_mode="as_coded"``: when
    ``sim >= threshold`` nothing is pruned that step (the official code); ``"as_paper"``: the previous step's kept
    set is reused (paper Eq. 5-7). The stage-2 pool is the AV tokens of ``modalities``.

    Retention: DyCoke's own knob is ``k``. Give EITHER ``k`` (then ``retention`` must stay 1.0) OR ``retention``
    (then ``K = 4(1-r)/3`` so that ``(1 + 3(1-K))/4 = r``; needs ``r >= 0.25``). ``retention=1.0`` without ``k``
    means ``K = 0``: TTM keeps everything (prefill logits equal the stock model's), while stage 2 still prunes
    during decoding unless ``stage2=False``. Measured retention differs from the formula (last-window quirk, odd
    frame counts, audio tails): read ``model.last_stats``.

    Defaults follow the paper's experiments (K 0.7 when given, L 3, P 0.7, threshold 0.9; the official code and the
    quirks as coded). We reset the previous attention row at every ``generate`` call (the official code carries it
    over between samples) and treat every TTM-kept AV token as prunable in stage 2 (the official
    ``image_token_length = len(TTM output) - 1`` leaves the last image token out of the pool).

    Args:
        retention: fraction of AV tokens kept by stage 1, in [0.25, 1] (only without ``k``).
        k: TTM pruning ratio K in [0, 1] (paper: 0.3 / 0.5 / 0.7), or None to derive it from ``retention``.
        modalities: ``"audio_video"`` (default, the V&A setting of OmniZip's tables) or ``"video"`` (the paper).
        last_window_quirk: keep the official ``range(0, F - 4, 4)`` window loop (default True).
        odd_frame: ``"drop"`` (as coded: an odd last frame is dropped) or ``"keep"``.
        audio_frame_tokens: audio tokens per audio "frame" (default 25 = 1 s).
        stage2: dynamic KV pruning during decoding on/off (default True).
        layer: ``L``, first layer whose decoding attention is pruned (default 3; needs ``1 <= L < num_layers``).
        p: ``P``, pruning ratio of the AV cache entries in stage 2, in [0, 1) (default 0.7).
        threshold: similarity threshold (default 0.9; ``<= 0`` never prunes, ``> 1`` prunes at every step).
        stage2_mode: ``"as_coded"`` (default) or ``"as_paper"``.
    """

    name = "dycoke"

    def __init__(self, retention: float = 1.0, k: float | None = None, modalities: str = "audio_video",
                 last_window_quirk: bool = True, odd_frame: str = "drop", audio_frame_tokens: int = 25,
                 stage2: bool = True, layer: int = 3, p: float = 0.7, threshold: float = 0.9,
                 stage2_mode: str = "as_coded") -> None:
        if k is not None:
            if retention != 1.0:
                raise RetentionError(
                    f"dycoke: give either k (DyCoke's pruning ratio) or retention, not both (got k={k}, "
                    f"retention={retention}); with k the resulting retention is (1 + 3(1-k))/4 on a clean layout"
                )
            if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0.0 <= k <= 1.0:
                raise MethodConfigError(f"dycoke: k={k!r} must be a pruning ratio in [0, 1] (paper: 0.3/0.5/0.7)")
        _choice("modalities", modalities, MODALITIES)
        _choice("odd_frame", odd_frame, ODD_FRAME)
        _choice("stage2_mode", stage2_mode, STAGE2_MODES)
        if not isinstance(audio_frame_tokens, int) or audio_frame_tokens < 1:
            raise MethodConfigError(f"dycoke: audio_frame_tokens={audio_frame_tokens!r} must be a positive int")
        if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise MethodConfigError(f"dycoke: p={p!r} must be a pruning ratio in [0, 1) (paper: 0.7)")
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 1:
            raise MethodConfigError(f"dycoke: layer={layer!r} must be an int >= 1 (paper: 3)")
        if not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise MethodConfigError(f"dycoke: threshold={threshold!r} must be a finite number (paper: 0.9)")
        self.retention = retention
        self.k = float(k) if k is not None else k_for_retention(retention)
        self.modalities = modalities
        self.last_window_quirk = bool(last_window_quirk)
        self.odd_frame = odd_frame
        self.audio_frame_tokens = audio_frame_tokens
        self.stage2 = bool(stage2)
        self.layer = layer
        self.p = float(p)
        self.threshold = float(threshold)
        self.stage2_mode = stage2_mode

    def select(self, tokens: AVTokens) -> Selection:
        """Stage 1: TTM on every video (frames = temporal grids) and, for ``audio_video``, every audio block."""
        if self.modalities == "video":
            require_modality(tokens, self.name, video=True)
        keep = tokens.attention_mask.bool().clone()  # (B, L)
        if self.k <= 0.0:
            return Selection(keep=keep)
        embeds = tokens.embeds
        groups = []
        if tokens.video_grid_thw is not None and bool(tokens.video_mask.any()):
            groups += [video_frame_positions(tokens, v) for v in range(tokens.video_grid_thw.shape[0])]
        if self.modalities == "audio_video":
            groups += audio_frame_positions(tokens, self.audio_frame_tokens)
        for b, pos in groups:  # one iteration per video / audio block
            frames = embeds[b].index_select(0, pos.flatten()).view(*pos.shape, -1)  # (F, P, D)
            keep[b, pos] = ttm_keep(frames, self.k, self.last_window_quirk, self.odd_frame)
        return Selection(keep=keep)

    def llm_hook(self) -> DyCokeDecodeHook | None:
        """A fresh stage-2 hook per call (its previous-row state lives for one ``generate``), or None."""
        if not self.stage2:
            return None
        return DyCokeDecodeHook(self.layer, self.p, self.threshold, self.stage2_mode, self.modalities)


class DyCokeDecodeHook(LLMHook):
    """DyCoke stage 2 (see :class:`DyCoke`): per decoding step, which AV prefill cache entries layers >= L keep.

    ``keep = non-AV ∪ top_{floor(N·(1-P))}(a)`` when ``cos(a, a_prev) < threshold``; otherwise everything
    (``as_coded``) or the previous step's set (``as_paper``). ``a`` is the row restricted to the pool; the cosine
    is taken per sample over its pool entries. Batched: each sample decides for itself.
    """

    name = "dycoke"

    def __init__(self, layer: int, p: float, threshold: float, mode: str, modalities: str) -> None:
        self.decode_layer = layer
        self.p, self.threshold, self.mode = p, threshold, mode
        self.codes = (Modality.VIDEO, Modality.AUDIO) if modalities == "audio_video" else (Modality.VIDEO,)
        self.previous_row: Tensor | None = None
        self.previous_keep: Tensor | None = None

    def decode_keep(self, row: Tensor, modality: Tensor) -> Tensor | None:
        pool = torch.zeros_like(modality, dtype=torch.bool)
        for code in self.codes:
            pool |= modality == code
        a = torch.where(pool, row, torch.zeros_like(row))  # (B, S_p)
        if self.previous_row is None:
            sim = torch.zeros(a.shape[0], device=a.device)
        else:
            prev = self.previous_row
            sim = (a * prev).sum(1) / (a.norm(dim=1) * prev.norm(dim=1)).clamp(min=1e-8)  # (B,)
        self.previous_row = a
        n = torch.floor(pool.sum(1).double() * (1.0 - self.p) + 1e-9).long()  # (B,) int(N * (1 - P)) as coded
        fresh = ~pool | topk_mask(row, pool, n)  # (B, S_p)
        refresh = (sim < self.threshold)[:, None]  # (B, 1)
        if self.mode == "as_paper" and self.previous_keep is not None:
            stale = self.previous_keep
        else:
            stale = torch.ones_like(fresh)
        keep = torch.where(refresh, fresh, stale)
        self.previous_keep = keep
        return None if bool(keep.all()) else keep


def _choice(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise MethodConfigError(f"dycoke: {name}={value!r} is not one of {list(allowed)}")
