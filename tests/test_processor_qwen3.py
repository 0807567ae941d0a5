"""The offline processor in Qwen3-Omni's layout (``family="qwen3"``): the block equals the string transformers'
``Qwen3OmniMoeProcessor`` writes, patches equal Qwen2-VL's at patch 16, audio counts equal the AuT encoder's, the
model's own MRoPE ids agree with the placeholder order, and a checkpoint's files select the family."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import (
    Qwen3OmniMoeProcessor,
    _get_feat_extract_output_lengths,
)

from fusion.data.processor import OmniProcessor
from fusion.data.processor_files import checkpoint_settings
from fusion.errors import ModelLoadError
from fusion.model.layout import SpecialIds
from fusion.model.layout_qwen3 import qwen3_audio_tokens, qwen3_av_block_ids

IDS = SpecialIds(video=1, audio=2, image=3, vision_bos=4, vision_eos=5, audio_bos=6, audio_eos=7)
CHARS = {1: "V", 2: "A", 6: "<", 7: ">", 4: "[", 5: "]"}


def _stock_block(grid_t: int, hw: tuple[int, int], spg: float, n_audio: int, pps: float) -> str:
    """What ``Qwen3OmniMoeProcessor.replace_video_with_audio_token`` writes (run on a stand-in ``self``)."""
    fake = SimpleNamespace(video_processor=SimpleNamespace(merge_size=2), audio_bos_token="<", audio_eos_token=">",
                           video_token="V", audio_token="A")
    video = {"video_grid_thw": torch.tensor([[grid_t, *hw]]), "video_second_per_grid": [spg]}
    audio = {"num_audio_tokens": [n_audio]}
    return Qwen3OmniMoeProcessor.replace_video_with_audio_token(fake, video, 0, audio, 0, position_id_per_seconds=pps)


@pytest.mark.parametrize("grid_t, hw, spg, n_audio, pps", [
    (4, (4, 4), 1.0, 52, 13.0),     # 2 fps: grids 13 ids apart, 4 tokens each
    (3, (4, 6), 2.0, 78, 13.0),     # 1 fps (the stock default), 6 tokens per grid
    (5, (2, 2), 0.4, 26, 13.0),     # 5 fps: fractional ids 5.2 g (5.2 sorts after audio 5, before audio 6)
    (2, (4, 4), 1.0, 3, 13.0),      # audio shorter than the video
    (6, (2, 2), 1.0, 100, 13.0),    # audio longer than the video
])
def test_block_equals_the_stock_processors_string(grid_t, hw, spg, n_audio, pps):
    per_grid = hw[0] * hw[1] // 4
    ours = qwen3_av_block_ids(IDS, grid_t, per_grid, spg, n_audio, pps)
    assert ours[0] == IDS.vision_bos and ours[-1] == IDS.vision_eos
    assert "".join(CHARS[i] for i in ours[1:-1]) == _stock_block(grid_t, hw, spg, n_audio, pps)


def test_audio_token_counts_equal_the_au_t_encoders():
    frames = np.arange(0, 3001)
    assert [qwen3_audio_tokens(int(n)) for n in frames] == _get_feat_extract_output_lengths(frames).tolist()
    assert qwen3_audio_tokens(400) == 52  # 4 s: 13 per second


def _conversation(question: str):
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]


def test_the_models_own_ids_agree_with_the_placeholder_order(tiny3):
    """Transformers' get_rope_index assigns ids in its own merge order; where our block puts a video placeholder it
    must hand out that video grid's id (g * 1 s * 13), where it puts audio the next audio id (0, 1, 2 ...)."""
    model, processor = tiny3
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)  # 4 s at 2 fps: 4 grids of 2x2 tokens
    wave = rng.normal(0, 0.1, 64000).astype(np.float32)  # 4 s: 52 audio tokens
    batch = processor(processor.apply_chat_template(_conversation("how many beeps ?")), videos=[frames], audio=[wave])
    assert batch["video_second_per_grid"].tolist() == [1.0] and batch["feature_attention_mask"].sum() == 400
    with torch.no_grad():
        model(**batch)
    tokens = model.last_tokens
    time = tokens.time_id[0]
    assert time[tokens.video_mask[0]].tolist() == [13 * g for g in range(4) for _ in range(4)]
    assert time[tokens.audio_mask[0]].tolist() == list(range(52))
    row = batch["input_ids"][0].tolist()
    assert row[row.index(processor.ids.vision_bos):][:8] == [processor.ids.vision_bos, processor.ids.audio_bos,
                                                             *[processor.ids.video] * 4, *[processor.ids.audio] * 2]


def test_save_and_load_keeps_the_family(tiny3, tmp_path):
    processor = tiny3[1]
    processor.save_pretrained(tmp_path)
    again = OmniProcessor.from_pretrained(tmp_path)
    assert (again.family, again.n_window, again.position_id_per_seconds) == ("qwen3", 50, 13)
    frames = np.random.default_rng(3).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    wave = np.random.default_rng(4).normal(0, 0.1, 32000).astype(np.float32)
    text = processor.apply_chat_template(_conversation("which colour first ?"))
    a, b = processor(text, videos=[frames], audio=[wave]), again(text, videos=[frames], audio=[wave])
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_qwen3_checkpoints_files_select_the_qwen3_layout(tiny3, tmp_path):
    """A checkpoint folder (no omni_processor.json): config.json's model_type and preprocessor_config.json decide."""
    processor = tiny3[1]
    processor.tokenizer.save_pretrained(tmp_path)
    processor.feature_extractor.save_pretrained(tmp_path)
    pre = json.loads((tmp_path / "preprocessor_config.json").read_text())
    pre.update(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
               processor_class="Qwen3OmniMoeProcessor")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(pre))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_omni_moe", "thinker_config": {
        "model_type": "qwen3_omni_moe_thinker", "audio_config": {"n_window": 40}}}))
    found = checkpoint_settings(tmp_path)
    assert (found.family, found.n_window, found.position_id_per_seconds) == ("qwen3", 40, 13.0)
    assert (found.video.patch_size, found.video.min_pixels, found.video.max_pixels) == (16, 128 * 1024, 768 * 1024)
    assert found.video.image_mean == (0.5, 0.5, 0.5)
    loaded = OmniProcessor.from_pretrained(tmp_path)
    assert (loaded.family, loaded.n_window, loaded.video.factor) == ("qwen3", 40, 32)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_omni"}))
    pre.pop("processor_class")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(pre))
    assert checkpoint_settings(tmp_path).family == "qwen2_5"


def test_a_tokenizer_without_the_media_tokens_is_refused(tiny3):
    tokenizer = tiny3[1].tokenizer
    tokenizer.video_token = "<|video_pad|>"  # a Qwen3 name this word-level tokenizer does not hold
    try:
        with pytest.raises(ModelLoadError, match="video_pad"):
            OmniProcessor(tokenizer, tiny3[1].feature_extractor, family="qwen3")
    finally:
        tokenizer.video_token = "<|VIDEO|>"
    with pytest.raises(ModelLoadError, match="family 'qwen4'"):
        OmniProcessor(tokenizer, tiny3[1].feature_extractor, family="qwen4")
