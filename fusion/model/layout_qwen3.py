"""The placeholder layout of one audio-visual block, exactly as Qwen3-Omni's processor writes it.

With audio taken from the video (``use_audio_in_video``), the chat template's ``<|vision_bos|><|VIDEO|><|vision_eos|>``
becomes (``Qwen3OmniMoeProcessor.replace_video_with_audio_token``)::

    <|vision_bos|><|audio_bos|> [V and A merged by time id] <|audio_eos|><|vision_eos|>

There are no 2-s chunks. Video grid ``g`` sits at the (float) time id ``v_g = g * second_per_grid *
position_id_per_seconds`` (13 ids per second), audio token ``i`` at id ``i`` (13 tokens per second). Walking both
lists, the next video token goes first while ``v <= i`` (transformers' processor and ``get_rope_index`` use the same
rule), so a video token with id ``v`` follows exactly the ``clamp(ceil(v), 0, n_a)`` audio tokens with smaller ids.
Video-only and audio-only blocks are the same as Qwen2.5-Omni's (:func:`fusion.model.layout.av_block_ids`).

Audio tokens per clip: transformers' ``_get_feat_extract_output_lengths`` (the AuT encoder's windows of
``2 * n_window`` mel frames each give 13 tokens; the rest goes through three stride-2 convolutions).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fusion.model.layout import SpecialIds, av_block_ids


def qwen3_audio_tokens(n_mel_frames: int, n_window: int = 50) -> int:
    """Audio tokens the Qwen3-Omni AuT encoder makes from ``n`` mel frames (100 per second; module doc):
    ``13 * (n // (2 w)) + f(n % (2 w))``, ``f(r) = (r - 1) // 8 + 1`` (three stride-2 convolutions; ``f(0) = 0``)."""
    chunk = 2 * n_window
    rest = n_mel_frames % chunk
    feat = (rest - 1) // 2 + 1
    return ((feat - 1) // 2 + 1 - 1) // 2 + 1 + (n_mel_frames // chunk) * 13


def grid_time_ids(grid_t: int, tokens_per_grid: int, second_per_grid: float,
                  position_id_per_seconds: float) -> Tensor:
    """``(grid_t * tokens_per_grid,)`` float time id of every video token: ``g * second_per_grid * pps``."""
    per_grid = torch.arange(grid_t, dtype=torch.float64) * float(second_per_grid) * float(position_id_per_seconds)
    return per_grid.repeat_interleave(tokens_per_grid)


def merged_order(video_ids: Tensor, n_audio: int) -> Tensor:
    """``(n_v + n_a,)`` bool, True where the merged block holds a video token (module doc: video token ``j`` follows
    ``clamp(ceil(v_j), 0, n_a)`` audio tokens, audio token ``i`` follows the video tokens with ``v <= i``)."""
    n_v = video_ids.numel()
    audio_before = torch.ceil(video_ids).clamp(0, n_audio).long()  # (n_v,) audio tokens ahead of each video token
    video_place = audio_before + torch.arange(n_v)  # (n_v,) index in the merged block (video ids never decrease)
    is_video = torch.zeros(n_v + n_audio, dtype=torch.bool)
    is_video[video_place] = True
    return is_video


def qwen3_av_block_ids(ids: SpecialIds, grid_t: int = 0, tokens_per_grid: int = 0, second_per_grid: float = 1.0,
                       n_audio: int = 0, position_id_per_seconds: float = 13.0) -> list[int]:
    """Token ids of one media block in Qwen3-Omni's layout, markers included (module doc)."""
    if not (grid_t > 0 and tokens_per_grid > 0 and n_audio > 0):
        return av_block_ids(ids, grid_t, tokens_per_grid, second_per_grid, n_audio)
    video_ids = grid_time_ids(grid_t, tokens_per_grid, second_per_grid, position_id_per_seconds)
    body = torch.where(merged_order(video_ids, n_audio), ids.video, ids.audio).tolist()
    return [ids.vision_bos, ids.audio_bos, *body, ids.audio_eos, ids.vision_eos]
