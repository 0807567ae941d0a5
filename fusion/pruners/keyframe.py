"""``keyframe``: keyframe temporal pruning of video tokens (the seed's own baseline; DyCoke-stage-1-like, after H.264's
groups of pictures).

DyCoke's TTM (Tao et al., CVPR 2025; KD-TAO/DyCoke ``dycole_ttm``) keeps the first frame of every 4-frame window whole
and, in the other frames, only the tokens least similar to the pivot frame's token at the same place. This method
generalises it: blocks follow the clip's 2-second time groups by default, the keyframe of a block can be chosen by its
similarity to the rest of the video, and the budget follows the registry's ``retention`` exactly.

Per video (one frame = one temporal grid of ``M`` merged tokens; ``x[f, m]`` = token at place ``m`` of frame ``f``):

1. **blocks**: ``block="time_group"`` (default): the frames of one 2-s time group (2 grids at fps 2); ``block=n``: runs
   of ``n`` consecutive grids. Blocks are contiguous in time.
2. **frame similarity**: ``S[f, g] = 1/M sum_m cos(x[f, m], x[g, m])`` (mean cosine over tokens at the same place).
3. **keyframe** of block ``b``, from ``s_f = mean_{g not in b} S[f, g]`` (mean similarity to the frames of the OTHER
   blocks; a video with one block uses the other frames of that block; a lone frame has ``s = 0``):
   ``least_similar`` (default) = ``argmin_{f in b} s_f``, the frame least like the rest of the
   video; ``most_similar`` = ``argmax_{f in b} s_f``, the most representative frame (H.264-style alternative);
   ``first`` = the block's first frame (DyCoke's choice). Ties go to the earlier frame.
4. **budget** of block ``b`` with ``F_b`` frames: ``K_b = ceil(r F_b M)``; the keyframe keeps
   ``k_key = min(K_b, max(ceil(keyframe_ratio M), K_b - (F_b - 1) M))`` and the rest ``R_b = K_b - k_key`` is spread
   over the ``F_b - 1`` other frames in time order: ``floor(R_b / (F_b - 1))`` each, plus one for the first
   ``R_b mod (F_b - 1)`` of them. That is:

   * by default (``keyframe_ratio = 1``) the keyframe is kept whole whenever ``K_b >= M``;
   * when the keyframe alone exceeds the budget (``K_b < M``, i.e. ``r < 1/F_b``: below 0.5 with the default 2-grid
     blocks) it keeps its ``K_b`` best tokens (spatially pruned, step 5) and the other frames keep nothing: only
     keyframes survive, and the block never exceeds ``K_b``. Use longer blocks (``block=n``) to keep whole
     keyframes at low retention (``block=4`` at ``r = 0.25`` keeps exactly one whole grid in four);
   * with ``keyframe_ratio < 1`` the keyframe keeps more than ``ceil(keyframe_ratio M)`` only when the other frames
     cannot hold the rest.

   So every block keeps exactly ``K_b`` tokens and a sample keeps ``sum_b ceil(r F_b M) >= ceil(r N_v)`` video tokens
   (per-block rounding adds less than one token per block).
5. **tokens**: a non-key frame keeps its ``k_f`` tokens least similar to the keyframe's token at the same place
   (largest ``1 - cos(x[f, m], x[key, m])``); a keyframe pruned below ``M`` keeps its ``k_key`` tokens least similar
   to its own frame mean (largest ``1 - cos(x[key, m], mean_m' x[key, m'])``, OmniSIFT's parameter-free first-frame
   score). Ties go to the earlier place. Kept tokens stay in sequence order.

Video only: audio, text and image tokens are all kept (pair it with an audio method, see
:mod:`fusion.pruners.compose`). A sample without video tokens raises :class:`~fusion.errors.MissingModalityError`.
Scores are computed in float32 whatever the embeddings' dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from fusion.errors import InputMismatchError, MethodConfigError
from fusion.pruners.base import Compressor, require_modality
from fusion.pruners.budget import keep_count
from fusion.pruners.group_ranking import rank_in_group
from fusion.pruners.registry import METHODS
from fusion.pruners.vidcom2 import keep_lowest_per_frame
from fusion.tokens import AVTokens, Selection

RULES = ("least_similar", "most_similar", "first")


def unit_similarity(unit: Tensor) -> Tensor:
    """``S[f, g] = 1/M sum_m u[f, m] . u[g, m]`` for unit tokens ``unit`` ``(T, M, D)`` -> ``(T, T)`` (one matmul)."""
    T, M, _ = unit.shape
    flat = unit.reshape(T, -1)  # (T, M*D): a frame's unit tokens side by side
    return flat @ flat.T / M


def frame_similarity(frames: Tensor) -> Tensor:
    """``S[f, g] = 1/M sum_m cos(x[f, m], x[g, m])`` for ``frames`` ``(T, M, D)`` -> ``(T, T)``."""
    return unit_similarity(F.normalize(frames.float(), dim=-1))


def choose_keyframes(sim: Tensor | None, block: Tensor, rule: str) -> Tensor:
    """``(T,)`` bool, True at the keyframe of every block (module doc, step 3).

    Args:
        sim: ``(T, T)`` frame similarities (unused, may be None, for ``rule="first"``).
        block: ``(T,)`` long block id of every frame (``>= 0``).
        rule: one of :data:`RULES`.
    """
    T = block.shape[0]
    if rule == "first":
        score = torch.zeros(T, device=block.device)
    else:
        other = block[:, None] != block[None, :]  # (T, T) frames of other blocks
        if not bool(other.any()):  # one block: compare with the other frames of the video
            other = ~torch.eye(T, dtype=torch.bool, device=block.device)
        s = (sim * other).sum(1) / other.sum(1).clamp(min=1)  # (T,) mean similarity to the compared frames
        score = -s if rule == "least_similar" else s
    return rank_in_group(score, block) == 0  # best of each block, ties -> earlier frame


def frame_budgets(block: Tensor, is_key: Tensor, tokens_per_frame: int, retention: float,
                  keyframe_ratio: float) -> Tensor:
    """``(T,)`` tokens kept per frame (module doc, step 4)."""
    M = tokens_per_frame
    n_frames = torch.bincount(block)  # (G,) F_b
    K = keep_count(n_frames * M, retention)  # (G,) K_b = ceil(r F_b M)
    wanted = math.ceil(keyframe_ratio * M - 1e-9)
    k_key = torch.minimum(K, (K - (n_frames - 1) * M).clamp(min=wanted))  # (G,)
    rest = K - k_key  # (G,) R_b
    others = (n_frames - 1).clamp(min=1)  # (G,)
    nonkey = ~is_key
    before = torch.nn.functional.pad((n_frames - 1).cumsum(0)[:-1], (1, 0))  # (G,) non-key frames in earlier blocks
    ordinal = nonkey.long().cumsum(0) - 1 - before[block]  # (T,) index among the block's non-key frames
    share = rest[block] // others[block] + (ordinal < rest[block] % others[block]).long()  # (T,)
    return torch.where(is_key, k_key[block], share)


def keyframe_keep(frames: Tensor, block: Tensor, retention: float, rule: str = "least_similar",
                  keyframe_ratio: float = 1.0) -> Tensor:
    """``(T, M)`` bool keep mask of one video ``frames`` ``(T, M, D)`` with frame blocks ``block`` ``(T,)`` (dense
    ids ``0..G-1`` in time order): the whole method, module doc."""
    frames = frames.float()
    T, M, _ = frames.shape
    unit = F.normalize(frames, dim=-1)  # (T, M, D)
    is_key = choose_keyframes(None if rule == "first" else unit_similarity(unit), block, rule)  # (T,)
    key_frame = torch.zeros(int(block.max()) + 1, dtype=torch.long, device=frames.device)
    key_frame[block[is_key]] = is_key.nonzero().flatten()  # (G,) index of each block's keyframe
    to_key = torch.einsum("tmd,tmd->tm", unit, unit[key_frame[block]])  # (T, M) cos to the keyframe's same place
    mean_dir = F.normalize(frames.mean(dim=1), dim=-1)  # (T, D)
    to_mean = torch.einsum("tmd,td->tm", unit, mean_dir)  # (T, M) cos to the frame mean
    similarity = torch.where(is_key[:, None], to_mean, to_key)  # lower = keep first
    return keep_lowest_per_frame(similarity, frame_budgets(block, is_key, M, retention, keyframe_ratio))


def frame_blocks(groups: Tensor, block: str | int) -> Tensor:
    """``(T,)`` dense block ids of a video's frames from their 2-s time groups ``(T,)`` or a fixed block length."""
    if block == "time_group":
        return torch.unique(groups, return_inverse=True)[1]
    return torch.arange(groups.shape[0], device=groups.device) // int(block)


@METHODS.register("keyframe")
class Keyframe(Compressor):
    """Keyframe temporal pruning: per block of frames, a keyframe kept whole, the other frames' tokens kept by
    dissimilarity to the keyframe's token at the same place (module doc for the formulas).

    Video tokens only; audio is kept. No published code: the seed's own baseline, DyCoke-stage-1-like.

    Args:
        retention: fraction of every block's video tokens kept, in (0, 1] (``K_b = ceil(r F_b M)``).
        block: ``"time_group"`` (default: the frames of one 2-s time group) or an integer ``n >= 1`` (runs of ``n``
            temporal grids).
        keyframe: ``"least_similar"`` (default), ``"most_similar"`` or ``"first"``.
        keyframe_ratio: fraction of the keyframe's tokens it keeps at least, in (0, 1] (default 1.0: whole, unless
            the block's budget is smaller than one frame).

    Raises:
        MissingModalityError: a sample of the batch has no video tokens.
    """

    name = "keyframe"

    def __init__(self, retention: float, block: str | int = "time_group", keyframe: str = "least_similar",
                 keyframe_ratio: float = 1.0) -> None:
        if block != "time_group" and (isinstance(block, bool) or not isinstance(block, int) or block < 1):
            raise MethodConfigError(f"keyframe: block={block!r} must be 'time_group' (the frames of one 2-s chunk) "
                                    "or an integer >= 1 (temporal grids per block)")
        if keyframe not in RULES:
            raise MethodConfigError(f"keyframe: keyframe={keyframe!r} is not one of {list(RULES)}")
        if isinstance(keyframe_ratio, bool) or not isinstance(keyframe_ratio, (int, float)) \
                or not math.isfinite(keyframe_ratio) or not 0.0 < keyframe_ratio <= 1.0:
            raise MethodConfigError(f"keyframe: keyframe_ratio={keyframe_ratio!r} must be in (0, 1] (fraction of the "
                                    "keyframe's tokens kept; 1.0 keeps it whole)")
        self.retention = retention
        self.block = block
        self.keyframe = keyframe
        self.keyframe_ratio = float(keyframe_ratio)

    def select(self, tokens: AVTokens) -> Selection:
        if self.retention >= 1.0:
            return tokens.keep_all()
        require_modality(tokens, self.name, video=True)
        if tokens.video_grid_thw is None:
            raise InputMismatchError("keyframe needs video_grid_thw to split each video into frames; pass the "
                                     "processor's full output (video_grid_thw comes with pixel_values_videos)")
        keep = tokens.attention_mask.bool() & ~tokens.video_mask  # text, specials, images and audio stay
        merge = tokens.spatial_merge_size
        video_index, time_group = tokens.video_index, tokens.time_group  # (B, L)
        for v, (t, h, w) in enumerate(tokens.video_grid_thw.tolist()):  # one iteration per video
            where = video_index == v  # (B, L): one sample's tokens in (t, h, w) raster order
            M = (h // merge) * (w // merge)
            if int(where.sum()) != t * M:
                raise InputMismatchError(f"keyframe: video {v} has {int(where.sum())} tokens but its grid {[t, h, w]} "
                                         f"needs {t * M}; rebuild input_ids and video_grid_thw with the processor")
            frames = tokens.embeds[where].reshape(t, M, -1)  # (T, M, D)
            block = frame_blocks(time_group[where].reshape(t, M)[:, 0], self.block)  # (T,)
            keep[where] = keyframe_keep(frames, block, self.retention, self.keyframe, self.keyframe_ratio).flatten()
        return Selection(keep=keep)
