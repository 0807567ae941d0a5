"""The encoders' windowed attention in one SDPA call equals transformers' per-window loop, values and gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fusion.errors import InputMismatchError
from fusion.model.loading import build_random_thinker
from fusion.model.packed_attention import PACKED_SDPA, packed_window_attention, use_packed_encoder_attention
from fusion.model.toy import toy_config, toy_processor
from fusion.testing import random_inputs


class _Module(torch.nn.Module):
    pass


def test_packed_attention_equals_one_call_per_window():
    """Uneven windows and an empty one: each window's softmax(q k^T * s) v, values and gradients."""
    torch.manual_seed(0)
    cu = torch.tensor([0, 3, 3, 10, 12, 20])  # lengths 3, 0, 7, 2, 8
    q, k, v = (torch.randn(1, 2, 20, 8, requires_grad=True) for _ in range(3))
    out, _ = packed_window_attention(_Module(), q, k, v, scaling=0.3, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    assert out.shape == (1, 20, 2, 8)
    reference = torch.cat([
        F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], scale=0.3).transpose(1, 2)
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()) if b > a
    ], dim=1)
    torch.testing.assert_close(out, reference)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    reference_grads = torch.autograd.grad(reference.square().sum(), (q, k, v))
    for got, want in zip(grads, reference_grads):
        torch.testing.assert_close(got, want)
    # a token never sees another window: changing window 3's keys leaves window 0's outputs alone
    k2 = k.detach().clone()
    k2[:, :, 10:12] += 3.0 * torch.randn(1, 2, 2, 8)
    out2, _ = packed_window_attention(_Module(), q, k2, v, scaling=0.3, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    assert torch.equal(out2[:, :10], out[:, :10]) and not torch.allclose(out2[:, 10:12], out[:, 10:12])


def test_without_windows_it_refuses_with_a_typed_error():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(InputMismatchError, match="sdpa"):
        packed_window_attention(_Module(), q, q, q, cu_seq_lens_q=None)


def _attn(tower) -> str:
    return tower.blocks[0].attn.config._attn_implementation if hasattr(tower, "blocks") else \
        tower.layers[0].self_attn.config._attn_implementation


def _pair(config):
    """A thinker whose encoders run packed and a copy on transformers' per-window sdpa loop."""
    packed = build_random_thinker(config, seed=0).train()  # CompressedThinker: packed encoders on sdpa
    loop = copy.deepcopy(packed)
    for tower in (loop.model.visual, loop.model.audio_tower):  # the private config, shared by the tower's modules
        tower.config._attn_implementation = "sdpa"
    use_packed_encoder_attention(packed)  # again: a no-op on towers already packed
    assert (_attn(packed.model.visual), _attn(packed.model.audio_tower)) == (PACKED_SDPA,) * 2
    assert (_attn(loop.model.visual), _attn(loop.model.audio_tower)) == ("sdpa",) * 2
    return packed, loop


@pytest.mark.parametrize("which", ["tiny", "toy"])
def test_encoders_match_the_per_window_loop(tiny, which):
    """tiny: 112-px windows cut unevenly by a 196 x 140 frame, a full-attention block, a 5-s clip (audio chunks
    of 200/200/100 mel frames); toy: 28-px windows of 4 patches, no full-attention block."""
    config = copy.deepcopy(tiny[0].config) if which == "tiny" else toy_config(toy_processor().tokenizer)
    packed, loop = _pair(config)
    inputs = random_inputs(packed, seconds=5, frame_size=(196, 140) if which == "tiny" else 56, seed=3)
    outputs = []
    for model in (packed, loop):
        video = torch.cat(model.model.get_video_features(inputs["pixel_values_videos"],
                                                          inputs["video_grid_thw"]).pooler_output)
        audio = model.model.get_audio_features(inputs["input_features"],
                                               feature_attention_mask=inputs["feature_attention_mask"]).pooler_output
        audio = torch.cat(list(audio)) if isinstance(audio, (list, tuple)) else audio
        (video.square().sum() + audio.square().sum()).backward()
        outputs.append((video.detach(), audio.detach()))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
    grads = {n: p.grad for n, p in loop.named_parameters() if p.grad is not None}
    assert any(n.startswith("model.visual") for n in grads) and any(n.startswith("model.audio_tower") for n in grads)
    for name, param in packed.named_parameters():
        if name in grads:
            torch.testing.assert_close(param.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_thinker_uses_it_on_sdpa_and_keeps_eager_and_its_config_stays_sdpa():
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from fusion import load_model

    model, _ = load_model("toy")
    assert (_attn(model.model.visual), _attn(model.model.audio_tower)) == (PACKED_SDPA,) * 2
    assert model.config.vision_config._attn_implementation == "sdpa"  # private copies: the config is untouched
    rebuilt = Qwen2_5OmniThinkerForConditionalGeneration(model.config)  # would look for a flash kernel otherwise
    assert _attn(rebuilt.model.visual) == "sdpa"
    eager, _ = load_model("toy", attn_implementation="eager")
    assert (_attn(eager.model.visual), _attn(eager.model.audio_tower)) == ("eager",) * 2
