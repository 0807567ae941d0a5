"""Prompts, collate (eval / train labels, video-only clips) and the tensor cache (same batches as collate)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fusion.data.batching import IGNORE_INDEX, collate, labels_for
from fusion.data.cache import CachedSplit, build_cache
from fusion.data.mcq import MCQSample
from fusion.data.mp4 import write_clip
from fusion.data.prompts import QWEN_SYSTEM_PROMPT, conversation, question_text
from fusion.errors import ConfigError, DatasetError

rng = np.random.default_rng(0)


def _sample(tmp_path, name, seconds=2, audio=True, answer="B", question="how many beeps are heard ?"):
    frames = rng.integers(0, 255, (10 * seconds, 56, 56, 3), dtype=np.uint8)
    wave = rng.normal(0, 0.1, 16000 * seconds).astype(np.float32) if audio else None
    path = write_clip(tmp_path / f"{name}.mp4", frames, fps=10, audio=wave)
    return MCQSample(name, str(path), question, ["one", "two", "three", "four"], answer, "beep_count")


def test_toy_prompt_renders_in_qwen_layout(tiny, tmp_path):
    sample = MCQSample("q", "v.mp4", "how many beeps are heard ?", ["one", "two"], "A", "c")
    text = tiny[1].apply_chat_template(conversation(sample, "toy"))
    assert text == ("<|im_start|>system\nyou are a helpful assistant .<|im_end|>\n<|im_start|>user\n"
                    "<|vision_bos|><|VIDEO|><|vision_eos|>how many beeps are heard ? A. one B. two<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_worldsense_prompt_is_lmms_eval_text():
    sample = MCQSample("q", "v.mp4", "What is heard?", ["a dog", "a cat", "a car", "a bell"], "A", "c")
    assert question_text(sample, "worldsense") == (
        "Carefully watch this video and pay attention to every detail. Based on your observations, select the "
        "best option that accurately addresses the question.\nThese are the frames of a video and the "
        "corresponding audio. Select the best answer to the following multiple-choice question based on the "
        "video. Respond with only the letter (A, B, C, or D) of the correct option.\nWhat is heard?\n"
        "A. a dog\nB. a cat\nC. a car\nD. a bell\n")
    system, user = conversation(sample, "worldsense")
    assert system == {"role": "system", "content": [{"type": "text", "text": QWEN_SYSTEM_PROMPT}]}
    assert user["content"][0] == {"type": "video", "video": "v.mp4"}
    with pytest.raises(ConfigError, match="unknown"):
        question_text(sample, "fancy")


def test_labels_for_marks_the_last_real_tokens():
    ids = torch.tensor([[5, 6, 7, 8, 0], [0, 0, 5, 6, 7]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]])
    assert labels_for(ids, mask, [2, 1]).tolist() == [[-100, -100, 7, 8, -100], [-100, -100, -100, -100, 7]]


def test_train_and_eval_batches(tiny, tmp_path):
    processor = tiny[1]
    samples = [_sample(tmp_path, "a", 2, answer="C"), _sample(tmp_path, "b", 3, answer="A")]
    train = collate(samples, processor, mode="train")
    ids, labels = train.inputs["input_ids"], train.labels
    assert train.inputs["attention_mask"][:, 0].all()  # right padding
    tok = processor.tokenizer.convert_tokens_to_ids
    answers = [row[row != IGNORE_INDEX].tolist() for row in labels]
    assert answers == [[tok("C"), tok("<|im_end|>")], [tok("A"), tok("<|im_end|>")]]
    assert train.answers.tolist() == [2, 0] and train.n_options.tolist() == [4, 4]
    evaluation = collate(samples, processor, mode="eval")
    assert evaluation.labels is None and evaluation.inputs["attention_mask"][:, -1].all()  # left padding
    for b in range(2):
        prompt = evaluation.inputs["input_ids"][b][evaluation.inputs["attention_mask"][b].bool()]
        full = ids[b][train.inputs["attention_mask"][b].bool()]
        assert torch.equal(full[: len(prompt)], prompt) and len(full) == len(prompt) + 2
    assert prompt[-1] == tok("assistant")
    assert train.inputs["video_grid_thw"].tolist() == [[2, 4, 4], [3, 4, 4]]
    assert train.inputs["feature_attention_mask"].sum(1).tolist() == [200, 300]


def test_video_only_clip_in_a_batch(tiny, tmp_path):
    model, processor = tiny
    batch = collate([_sample(tmp_path, "s", audio=False), _sample(tmp_path, "t")], processor, mode="eval")
    assert batch.has_audio == [False, True] and batch.inputs["input_features"].shape[0] == 1
    with torch.no_grad():
        model(**batch.model_inputs())
    assert model.last_tokens.n_audio.tolist() == [0, 50]


def test_use_audio_false_drops_every_track(tiny, tmp_path):
    batch = collate([_sample(tmp_path, "u")], tiny[1], use_audio=False)
    assert batch.has_audio == [False] and "input_features" not in batch.inputs


def test_cache_rebuilds_the_collated_batches(tiny, tmp_path):
    processor = tiny[1]
    samples = [_sample(tmp_path, f"c{i}", seconds=2 + i % 2, audio=i != 2, answer="ABCD"[i]) for i in range(4)]
    path = build_cache(samples, processor, tmp_path / "cache.safetensors")
    split = CachedSplit(path, processor)
    assert len(split) == 4 and split.categories == ["beep_count"] * 4 and split.ids == ["c0", "c1", "c2", "c3"]
    for mode in ("train", "eval"):
        ref = collate(samples, processor, mode=mode)
        got = split.batch([0, 1, 2, 3], mode=mode)
        assert got["answer"].tolist() == [0, 1, 2, 3] and got["use_audio_in_video"]
        for key in ("input_ids", "attention_mask", "video_grid_thw", "feature_attention_mask"):
            assert torch.equal(got[key], ref.inputs[key]), (mode, key)
        torch.testing.assert_close(got["pixel_values_videos"], ref.inputs["pixel_values_videos"], atol=2e-3,
                                   rtol=1e-3)  # stored in float16
        # valid mel frames agree; the cache holds each clip's features computed alone, the batch pads the
        # waveforms first, which changes only the last valid frame of shorter clips (its STFT window sees padding)
        valid = got["feature_attention_mask"].bool().clone()
        lengths = valid.sum(1)
        valid[torch.arange(len(lengths)), lengths - 1] &= lengths == lengths.max()
        a, b = (x.permute(0, 2, 1)[valid] for x in (got["input_features"], ref.inputs["input_features"]))
        torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-3)
        if mode == "train":
            assert torch.equal(got["labels"], ref.labels)


def test_cache_decoded_by_a_pool_equals_the_cache_decoded_in_process(tiny, tmp_path, monkeypatch):
    """2 forked workers over shards of 2 samples write the same tensors, in the samples' order, as 1 process."""
    import fusion.data.cache as cache

    processor = tiny[1]
    samples = [_sample(tmp_path, f"p{i}", seconds=2 + i % 3, audio=i % 4 != 1, answer="ABCD"[i % 4]) for i in range(7)]
    monkeypatch.setattr(cache, "SHARD_SIZE", 2)  # 7 samples -> 4 shards: the pool path
    one = load_file(str(build_cache(samples, processor, tmp_path / "one.safetensors", workers=1)))
    pooled = load_file(str(build_cache(samples, processor, tmp_path / "two.safetensors", workers=2)))
    assert one.keys() == pooled.keys()
    for key in one:
        assert torch.equal(one[key], pooled[key]), key
    assert CachedSplit(tmp_path / "two.safetensors", processor).ids == [s.id for s in samples]
    assert one["feature_length"][1] == 0 and one["feature_length"][0] > 0  # the clip without audio is in its place


def test_cache_refuses_another_processor(tiny, tmp_path):
    path = build_cache([_sample(tmp_path, "x")], tiny[1], tmp_path / "c.safetensors")
    with pytest.raises(DatasetError, match="another processor or prompt style"):
        CachedSplit(path, tiny[1], style="worldsense")
    with pytest.raises(DatasetError, match="no tensor cache"):
        CachedSplit(tmp_path / "missing.safetensors")
