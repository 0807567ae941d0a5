"""The attention teacher (``fusion/model/lm_attention.py``) and the ``attention_oracle`` method built on it.

The teacher's values are checked against HF's own eager attention probabilities (``output_attentions=True``), the
method's kept set against a top-k of those values, and a Qwen3-Omni thinker is refused with a typed error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion import METHODS, load_model
from fusion.errors import InputMismatchError, UnsupportedOptionError
from fusion.model.lm_attention import LM_ATTENTION, last_position_attention
from fusion.pruners.budget import keep_count
from fusion.pruners.ranking import topk_mask
from fusion.testing import random_inputs


@pytest.fixture(scope="module")
def eager():
    """The tiny random thinker with eager attention: HF then returns its attention probabilities."""
    return load_model("tiny-random", attn_implementation="eager")[0]

@pytest.mark.parametrize("side", ["right", "left"])
def test_the_teacher_equals_hfs_attention_from_the_last_real_token_summed_over_layers(eager, side):
    inputs = random_inputs(eager, seconds=4, batch_size=2, seed=2, padding_side=side)
    inputs["attention_mask"][0, (0 if side == "left" else -1)] = 0  # row 0 one token shorter: another last position
    with torch.no_grad():
        tokens = eager.build_tokens(**inputs)
        teacher = last_position_attention(eager, tokens)  # (B, L)
        out = eager.model.language_model(inputs_embeds=tokens.embeds, attention_mask=tokens.attention_mask,
                                         position_ids=tokens.position_ids, output_attentions=True)
    real = tokens.attention_mask.bool()
    last = torch.where(real, torch.arange(real.shape[1]), -1).amax(1)  # (B,)
    expect = sum(a[torch.arange(2), :, last].mean(1) for a in out.attentions)  # (B, L): mean over heads, sum layers
    torch.testing.assert_close(teacher, expect.float(), atol=1e-5, rtol=1e-4)
    assert torch.equal(teacher[~real], torch.zeros_like(teacher[~real]))
    torch.testing.assert_close(teacher.sum(1), torch.full((2,), float(len(out.attentions))))  # each layer's row: 1
    assert teacher[0].argmax() != teacher[1].argmax() or not torch.allclose(teacher[0], teacher[1])

@pytest.mark.parametrize("budget", ["joint", "modality"])
def test_the_oracle_keeps_the_top_tokens_of_the_teacher_in_the_models_forward(tiny, budget):
    model = tiny[0]
    inputs = random_inputs(model, seconds=5, batch_size=2, seed=3, padding_side="right")
    method = METHODS.build("attention_oracle", retention=0.2, budget=budget)
    with torch.no_grad():
        tokens = model.build_tokens(requires=method.requires, **inputs)
        keep = method(tokens).keep
        teacher = last_position_attention(model, tokens)
    assert torch.equal(tokens.extras[LM_ATTENTION], teacher)
    pools = [tokens.av_mask] if budget == "joint" else [tokens.video_mask, tokens.audio_mask]
    expect = tokens.attention_mask.bool() & ~tokens.av_mask
    for pool in pools:
        expect |= topk_mask(teacher, pool, keep_count(pool.sum(1), 0.2))
    assert torch.equal(keep, expect)
    model.set_compressor(method)
    try:
        with torch.no_grad():
            model(**inputs)
        stats = model.last_stats  # what the forward kept: the method's own selection, counted by the thinker
        assert torch.equal(stats.video_after, (keep & tokens.video_mask).sum(1))
        assert torch.equal(stats.audio_after, (keep & tokens.audio_mask).sum(1))
        assert torch.equal(sum(keep_count(pool.sum(1), 0.2) for pool in pools), stats.video_after + stats.audio_after)
    finally:
        model.set_compressor(METHODS.build("none"))

def test_a_qwen3_thinker_is_refused_with_a_typed_error(tiny3):
    model, processor = tiny3
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)  # 2 s at 2 fps
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "how many beeps ?"}]}]
    batch = processor(processor.apply_chat_template(conversation), videos=[frames],
                      audio=[rng.normal(0, 0.1, 32000).astype(np.float32)])
    model.set_compressor(METHODS.build("attention_oracle", retention=0.25))
    try:
        with torch.no_grad(), pytest.raises(UnsupportedOptionError, match="use it with a Qwen2.5-Omni thinker"):
            model(**batch)
    finally:
        model.set_compressor(METHODS.build("none"))


def test_tokens_built_without_the_teacher_are_a_typed_error(tiny):
    model = tiny[0]
    with torch.no_grad():
        tokens = model.build_tokens(**random_inputs(model, seconds=3, batch_size=1, seed=0))  # requires nothing
    with pytest.raises(InputMismatchError, match="run the method through CompressedThinker"):
        METHODS.build("attention_oracle", retention=0.25)(tokens)
