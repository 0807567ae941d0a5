"""The offline processor: Qwen2-VL patches, Whisper features, the interleaved layout, a model forward, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from fusion.data.processor import OmniProcessor
from fusion.errors import InputMismatchError
from fusion.model.layout import SpecialIds, av_block_ids
from fusion.tokens import Modality


@pytest.mark.parametrize("family, size", [("tiny", (56, 84)), ("tiny", (60, 90)), ("tiny", (100, 150)),
                                          ("tiny3", (64, 96)), ("tiny3", (70, 100)), ("tiny3", (130, 150))])
def test_patches_equal_transformers_qwen2vl_processor(request, family, size):
    """A still frame repeated over one temporal patch gives exactly the image processor's patches (Qwen2.5-Omni:
    patch 14; Qwen3-Omni: patch 16)."""
    processor = request.getfixturevalue(family)[1]
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    v = processor.video
    ref = Qwen2VLImageProcessorPil(patch_size=v.patch_size, min_pixels=v.min_pixels, max_pixels=v.max_pixels)(
        images=[image], return_tensors="pt")
    ours, grid = processor.preprocess_video(np.stack([image, image]))
    assert list(grid) == ref["image_grid_thw"][0].tolist()
    torch.testing.assert_close(ours, ref["pixel_values"], atol=0, rtol=0)


def _conversation(question: str):
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]


def test_video_with_audio_track_end_to_end(tiny):
    model, processor = tiny
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (8, 56, 56, 3), dtype=np.uint8)  # 4 s at 2 fps
    wave = rng.normal(0, 0.1, 64000).astype(np.float32)  # 4 s at 16 kHz
    text = processor.apply_chat_template(_conversation("how many beeps ?"))
    batch = processor(text, videos=[frames], audio=[wave])
    ids = SpecialIds.from_config(model.config)
    block = av_block_ids(ids, grid_t=4, tokens_per_grid=4, second_per_grid=1.0, n_audio=100)
    seq = batch["input_ids"][0].tolist()
    start = seq.index(ids.vision_bos)
    assert seq[start:start + len(block)] == block
    assert batch["feature_attention_mask"].sum().item() == 400
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape[1] == batch["input_ids"].shape[1]
    assert model.last_stats.rows()[0]["video_before"] == 16 and model.last_stats.rows()[0]["audio_before"] == 100


def test_clip_without_audio_track_is_video_only(tiny):
    model, processor = tiny
    frames = np.zeros((4, 56, 56, 3), dtype=np.uint8)
    batch = processor(processor.apply_chat_template(_conversation("what colour ?")), videos=[frames], audio=[None])
    assert "input_features" not in batch
    with torch.no_grad():
        model(**batch)
    tokens = model.last_tokens
    assert int(tokens.n_audio[0]) == 0 and int(tokens.n_video[0]) == 8


def test_batch_is_left_padded_and_mixed(tiny):
    processor = tiny[1]
    rng = np.random.default_rng(2)
    texts = [processor.apply_chat_template(_conversation(q)) for q in ("how many beeps ?", "what colour ?")]
    videos = [rng.integers(0, 256, (n, 56, 56, 3), dtype=np.uint8) for n in (8, 4)]
    waves = [rng.normal(0, 0.1, 64000).astype(np.float32), None]
    batch = processor(texts, videos=videos, audio=waves)
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][:, -1].all()
    assert batch["video_grid_thw"].tolist() == [[4, 4, 4], [2, 4, 4]]
    assert batch["input_features"].shape[0] == 1


def test_placeholder_without_media_is_an_error(tiny):
    processor = tiny[1]
    with pytest.raises(InputMismatchError, match="no frames"):
        processor(processor.apply_chat_template(_conversation("what ?")))


def test_save_and_load_round_trip(tiny, tmp_path):
    processor = tiny[1]
    processor.save_pretrained(tmp_path)
    again = OmniProcessor.from_pretrained(tmp_path)
    frames = np.random.default_rng(3).integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
    text = processor.apply_chat_template(_conversation("which colour first ?"))
    a, b = processor(text, videos=[frames]), again(text, videos=[frames])
    assert again.video == processor.video and again.default_system == processor.default_system
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_decoded_text_round_trip(tiny):
    processor = tiny[1]
    ids = processor.tokenizer("the answer is B .")["input_ids"]
    assert processor.batch_decode([ids])[0] == "the answer is B ."
    assert Modality.TEXT == 0
