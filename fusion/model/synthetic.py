"""`AVTokens` for a hand-chosen media layout, without running any encoder (golden tests, selection benchmarks).

The token ids follow the processor's exact placeholder layout (:mod:`fusion.model.layout`), the TMRoPE ids come
from transformers' own ``get_rope_index`` on them, and the annotation is :func:`~fusion.model.annotate.annotate_tokens`
— so a method sees the same time ids, 2-s groups and grid places as behind the real thinker. Only the embeddings
are synthetic: seeded standard-normal noise that the caller may overwrite (``tokens.embeds[tokens.video_mask] = ...``).
"""

from __future__ import annotations

import torch
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import (
    Qwen2_5OmniPreTrainedModelForConditionalGeneration,
)

from fusion.model.annotate import annotate_tokens
from fusion.model.layout import SpecialIds, av_block_ids
from fusion.tokens import AVTokens


def _rope_owner(config) -> Qwen2_5OmniPreTrainedModelForConditionalGeneration:
    """A weightless module that owns transformers' ``get_rope_index`` for ``config`` (no layers are built, ~1 ms)."""
    owner = Qwen2_5OmniPreTrainedModelForConditionalGeneration(config)
    owner.spatial_merge_size = config.vision_config.spatial_merge_size
    return owner


def synthetic_tokens(
    config,
    grid_t: int = 0,
    grid_hw: tuple[int, int] = (24, 24),
    n_audio: int = 0,
    second_per_grid: float = 1.0,
    prompt_tokens: int = 8,
    question_tokens: int = 6,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    interleaved: bool = True,
) -> AVTokens:
    """One sample: ``prompt`` text, one media block, ``question`` text, annotated like the thinker does.

    Args:
        config: a Qwen2.5-Omni thinker config (token ids, merge size, TMRoPE settings, hidden size).
        grid_t: temporal grids of the video (0 = no video). One grid = ``second_per_grid`` seconds.
        grid_hw: ``(grid_h, grid_w)`` in patch units (``(24, 24)`` = 336 px = 144 merged tokens per grid).
        n_audio: audio tokens (25 per second; 0 = no audio). With video too, the block is interleaved in 2-s chunks
            (``use_audio_in_video``) unless ``interleaved=False``.
        second_per_grid: seconds per temporal grid (1.0 at the processor's fps 2 with temporal patch 2).
        prompt_tokens, question_tokens: text tokens before and after the block.
        seed: seed of the embeddings and the text ids.
        dtype: embeddings dtype.
        interleaved: with video and audio, one interleaved block (default); False = a video block followed by a
            separate audio block (audio not taken from the video, ``use_audio_in_video=False``).
    """
    ids = SpecialIds.from_config(config)
    merge = config.vision_config.spatial_merge_size
    tokens_per_grid = (grid_hw[0] // merge) * (grid_hw[1] // merge)
    interleave = bool(grid_t and n_audio and interleaved)
    blocks = [(grid_t, n_audio)] if interleave or not (grid_t and n_audio) else [(grid_t, 0), (0, n_audio)]
    block = [i for t, a in blocks for i in av_block_ids(ids, t, tokens_per_grid if t else 0, second_per_grid, a,
                                                        config.position_id_per_seconds, config.seconds_per_chunk)]
    g = torch.Generator().manual_seed(seed)
    banned = torch.tensor(sorted({ids.video, ids.audio, ids.image, *ids.markers}))
    text = torch.randint(1, min(config.get_text_config().vocab_size, 1000), (prompt_tokens + question_tokens,),
                         generator=g)
    text = torch.where(torch.isin(text, banned), torch.full_like(text, 1), text)  # no accidental placeholders
    input_ids = torch.cat([text[:prompt_tokens], torch.tensor(block), text[prompt_tokens:]])[None]  # (1, L)
    attention_mask = torch.ones_like(input_ids)
    video_grid_thw = torch.tensor([[grid_t, *grid_hw]]) if grid_t else None
    audio_seqlens = torch.tensor([4 * n_audio]) if n_audio else None  # 4 mel frames per audio token
    position_ids, _ = _rope_owner(config).get_rope_index(
        input_ids, None, video_grid_thw, attention_mask, interleave, audio_seqlens,
        torch.tensor([second_per_grid]) if grid_t else None,
    )  # (3, 1, L)
    hidden = config.get_text_config().hidden_size
    embeds = torch.randn(1, input_ids.shape[1], hidden, generator=g).to(dtype)  # (1, L, D)
    return annotate_tokens(embeds, input_ids, attention_mask, position_ids, video_grid_thw, config)
