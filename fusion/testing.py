"""Random model inputs in the exact layout Qwen2.5-Omni's processor builds (for tests and benchmarks)."""

from __future__ import annotations

import math

import torch

from fusion.model.layout import SpecialIds, audio_tokens_for_frames, av_block_ids

MEL_FRAMES_PER_SECOND = 100
VIDEO_FPS = 2.0


def _text_pool(config) -> torch.Tensor:
    """Token ids safe to use as random text: every id but padding and the media placeholders/markers."""
    vocab = config.get_text_config().vocab_size
    ids = SpecialIds.from_config(config)
    banned = {ids.video, ids.audio, ids.image, *ids.markers, config.get_text_config().pad_token_id or 0}
    pool = torch.ones(vocab, dtype=torch.bool)
    pool[[i for i in banned if 0 <= i < vocab]] = False
    return pool.nonzero().flatten()


def random_inputs(
    model,
    seconds: float = 4,
    batch_size: int = 1,
    seed: int = 0,
    video: bool = True,
    audio: bool = True,
    frame_size: int | tuple[int, int] = 56,
    prompt_tokens: int = 8,
    question_tokens: int = 6,
    padding_side: str = "left",
) -> dict:
    """Inputs for ``model`` (any Qwen2.5-Omni thinker): ``seconds`` of video at 2 fps and/or its 16 kHz audio.

    Sample ``b`` lasts ``seconds + b`` seconds, so a batch has samples of different lengths, padded on
    ``padding_side`` (the processor pads left). Video is ``frame_size`` px square (56 px = 4 merged tokens per
    grid; 336 px = 144, the OmniZip setting); audio gives 25 tokens per second. With both, the video block
    holds the audio interleaved in 2-second chunks (``use_audio_in_video``). Pixel and mel values are
    standard-normal noise; text ids are random non-special ids.
    """
    if not (video or audio):
        raise ValueError("random_inputs needs video=True or audio=True")
    config = model.config
    vc = config.vision_config
    ids = SpecialIds.from_config(config)
    h, w = (frame_size, frame_size) if isinstance(frame_size, int) else frame_size
    grid_h, grid_w = h // vc.patch_size, w // vc.patch_size
    tokens_per_grid = grid_h * grid_w // vc.spatial_merge_size ** 2
    second_per_grid = vc.temporal_patch_size / VIDEO_FPS
    patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
    g = torch.Generator().manual_seed(seed)
    text = _text_pool(config)

    def words(n: int) -> list[int]:
        return text[torch.randint(len(text), (n,), generator=g)].tolist()

    sequences, pixels, grids, mels = [], [], [], []
    for b in range(batch_size):  # one iteration per sample
        secs = seconds + b
        grid_t = math.ceil(secs * VIDEO_FPS / vc.temporal_patch_size) if video else 0
        n_mel = int(secs * MEL_FRAMES_PER_SECOND) if audio else 0
        n_audio = audio_tokens_for_frames(n_mel) if audio else 0
        block = av_block_ids(ids, grid_t, tokens_per_grid if video else 0, second_per_grid, n_audio,
                             config.position_id_per_seconds, config.seconds_per_chunk)
        sequences.append(words(prompt_tokens) + block + words(question_tokens + b))
        if video:
            pixels.append(torch.randn(grid_t * grid_h * grid_w, patch_dim, generator=g))
            grids.append([grid_t, grid_h, grid_w])
        if audio:
            mels.append(torch.randn(vc_mels(config), n_mel, generator=g))

    width = max(len(s) for s in sequences)
    pad = config.get_text_config().pad_token_id or 0
    input_ids = torch.full((batch_size, width), pad, dtype=torch.long)
    attention_mask = torch.zeros(batch_size, width, dtype=torch.long)
    for b, seq in enumerate(sequences):
        sl = slice(width - len(seq), width) if padding_side == "left" else slice(0, len(seq))
        input_ids[b, sl] = torch.tensor(seq)
        attention_mask[b, sl] = 1
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "use_audio_in_video": video and audio}
    if video:
        out["pixel_values_videos"] = torch.cat(pixels)
        out["video_grid_thw"] = torch.tensor(grids, dtype=torch.long)
        out["video_second_per_grid"] = torch.full((batch_size,), second_per_grid)
    if audio:
        frames = max(m.shape[1] for m in mels)
        features = torch.zeros(batch_size, vc_mels(config), frames)
        feature_mask = torch.zeros(batch_size, frames, dtype=torch.long)
        for b, m in enumerate(mels):
            features[b, :, : m.shape[1]] = m
            feature_mask[b, : m.shape[1]] = 1
        out["input_features"] = features
        out["feature_attention_mask"] = feature_mask
    return out


def sample_alone(inputs: dict, b: int) -> dict:
    """Sample ``b`` of a :func:`random_inputs` (or processor) batch, alone and unpadded, with its own media rows."""
    real = inputs["attention_mask"][b].bool()
    out = {"input_ids": inputs["input_ids"][b:b + 1, real], "attention_mask": inputs["attention_mask"][b:b + 1, real],
           "use_audio_in_video": inputs.get("use_audio_in_video")}
    if "pixel_values_videos" in inputs:
        sizes = inputs["video_grid_thw"].prod(-1).tolist()
        start = sum(sizes[:b])
        out["pixel_values_videos"] = inputs["pixel_values_videos"][start:start + sizes[b]]
        out["video_grid_thw"] = inputs["video_grid_thw"][b:b + 1]
        out["video_second_per_grid"] = inputs["video_second_per_grid"][b:b + 1]
    if "input_features" in inputs:
        n = int(inputs["feature_attention_mask"][b].sum())
        out["input_features"] = inputs["input_features"][b:b + 1, :, :n]
        out["feature_attention_mask"] = inputs["feature_attention_mask"][b:b + 1, :n]
    return out


def vc_mels(config) -> int:
    """Mel bins of the thinker's audio encoder."""
    return config.audio_config.num_mel_bins
