"""The shipped ToyWorld-Long backbone: loads by name, video is the majority of the AV tokens of a long clip, and it
answers fresh 8-16 s clips it never trained on (uncompressed well, evidence-only at 10 % nearly as well, uniform 10 %
clearly worse)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Qwen2_5OmniThinkerForConditionalGeneration

from fusion import load_model
from fusion.data.batching import collate
from fusion.data.scoring import letter_token_ids, predict_from_output
from fusion.data.toyworld_long import generate_split
from fusion.model.toy import LONG_ASSET_DIR


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """16 fresh ToyWorld-Long clips of a seed the backbone never trained on (4 per category)."""
    return generate_split(tmp_path_factory.mktemp("longclips"), "test", 16, seed=4321)


def _correct(model, processor, clips) -> int:
    batch = collate(clips, processor, mode="eval")
    if hasattr(model.compressor, "set_batch"):  # the evidence oracle reads each clip's scene
        model.compressor.set_batch([c.extra["scene"] for c in clips], [c.category for c in clips])
    with torch.no_grad():
        out = model(**batch.model_inputs())
    predicted = predict_from_output(out, batch.inputs["attention_mask"], letter_token_ids(processor.tokenizer),
                                    batch.n_options)
    return int((predicted == batch.answers).sum())


def test_shipped_long_backbone_is_small_and_loads_by_name():
    assert (LONG_ASSET_DIR / "model.safetensors").stat().st_size < 20 * 2**20
    assert (LONG_ASSET_DIR / "pretrain_info.json").is_file()
    model, processor = load_model("toy_long", method="uniform", retention=0.25)
    assert isinstance(model, Qwen2_5OmniThinkerForConditionalGeneration) and not model.training
    assert model.config.vision_config.patch_size == 7


def test_long_clip_tokens_are_mostly_video(clips):
    """2 fps x 36 cells against 25 audio tokens per second: 59 % of the AV tokens are video, for every length."""
    model, processor = load_model("toy_long", method="uniform", retention=0.1)
    batch = collate(clips[:4], processor, mode="eval")
    with torch.no_grad():
        model(**batch.model_inputs())
    for row, clip in zip(model.last_stats.rows(), clips[:4]):
        seconds = clip.extra["seconds"]
        assert (row["video_before"], row["audio_before"]) == (36 * seconds, 25 * seconds)
        assert row["video_before"] / (row["video_before"] + row["audio_before"]) > 0.55
        assert row["video_after"] == math.ceil(0.1 * row["video_before"])


def test_uncompressed_long_backbone_answers_fresh_clips(clips):
    model, processor = load_model("toy_long")
    assert _correct(model, processor, clips) >= 13  # chance is ~5 of 16 (beep_order has 2 options, the rest 4)


def test_bad_compression_hurts_and_good_compression_is_possible(clips):
    """uniform at 10 % loses clearly more than keeping the scene's evidence tokens at the same joint budget."""
    uniform, processor = load_model("toy_long", method="uniform", retention=0.1)
    oracle, _ = load_model("toy_long", method="evidence_oracle", retention=0.1, budget="joint")
    assert _correct(oracle, processor, clips) >= _correct(uniform, processor, clips) + 3
