"""Our placeholder layout equals transformers' Qwen2.5-Omni processor's, and the per-token annotations are right."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers.models.qwen2_5_omni import processing_qwen2_5_omni as hf_proc

from fusion.model.annotate import annotate_tokens
from fusion.model.layout import SpecialIds, audio_tokens_for_frames, av_block_ids
from fusion.tokens import Modality

NAMES = {1: "<|VIDEO|>", 2: "<|AUDIO|>", 5: "<|audio_bos|>", 6: "<|audio_eos|>"}
IDS = SpecialIds(video=1, audio=2, image=3, vision_bos=4, vision_eos=7, audio_bos=5, audio_eos=6)


def _hf_block(grid_t: int, grid_hw: int, spg: float, n_audio: int) -> list[str]:
    """The string transformers' processor writes for a video with its audio, split into tokens."""
    stub = SimpleNamespace(video_processor=SimpleNamespace(merge_size=2), audio_bos_token="<|audio_bos|>",
                           audio_eos_token="<|audio_eos|>", video_token="<|VIDEO|>", audio_token="<|AUDIO|>")
    stub.get_chunked_index = lambda idx, n: hf_proc.Qwen2_5OmniProcessor.get_chunked_index(stub, idx, n)
    text = hf_proc.Qwen2_5OmniProcessor.replace_video_with_audio_token(
        stub, {"video_grid_thw": [np.array([grid_t, grid_hw, grid_hw])], "video_second_per_grid": [spg]}, 0,
        {"num_audio_tokens": [n_audio]}, 0, position_id_per_seconds=25, seconds_per_chunk=2.0)
    return text.replace(">", "> ").split()


@pytest.mark.parametrize("grid_t,spg,n_audio", [
    (4, 1.0, 100), (5, 1.0, 125), (3, 1.0, 150), (6, 1.0, 50), (4, 2.0, 200), (7, 1.5, 150), (8, 0.5, 50),
    (1, 1.0, 25), (60, 1.0, 1500),
])
def test_interleaved_layout_equals_transformers_processor(grid_t, spg, n_audio):
    ours = av_block_ids(IDS, grid_t=grid_t, tokens_per_grid=4, second_per_grid=spg, n_audio=n_audio)
    assert ours[0] == IDS.vision_bos and ours[-1] == IDS.vision_eos
    assert [NAMES[i] for i in ours[1:-1]] == _hf_block(grid_t, 4, spg, n_audio)


@pytest.mark.parametrize("frames", [1, 2, 3, 99, 100, 101, 400, 401, 3000, 30000])
def test_audio_token_count_matches_transformers(frames):
    assert audio_tokens_for_frames(frames) == int(hf_proc._get_feat_extract_output_lengths(frames))


def test_annotations_on_a_hand_built_layout(tiny):
    """4 s clip, grid (4, 4, 4): V x8, A x50, V x8, A x50 between markers, text around it."""
    model = tiny[0]
    cfg = model.config
    ids = SpecialIds.from_config(cfg)
    block = av_block_ids(ids, grid_t=4, tokens_per_grid=4, second_per_grid=1.0, n_audio=100)
    seq = torch.tensor([[20, 21] + block + [22, 23]])
    mask = torch.ones_like(seq)
    pos, _ = model.model.get_rope_index(seq, None, torch.tensor([[4, 4, 4]]), mask, True, torch.tensor([400]),
                                        torch.tensor([1.0]))
    tokens = annotate_tokens(torch.zeros(1, seq.shape[1], 4), seq, mask, pos, torch.tensor([[4, 4, 4]]), cfg)
    mod = tokens.modality[0]
    v, a = (mod == Modality.VIDEO).nonzero().flatten(), (mod == Modality.AUDIO).nonzero().flatten()
    assert v.tolist() == list(range(4, 12)) + list(range(62, 70))
    # video time ids: grids at 0, 25 | 50, 75 (25 ids per second, one grid per second)
    assert tokens.time_id[0, v].tolist() == [0] * 4 + [25] * 4 + [50] * 4 + [75] * 4
    assert tokens.time_id[0, a].tolist() == list(range(100))
    assert tokens.time_group[0, v].tolist() == [0] * 8 + [1] * 8
    assert tokens.time_group[0, a].tolist() == [0] * 50 + [1] * 50
    places = tokens.grid_place[0, v].tolist()
    assert places[:4] == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]] and places[-1] == [3, 1, 1]
    text = (mod == Modality.TEXT).nonzero().flatten()
    assert bool((tokens.time_id[0, text] == -1).all()) and bool((tokens.time_group[0, text] == -1).all())


def test_groups_are_dense_across_two_media_blocks(tiny):
    cfg = tiny[0].config
    ids = SpecialIds.from_config(cfg)
    a1 = av_block_ids(ids, n_audio=60)  # 2.4 s of audio: groups 0, 1
    a2 = av_block_ids(ids, n_audio=30)  # 1.2 s: group 2
    seq = torch.tensor([[20] + a1 + [21] + a2 + [22]])
    mask = torch.ones_like(seq)
    pos, _ = tiny[0].model.get_rope_index(seq, None, None, mask, False, torch.tensor([240, 120]), None)
    tokens = annotate_tokens(torch.zeros(1, seq.shape[1], 4), seq, mask, pos, None, cfg)
    groups = tokens.time_group[0][tokens.audio_mask[0]].tolist()
    assert groups == [0] * 50 + [1] * 10 + [2] * 30
    assert tokens.time_id[0][tokens.audio_mask[0]].tolist() == list(range(60)) + list(range(30))
