"""Fails loudly if the transformers internals the hook relies on change (names, signatures, return types)."""

from __future__ import annotations

import inspect

import torch
import transformers
from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni as hf

from fusion.model.thinker import CompressedThinker
from fusion.testing import random_inputs


def test_transformers_version_is_the_pinned_one():
    assert transformers.__version__.startswith("5.23."), (
        f"transformers {transformers.__version__}: the hook is written against 5.23.x; re-run this file's checks "
        "against the new modeling_qwen2_5_omni.py before moving the pin"
    )


def test_forward_mirrors_the_stock_signature():
    stock = list(inspect.signature(hf.Qwen2_5OmniThinkerForConditionalGeneration.forward).parameters)
    ours = list(inspect.signature(CompressedThinker.forward).parameters)
    # generate() inspects forward's signature: every stock parameter must be declared explicitly, in order
    assert ours[: len(stock) - 1] == stock[:-1] and stock[-1] == "kwargs" and ours[-1] == "kwargs"
    assert "position_ids" in ours and "logits_to_keep" in ours


def test_internal_entry_points_exist_with_expected_signatures():
    model_cls = hf.Qwen2_5OmniThinkerModel
    rope = list(inspect.signature(model_cls.get_rope_index).parameters)
    assert rope == ["self", "input_ids", "image_grid_thw", "video_grid_thw", "attention_mask", "use_audio_in_video",
                    "audio_seqlens", "second_per_grids"]
    assert list(inspect.signature(model_cls.get_audio_features).parameters)[:4] == [
        "self", "input_features", "feature_attention_mask", "audio_feature_lengths"]
    assert list(inspect.signature(model_cls.get_video_features).parameters)[:3] == [
        "self", "pixel_values_videos", "video_grid_thw"]
    layer = inspect.signature(hf.Qwen2_5OmniAudioEncoderLayer.forward).parameters
    assert list(layer)[:3] == ["self", "hidden_states", "cu_seqlens"]
    assert "_prepare_position_ids_for_generation" in vars(hf.Qwen2_5OmniThinkerForConditionalGeneration)


def test_module_tree_and_feature_types(tiny):
    model = tiny[0]
    m = model.model
    for name in ("visual", "audio_tower", "language_model"):
        assert hasattr(m, name), name
    attn = m.audio_tower.layers[-1].self_attn
    for name in ("q_proj", "k_proj", "scaling", "num_heads"):
        assert hasattr(attn, name), name
    assert hasattr(m.audio_tower.layers[-1], "self_attn_layer_norm")
    inputs = random_inputs(model, seconds=2)
    with torch.no_grad():
        video = m.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
        audio = m.get_audio_features(inputs["input_features"], inputs["feature_attention_mask"])
    assert isinstance(video.pooler_output, tuple)  # split per video
    assert audio.last_hidden_state.ndim == 2
