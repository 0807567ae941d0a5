"""FLOPs: DyCoke/FastV golden values by hand, FastV's per-layer counts from the hook, the block's cost on hand-made
group sizes, and group counts read off the real annotated layout."""

from __future__ import annotations

import pytest
import torch

from eval.flops import block_flops, group_counts, layer_decode, layer_prefill, llm_flops, window_sums
from eval.matrix import Setting
from eval.predict import sample_flops
from fusion.block.config import FusionConfig
from fusion.testing import random_inputs


def test_llm_flops_golden_values():
    # d = 4, m = 8, T = 2 layers, n = 10, R = 3 (by hand):
    # C(10) = 4*10*16 + 2*100*4 + 2*10*4*8 = 640 + 800 + 640 = 2080 per layer
    # decode per layer = 3*(64 + 64) + 2*4*(3*10 + 3*4/2) = 384 + 288 = 672
    prefill, decode = llm_flops(torch.tensor([[10, 10]]), d=4, m=8, steps=3)
    assert prefill.tolist() == [4160.0] and decode.tolist() == [1344.0]
    # DyCoke's closed form T R ((4d^2 + 2dm) + 2(dn + d(R+1)/2)) = 2*3*(128 + 2*(40 + 8)) = 1344
    assert 2 * 3 * ((4 * 16 + 2 * 4 * 8) + 2 * (4 * 10 + 4 * 4 / 2)) == 1344
    # FastV at K = 1 of T = 2: C(10) + C(6) = 2080 + (384 + 288 + 384) = 3136
    prefill, _ = llm_flops(torch.tensor([[10, 6], [6, 6]]), d=4, m=8, steps=3)
    assert prefill.tolist() == [3136.0, 2112.0]
    assert float(layer_prefill(6, 4, 8)) == 1056.0 and float(layer_decode(0, 4, 8, 1)) == 64 + 64 + 8


def test_fastv_flops_use_the_layers_token_counts(with_method, tiny):
    model = with_method("fastv", 0.25, k=1)
    with torch.no_grad():
        model(**random_inputs(model, seconds=4, batch_size=2, seed=1))
    stats = model.last_stats
    full, kept = stats.sequence_before.tolist(), stats.sequence_after.tolist()
    assert stats.layer_tokens.tolist() == [[f, k] for f, k in zip(full, kept)] and kept[0] < full[0]
    text = model.config.get_text_config()
    d, m = text.hidden_size, text.intermediate_size
    flops = sample_flops(model, Setting(name="fastv", key="fastv", method="fastv"), steps=5)
    c = lambda n: 4 * n * d * d + 2 * n * n * d + 2 * n * d * m  # noqa: E731
    assert flops["llm_prefill"] == [c(f) + c(k) for f, k in zip(full, kept)]
    decode = lambda n: 5 * (4 * d * d + 2 * d * m) + 2 * d * (5 * n + 15)  # noqa: E731
    assert flops["llm_decode"] == [decode(f) + decode(k) for f, k in zip(full, kept)]
    assert flops["block"] == [0.0, 0.0]


def test_the_attention_oracles_teacher_prefill_counts_as_its_selection_flops(with_method, tiny):
    model = with_method("attention_oracle", 0.25)
    with torch.no_grad():
        model(**random_inputs(model, seconds=4, batch_size=2, seed=1))
    stats = model.last_stats
    full, kept = stats.sequence_before.tolist(), stats.sequence_after.tolist()
    text = model.config.get_text_config()
    d, m, T = text.hidden_size, text.intermediate_size, text.num_hidden_layers
    flops = sample_flops(model, Setting(name="attention_oracle", key="attention_oracle", method="attention_oracle"),
                         steps=5)
    c = lambda n: 4 * n * d * d + 2 * n * n * d + 2 * n * d * m  # noqa: E731
    assert flops["llm_prefill"] == [T * c(k) for k in kept] and flops["block"] == [T * c(f) for f in full]
    assert all(k < f for k, f in zip(kept, full))


def test_block_flops_golden_values():
    cfg = FusionConfig(dim=2, heads=1, layers=1, neighbours=1, scorer_hidden=3)
    video, audio = torch.tensor([[2, 3], [4, 0]]), torch.tensor([[1, 2], [0, 0]])
    assert window_sums(video, 1).tolist() == [[5.0, 5.0], [4.0, 4.0]]
    # sample 0 (D = 4, d = 2, h = 3, N = 8, V = (5, 5), A = (3, 3)): projections 8*4*2*2 = 128; layer: queries 32 +
    # kv 2*4*(3+5+3+5) = 128 + attention 2*2*(2*3 + 1*5 + 3*3 + 2*5) = 120 + out 32 + mlp 8*8*4 = 256 -> 568;
    # scorer 8*(12 + 3) = 120; total 816. Sample 1 (one occupied group, no audio): 64 + (16 + 32 + 0 + 16 + 128) + 60
    total = block_flops(cfg, 4, video, audio, torch.tensor([0, 0]))
    assert total.tolist() == [816.0, 316.0]
    # instruction pre-fusion with Q = 2 question tokens on sample 0: + Q D d (16) + kv 2d^2 * 2Q * 2 groups (64)
    # + attention 2d * N * Q (64)
    with_q = block_flops(FusionConfig(dim=2, heads=1, layers=1, neighbours=1, scorer_hidden=3, instruction=True), 4,
                         video, audio, torch.tensor([2, 0]))
    assert with_q.tolist() == [960.0, 316.0]
    two_layers = block_flops(FusionConfig(dim=2, heads=1, layers=2, neighbours=1, scorer_hidden=3), 4, video, audio,
                             torch.tensor([0, 0]))
    assert two_layers.tolist() == [816.0 + 568, 316.0 + 192]
    no_fusion = block_flops(FusionConfig(dim=2, heads=1, fused=False, scorer_hidden=3), 4, video, audio,
                            torch.tensor([0, 0]))
    assert no_fusion.tolist() == [120.0, 60.0]


def test_group_counts_match_the_annotated_layout(tiny):
    model, _ = tiny
    with torch.no_grad():
        tokens = model.build_tokens(**random_inputs(model, seconds=5, batch_size=2, seed=0))
    video, audio, question = group_counts(tokens)
    for b in range(2):  # reference: count token by token
        for g in range(video.shape[1]):
            in_group = tokens.time_group[b] == g
            assert int(video[b, g]) == int((in_group & tokens.video_mask[b]).sum())
            assert int(audio[b, g]) == int((in_group & tokens.audio_mask[b]).sum())
    assert video.sum(1).tolist() == tokens.n_video.tolist() and audio.sum(1).tolist() == tokens.n_audio.tolist()
    assert video.shape[1] == 3  # 5 s -> groups 0-2


@pytest.mark.parametrize("steps", [1, 100])
def test_decode_term_grows_with_the_prefix(steps):
    _, dec_short = llm_flops(torch.tensor([[5, 5]]), 8, 16, steps)
    _, dec_long = llm_flops(torch.tensor([[50, 50]]), 8, 16, steps)
    assert float(dec_long - dec_short) == 2 * 2 * 8 * steps * 45  # T * 2d * R * (n_long - n_short)
