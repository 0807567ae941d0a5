"""The shipped toy backbone: loads by name, local video tokens, and a ToyWorld clip end to end
(decode -> processor -> compressed thinker -> answer)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import Qwen2_5OmniThinkerForConditionalGeneration

from fusion import load_model
from fusion.data.batching import collate
from fusion.data.mcq import LETTERS
from fusion.data.scoring import letter_token_ids, parse_letter, predict_from_output
from fusion.data.toyworld import generate_split
from fusion.errors import ModelLoadError
from fusion.model.loading import build_random_thinker
from fusion.model.toy import ASSET_DIR, load_toy, toy_config, toy_processor


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """8 fresh ToyWorld test clips (a seed the backbone never trained on), 2 per category."""
    return generate_split(tmp_path_factory.mktemp("toyclips"), "test", 8, seed=12345)


def test_shipped_backbone_is_small_and_loads_by_name():
    assert (ASSET_DIR / "model.safetensors").stat().st_size < 20 * 2**20
    model, processor = load_model("toy", method="uniform", retention=0.25)
    assert isinstance(model, Qwen2_5OmniThinkerForConditionalGeneration) and not model.training
    assert model.config.vision_config.window_size == 28 and model.config.vision_config.fullatt_block_indexes == []
    assert processor.tokenizer.convert_tokens_to_ids("lowest") != processor.tokenizer.unk_token_id


def test_missing_backbone_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="pretrain_toy.py"):
        load_toy(tmp_path)


def test_video_tokens_only_see_their_own_cell():
    """Changing the pixels of one 28x28 cell changes that cell's merged token and no other (vision locality)."""
    processor = toy_processor()
    model = build_random_thinker(toy_config(processor.tokenizer), seed=0).eval()
    frames = np.random.default_rng(0).integers(0, 255, (2, 56, 56, 3), dtype=np.uint8)
    changed = frames.copy()
    changed[:, 28:, :28] = 255 - changed[:, 28:, :28]  # cell (1, 0): merged token 2 in raster order
    with torch.no_grad():
        out = []
        for f in (frames, changed):
            patches, grid = processor.preprocess_video(f)
            out.append(model.model.get_video_features(patches, torch.tensor([grid])).pooler_output[0])  # (4, D)
    moved = (out[0] - out[1]).abs().amax(-1)
    assert moved[2] > 1e-3 and torch.all(moved[[0, 1, 3]] == 0)


def test_toyworld_clip_end_to_end(clips):
    """Decode -> processor -> thinker with uniform 25 % -> answer; generation and logits mode agree."""
    model, processor = load_model("toy", method="uniform", retention=0.25)
    batch = collate(clips, processor, mode="eval")
    inputs = batch.model_inputs()
    out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    stats = model.last_stats.rows()
    texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:])
    generated = [parse_letter(t, s.options) for t, s in zip(texts, clips)]
    with torch.no_grad():
        logits = model(**inputs)
    letters = letter_token_ids(processor.tokenizer, "ABCD")
    predicted = predict_from_output(logits, inputs["attention_mask"], letters, batch.n_options)
    assert generated == [LETTERS[i] for i in predicted.tolist()]
    assert all(t.split()[0] in "ABCD" for t in texts)  # the backbone answers with a letter
    for row in stats:  # 4 s at 2 fps, 56 px: 16 video and 100 audio tokens, a quarter kept
        assert (row["video_before"], row["audio_before"]) == (16, 100)
        assert (row["video_after"], row["audio_after"]) == (math.ceil(0.25 * 16), math.ceil(0.25 * 100))


def test_uncompressed_backbone_answers_fresh_clips(clips):
    """The pre-trained backbone reads the media: most fresh clips answered right without compression."""
    model, processor = load_model("toy")
    batch = collate(clips, processor, mode="eval")
    with torch.no_grad():
        out = model(**batch.model_inputs())
    predicted = predict_from_output(out, batch.inputs["attention_mask"], letter_token_ids(processor.tokenizer),
                                    batch.n_options)
    assert int((predicted == batch.answers).sum()) >= 6  # chance is 2 of 8
