"""synthetic_tokens builds the same annotated layout as the thinker's build_tokens on processor-layout inputs."""

from __future__ import annotations

import pytest
import torch

from fusion.model.synthetic import synthetic_tokens
from fusion.testing import random_inputs

CASES = [dict(video=True, audio=True), dict(video=True, audio=False), dict(video=False, audio=True)]


@pytest.mark.parametrize("kind", CASES, ids=["video+audio", "video only", "audio only"])
def test_same_layout_as_the_thinker(tiny, kind):
    model = tiny[0]
    inputs = random_inputs(model, seconds=5, seed=0, frame_size=112, **kind)  # 5 s: 5 grids, 125 audio tokens
    with torch.no_grad():
        ref = model.build_tokens(**inputs)
    ours = synthetic_tokens(model.config, grid_t=5 if kind["video"] else 0, grid_hw=(8, 8),
                            n_audio=125 if kind["audio"] else 0, prompt_tokens=8, question_tokens=6)
    assert torch.equal(ours.modality, ref.modality)
    assert torch.equal(ours.position_ids, ref.position_ids)
    assert torch.equal(ours.time_id, ref.time_id) and torch.equal(ours.time_group, ref.time_group)
    assert torch.equal(ours.grid_place, ref.grid_place)
    assert ours.embeds.shape == ref.embeds.shape


def test_separate_blocks_same_layout_as_the_thinker(tiny):
    """``interleaved=False``: a video block then an audio block (no use_audio_in_video), as the thinker annotates it."""
    model = tiny[0]
    ours = synthetic_tokens(model.config, grid_t=5, grid_hw=(8, 8), n_audio=125, interleaved=False)
    video = random_inputs(model, seconds=5, seed=0, frame_size=112, video=True, audio=False)
    audio = random_inputs(model, seconds=5, seed=0, video=False, audio=True)
    media = {k: v for k, v in video.items() if k.startswith(("pixel", "video"))}
    media.update({k: v for k, v in audio.items() if k in ("input_features", "feature_attention_mask")})
    with torch.no_grad():
        ref = model.build_tokens(ours.input_ids, attention_mask=ours.attention_mask, **media)
    v, a = ours.video_mask[0].nonzero().flatten(), ours.audio_mask[0].nonzero().flatten()
    assert int(v.max()) < int(a.min()), "every video token comes before the audio block"
    assert torch.equal(ours.modality, ref.modality)
    assert torch.equal(ours.position_ids, ref.position_ids)
    assert torch.equal(ours.time_id, ref.time_id) and torch.equal(ours.time_group, ref.time_group)
    assert int(ours.time_id[0, a[0]]) == 0, "the audio block's time starts at 0"
