"""DyCoke stage 1: temporal token merging (TTM) as coded in KD-TAO/DyCoke (``llava_arch.py::dycole_ttm``, HEAD
dd74634), plus how our tokens are cut into "frames".

TTM (it prunes, it does not average; maintainer in DyCoke issue #1). Frames ``f_0..f_{F-1}``, ``P`` tokens each,
pruning ratio ``K``; a pruned frame keeps ``n = floor((1-K)·P)`` tokens (the code's ``int((1 - K) * P)``):

1. pairs ``(f_{2j}, f_{2j+1})``: ``s_p = cos(f_{2j}[p], f_{2j+1}[p])`` per spatial position ``p``; frame ``2j+1``
   keeps the ``n`` positions with the LOWEST ``s`` (least redundant), frame ``2j`` is kept whole;
2. 4-frame windows with pivot ``f_i`` (``i = 0, 4, 8, ...``): frame ``i+2`` keeps the ``n`` positions with the
   lowest ``cos(f_i[p], f_{i+2}[p])``.

Per 4-frame window frame 0 is whole and frames 1-3 keep ``n`` each: retention ``(1 + 3(1-K)) / 4`` (0.475 at
K=0.7, never below 25 %). Quirks of the official code, kept here:

* ``last_window_quirk`` (default True, as coded): the window loop is ``range(0, F - 4, 4)``, which skips the last
  window when ``F`` is a multiple of 4 (32 frames at K=0.7 keep 15.9 of 32 frame-equivalents = 0.497, not 0.475;
  for other ``F`` the loop already reaches every window that has a frame ``i+2``), and every window when
  ``F <= 4`` (where the official code crashes on an empty ``torch.stack``). False prunes frame ``i+2`` of every
  window that has one among the paired frames.
* odd ``F``: the pair loop ``range(0, F - 1, 2)`` never reaches the last frame, so the official code DROPS it
  entirely (``odd_frame="drop"``, default, as coded and as VidCom²'s omni port does); ``odd_frame="keep"`` keeps it
  whole instead.
* the code emits the kept tokens of a pruned frame in ascending-similarity order; we return a keep MASK, so kept
  tokens stay in spatial (raster) order, as VidCom²'s port re-sorts them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from fusion.errors import MethodConfigError, RetentionError
from fusion.model.annotate import block_time_ids
from fusion.tokens import AVTokens

ODD_FRAME = ("drop", "keep")
_EPS = 1e-9


def frame_keep_count(tokens_per_frame: int, k: float) -> int:
    """Tokens a pruned frame keeps: ``floor((1 - K) · P)`` (``+1e-9`` so that float error cannot lose one)."""
    return min(tokens_per_frame, max(0, math.floor((1.0 - k) * tokens_per_frame + _EPS)))


def k_for_retention(retention: float) -> float:
    """The pruning ratio ``K`` whose clean-layout TTM retention ``(1 + 3(1-K)) / 4`` equals ``retention``:
    ``K = 4(1 - r) / 3``; needs ``r >= 0.25`` (TTM keeps every window's pivot frame)."""
    if retention < 0.25 - _EPS:
        raise RetentionError(
            f"dycoke: retention={retention} is below what TTM can reach (it keeps every 4-frame window's pivot "
            "frame whole, so at most 75 % is pruned: retention >= 0.25); pick a retention in [0.25, 1]"
        )
    return min(1.0, max(0.0, 4.0 * (1.0 - retention) / 3.0))


def lowest_mask(similarity: Tensor, n: int) -> Tensor:
    """``(N, P)`` bool, True at each row's ``n`` lowest-similarity positions (``topk(largest=False)`` as coded)."""
    mask = torch.zeros_like(similarity, dtype=torch.bool)
    if n > 0:
        mask.scatter_(1, similarity.topk(n, dim=1, largest=False).indices, True)
    return mask


def ttm_keep(frames: Tensor, k: float, last_window_quirk: bool = True, odd_frame: str = "drop") -> Tensor:
    """``(F, P)`` bool keep mask of TTM over ``frames`` ``(F, P, D)`` (see the module doc for the rule).

    Vectorised over all pairs and all windows at once (``cos`` along ``D``).
    """
    if odd_frame not in ODD_FRAME:
        raise MethodConfigError(f"dycoke: odd_frame={odd_frame!r} is not one of {ODD_FRAME}")
    n_frames, P, _ = frames.shape
    keep = torch.ones(n_frames, P, dtype=torch.bool, device=frames.device)
    n_pairs = n_frames // 2
    if n_pairs == 0:
        return keep
    n = frame_keep_count(P, k)
    even = 2 * n_pairs  # frames the pair loop covers
    sim = F.cosine_similarity(frames[0:even:2], frames[1:even:2], dim=-1)  # (n_pairs, P)
    keep[1:even:2] = lowest_mask(sim, n)
    windows = range(0, n_frames - 4, 4) if last_window_quirk else range(0, even - 2, 4)  # pivot frame indices
    pivots = torch.tensor(list(windows), dtype=torch.long, device=frames.device)
    if pivots.numel():
        sim = F.cosine_similarity(frames.index_select(0, pivots), frames.index_select(0, pivots + 2), dim=-1)
        keep[pivots + 2] = lowest_mask(sim, n)
    if n_frames % 2 and odd_frame == "drop":
        keep[-1] = False
    return keep


def video_frame_positions(tokens: AVTokens, video: int) -> tuple[int, Tensor]:
    """``(sample, positions (T, H'·W'))``: where video ``video``'s tokens sit, one row per temporal grid ("frame",
    as VidCom²'s omni port defines it), each row in raster (h, w) order."""
    where = tokens.video_index == video  # (B, L)
    b = int(where.any(dim=1).nonzero()[0, 0])
    pos = where[b].nonzero().flatten()  # (N_v,)
    t, h, w = tokens.grid_place[b].index_select(0, pos).unbind(-1)  # (N_v,) each
    merge = tokens.spatial_merge_size
    _, gh, gw = (int(x) for x in tokens.video_grid_thw[video])
    hm, wm = gh // merge, gw // merge
    order = torch.argsort(t * hm * wm + h * wm + w)
    return b, pos[order].view(-1, hm * wm)


def audio_frame_positions(tokens: AVTokens, frame_tokens: int) -> list[tuple[int, Tensor]]:
    """``[(sample, positions (F, frame_tokens))]`` per audio block: consecutive runs of ``frame_tokens`` audio tokens
    (25 = 1 s at Qwen2.5-Omni's 25 audio tokens per second). A block's last partial run is not listed (kept whole)."""
    _, block = block_time_ids(tokens.input_ids, tokens.position_ids, tokens.av_mask, tokens.special_ids)
    audio = tokens.audio_mask
    out = []
    for b in range(tokens.batch_size):  # loop over samples and their audio blocks, not tokens
        for blk in torch.unique(block[b][audio[b]]).tolist():
            pos = (audio[b] & (block[b] == blk)).nonzero().flatten()
            n_frames = pos.numel() // frame_tokens
            if n_frames:
                out.append((b, pos[: n_frames * frame_tokens].view(n_frames, frame_tokens)))
    return out
