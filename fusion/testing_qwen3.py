"""Random inputs in Qwen3-Omni's layout (tests and benchmarks of ``CompressedQwen3Thinker``; no processor needed).

With audio taken from the video, Qwen3-Omni's block is::

    <|vision_bos|><|audio_bos|> [V and A merged by time id] <|audio_eos|><|vision_eos|>

Video grid ``g`` sits at time id ``g * second_per_grid * position_id_per_seconds`` (2 s per grid at 1 fps, 13
ids/s), audio token ``i`` at id ``i`` (13 tokens per second); tokens are merged by id, video first on ties, as
transformers' processor and ``get_rope_index`` merge them (:mod:`fusion.model.layout_qwen3`). The offline processor
(``load_model("tiny-random-qwen3")[1]``) writes the same layout from real clips.
"""

from __future__ import annotations

import math

import torch

from fusion.model.layout import SpecialIds, av_block_ids
from fusion.model.layout_qwen3 import qwen3_audio_tokens, qwen3_av_block_ids
from fusion.testing import _text_pool

VIDEO_FPS = 1.0
MEL_FRAMES_PER_SECOND = 100


def random_qwen3_inputs(model, seconds: float = 4, batch_size: int = 1, seed: int = 0, video: bool = True,
                        audio: bool = True, frame_size: int = 64, prompt_tokens: int = 6, question_tokens: int = 5,
                        padding_side: str = "left", fps: float = VIDEO_FPS) -> dict:
    """Inputs for a Qwen3-Omni thinker: sample ``b`` lasts ``seconds + 2 b`` seconds of ``fps`` video (``frame_size``
    px square, a multiple of 32; 64 px = 4 merged tokens per grid, 384 px = 144) and/or its 16 kHz audio (13
    tokens/s); padded on ``padding_side``."""
    if not (video or audio):
        raise ValueError("random_qwen3_inputs needs video=True or audio=True")
    config = model.config
    vc, ids = config.vision_config, SpecialIds.from_config(config)
    g = torch.Generator().manual_seed(seed)
    text = _text_pool(config)
    grid = frame_size // vc.patch_size
    if frame_size % (vc.patch_size * vc.spatial_merge_size):
        raise ValueError(f"frame_size {frame_size} px: use a multiple of {vc.patch_size * vc.spatial_merge_size} "
                         "(patch x merge) for Qwen3-Omni, e.g. 384 (144 tokens per grid)")
    per_grid = grid * grid // vc.spatial_merge_size ** 2
    spg = vc.temporal_patch_size / fps
    patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2

    def words(n: int) -> list[int]:
        return text[torch.randint(len(text), (n,), generator=g)].tolist()

    rows, grids, pixels, mels = [], [], [], []
    for b in range(batch_size):  # one iteration per sample
        secs = seconds + 2 * b
        n_t = math.ceil(secs / spg)
        n_mel = int(secs * MEL_FRAMES_PER_SECOND)
        n_a = qwen3_audio_tokens(n_mel, config.audio_config.n_window)
        if video:
            grids.append([n_t, grid, grid])
            pixels.append(torch.randn(n_t * grid * grid, patch_dim, generator=g))
        if audio:
            mels.append(torch.randn(config.audio_config.num_mel_bins, n_mel, generator=g))
        block = (qwen3_av_block_ids(ids, n_t, per_grid, spg, n_a if audio else 0, config.position_id_per_seconds)
                 if video else av_block_ids(ids, n_audio=n_a))
        rows.append(words(prompt_tokens) + block + words(question_tokens))

    width = max(len(r) for r in rows)
    pad = config.get_text_config().pad_token_id or 0
    input_ids = torch.full((batch_size, width), pad, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, width), dtype=torch.long)
    for b, row in enumerate(rows):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        input_ids[b, span] = torch.tensor(row)
        attention_mask[b, span] = 1
    out = dict(input_ids=input_ids, attention_mask=attention_mask)
    if video:
        out.update(pixel_values_videos=torch.cat(pixels), video_grid_thw=torch.tensor(grids),
                   video_second_per_grid=torch.full((batch_size,), spg))
    if audio:
        frames = max(m.shape[1] for m in mels)
        features = torch.zeros(batch_size, mels[0].shape[0], frames)
        mask = torch.zeros(batch_size, frames, dtype=torch.long)
        for b, m in enumerate(mels):
            features[b, :, :m.shape[1]] = m
            mask[b, :m.shape[1]] = 1
        out.update(input_features=features, feature_attention_mask=mask)
    out["use_audio_in_video"] = video and audio
    return out
