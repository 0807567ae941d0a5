"""Encode videos a few temporal grids at a time, so the vision tower's peak memory follows the chunk, not the clip.

Exact for Qwen2.5-Omni's vision tower: no attention crosses a temporal grid (the full-attention layers attend inside
one grid, ``cu_seqlens`` = one segment of ``H * W`` patches per grid; the windowed layers inside windows of one grid),
the rotary positions depend only on ``(h, w)``, and the patch merger works on 2 x 2 patches of one grid. So encoding
grids ``t0 .. t0 + k`` of a video alone, as a video of grid ``(k, H, W)``, gives the same rows as encoding the whole
video and slicing.

``pixel_values_videos`` holds, per video ``i`` in order, ``T_i * H_i * W_i`` patch rows ordered by ``(t, h, w)``
(the processor's layout); the output holds ``T_i * H_i * W_i / m^2`` merged rows per video, in the same order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fusion.errors import ConfigError

#: temporal grids per chunk by default: 8 grids = 8 s at 2 fps (4,608 patches at 336 px), a GEMM size that keeps
#: a GPU busy while a 60-s clip's encoder activations shrink ~7x.
DEFAULT_CHUNK_GRIDS = 8


def encode_video_in_chunks(encode: Callable[[Tensor, Tensor], Tensor], pixel_values_videos: Tensor,
                           video_grid_thw: Tensor, chunk_grids: int | None) -> Tensor:
    """``(sum_i T_i H_i W_i / m^2, D)`` video embeddings, encoding at most ``chunk_grids`` temporal grids per call.

    Args:
        encode: ``(patch rows (n, C * tp * p * p), grid (V, 3)) -> (n / m^2, D)`` merged embeddings (the thinker's
            vision tower + merger).
        pixel_values_videos: ``(sum_i T_i H_i W_i, C * tp * p * p)`` patch rows.
        video_grid_thw: ``(V, 3)`` integer ``(T, H, W)`` per video.
        chunk_grids: temporal grids per call; ``None`` (or a value >= every T) encodes each batch in one call.
    """
    if chunk_grids is None or int(video_grid_thw[:, 0].max()) <= chunk_grids:
        return encode(pixel_values_videos, video_grid_thw)
    if chunk_grids < 1:
        raise ConfigError(f"video_chunk_grids must be an integer >= 1 or None (one call), got {chunk_grids}")
    pieces, start = [], 0
    for t, h, w in video_grid_thw.tolist():  # one video at a time (a handful per batch)
        for t0 in range(0, t, chunk_grids):  # ceil(T / chunk) calls
            k = min(chunk_grids, t - t0)
            rows = k * h * w
            grid = video_grid_thw.new_tensor([[k, h, w]])  # (1, 3)
            pieces.append(encode(pixel_values_videos[start:start + rows], grid))  # (rows / m^2, D)
            start += rows
    return torch.cat(pieces)
