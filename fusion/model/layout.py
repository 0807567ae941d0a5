"""The placeholder layout of one audio-visual block, exactly as Qwen2.5-Omni's processor writes it.

With audio taken from the video (``use_audio_in_video``), the chat template's
``<|vision_bos|><|VIDEO|><|vision_eos|>`` becomes::

    <|vision_bos|><|audio_bos|> [V x n_v0][A x n_a0] [V x n_v1][A x n_a1] ... <|audio_eos|><|vision_eos|>

where chunk j holds the video grids and audio tokens whose TMRoPE temporal ids fall in successive
``position_id_per_seconds * seconds_per_chunk`` (= 50) id windows. Video grid g sits at temporal id
``int(g * second_per_grid * 25)``; audio token i at id ``i`` (25 tokens per second).
Chunks are cut the way transformers' ``Qwen2_5OmniProcessor.get_chunked_index`` cuts them: walking the
ids in order, a new chunk starts at the first id >= ``k * 50`` for k = 1, 2, ... (one cut per id), and
the j-th video chunk is paired with the j-th audio chunk.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpecialIds:
    """Token ids of the placeholders and block markers (from a thinker config)."""

    video: int
    audio: int
    image: int
    vision_bos: int
    vision_eos: int
    audio_bos: int
    audio_eos: int

    @classmethod
    def from_config(cls, config) -> SpecialIds:
        return cls(
            video=config.video_token_id,
            audio=config.audio_token_id,
            image=config.image_token_id,
            vision_bos=config.vision_start_token_id,
            vision_eos=config.vision_end_token_id,
            audio_bos=config.audio_start_token_id,
            audio_eos=config.audio_end_token_id,
        )

    @property
    def markers(self) -> tuple[int, ...]:
        return (self.vision_bos, self.vision_eos, self.audio_bos, self.audio_eos)


def chunk_lengths(ids: list[int], ids_per_chunk: int) -> list[int]:
    """Lengths of the chunks ``get_chunked_index`` cuts a non-decreasing id list into (see module doc)."""
    lengths: list[int] = []
    start, next_cut = 0, ids_per_chunk
    for i, value in enumerate(ids):
        if value >= next_cut:
            lengths.append(i - start)
            start, next_cut = i, next_cut + ids_per_chunk
    lengths.append(len(ids) - start)
    return lengths


def grid_time_ids(grid_t: int, second_per_grid: float, position_id_per_seconds: float) -> list[int]:
    """Temporal id of each video grid: ``int(g * second_per_grid * position_id_per_seconds)``."""
    return [int(g * float(second_per_grid) * position_id_per_seconds) for g in range(grid_t)]


def interleaved_chunks(
    grid_t: int,
    tokens_per_grid: int,
    second_per_grid: float,
    n_audio: int,
    position_id_per_seconds: int = 25,
    seconds_per_chunk: int = 2,
) -> list[tuple[int, int]]:
    """``[(n_video_j, n_audio_j), ...]`` token counts of each chunk of an interleaved block."""
    ids_per_chunk = int(position_id_per_seconds * seconds_per_chunk)
    grid_chunks = chunk_lengths(grid_time_ids(grid_t, second_per_grid, position_id_per_seconds), ids_per_chunk)
    video_chunks = [n * tokens_per_grid for n in grid_chunks] if grid_t > 0 else []
    audio_chunks = chunk_lengths(list(range(n_audio)), ids_per_chunk) if n_audio > 0 else []
    n = max(len(video_chunks), len(audio_chunks))
    video_chunks += [0] * (n - len(video_chunks))
    audio_chunks += [0] * (n - len(audio_chunks))
    return list(zip(video_chunks, audio_chunks))


def av_block_ids(
    ids: SpecialIds,
    grid_t: int = 0,
    tokens_per_grid: int = 0,
    second_per_grid: float = 1.0,
    n_audio: int = 0,
    position_id_per_seconds: int = 25,
    seconds_per_chunk: int = 2,
) -> list[int]:
    """Token ids of one media block, markers included.

    * video with its audio track: the interleaved layout of the module doc;
    * video only (``n_audio == 0``): ``<|vision_bos|> V... <|vision_eos|>``;
    * audio only (``grid_t == 0``): ``<|audio_bos|> A... <|audio_eos|>``.
    """
    has_video, has_audio = grid_t > 0 and tokens_per_grid > 0, n_audio > 0
    if has_video and has_audio:
        body: list[int] = [ids.vision_bos, ids.audio_bos]
        for n_v, n_a in interleaved_chunks(
            grid_t, tokens_per_grid, second_per_grid, n_audio, position_id_per_seconds, seconds_per_chunk
        ):
            body += [ids.video] * n_v + [ids.audio] * n_a
        return body + [ids.audio_eos, ids.vision_eos]
    if has_video:
        return [ids.vision_bos] + [ids.video] * (grid_t * tokens_per_grid) + [ids.vision_eos]
    if has_audio:
        return [ids.audio_bos] + [ids.audio] * n_audio + [ids.audio_eos]
    raise ValueError("an AV block needs video (grid_t, tokens_per_grid > 0) or audio (n_audio > 0)")


def audio_tokens_for_frames(n_mel_frames: int) -> int:
    """Audio tokens the Qwen2.5-Omni audio encoder makes from ``n`` mel frames (100 per second):
    ``((n - 1) // 2 + 1 - 2) // 2 + 1`` (conv stride 2, then average-pool 2): 25 tokens per second."""
    return ((n_mel_frames - 1) // 2 + 1 - 2) // 2 + 1
