"""The block's batched per-group SDPA equals a naive per-group reference with an explicit softmax, its keys stay
inside the time window (no N_v x N_a attention over the clip), and a token only depends on its window."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import fusion.block.cross_attention as cross_attention
from fusion import METHODS
from fusion.testing import random_inputs


def _block(model, **params):
    params = {"dim": 32, "heads": 4, "scorer_hidden": 16, **params}
    block = METHODS.build("fusion", retention=0.3, **params).bind(model.config)
    with torch.no_grad():  # a non-zero gate, so the fused tokens carry the attention's output
        block.gate.weight.copy_(torch.linspace(-1.0, 1.0, block.gate.weight.numel()))
    return block


def _naive_attention(attn, queries, keys):
    """out_i = W_o concat_h sum_j softmax_j(q_i.k_j / sqrt(hd)) v_j, with a null key/value (logit 0, value 0)."""
    n_q, d = queries.shape
    heads, hd = attn.heads, d // attn.heads
    q = attn.q(queries).view(n_q, heads, hd)
    k, v = attn.kv(keys).view(keys.shape[0], 2, heads, hd).unbind(1)  # (n_k, heads, hd) each
    logits = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
    logits = torch.cat([torch.zeros(heads, n_q, 1), logits], dim=2)  # the null key first
    weights = torch.exp(logits - logits.max(dim=2, keepdim=True).values)
    weights = weights / weights.sum(dim=2, keepdim=True)  # explicit softmax over null + keys
    values = torch.cat([torch.zeros(1, heads, hd), v], dim=0)
    return attn.out(torch.einsum("hqk,khd->qhd", weights, values).reshape(n_q, d))


def _question_positions(tokens, b, turn_end):
    ids, av = tokens.input_ids[b].tolist(), tokens.av_mask[b]
    last_av = int(av.nonzero().max())
    markers = set(tokens.special_ids.markers)
    out = []
    for j in range(last_av + 1, len(ids)):
        if ids[j] == turn_end:
            break
        if tokens.attention_mask[b, j] and ids[j] not in markers:
            out.append(j)
    return out


def _naive_fuse(block, tokens):
    """The block's forward with plain loops over samples, layers and time groups (no packing, no windows)."""
    cfg, out = block.config, tokens.embeds.clone()
    for b in range(tokens.batch_size):
        av = tokens.av_mask[b].nonzero().flatten()
        group, video = tokens.time_group[b, av], tokens.video_mask[b, av]  # (N,)
        x = tokens.embeds[b, av]  # (N, D)
        h = block.down(block.norm_in(x))
        question = torch.zeros(0, cfg.dim)
        if cfg.instruction:
            rows = _question_positions(tokens, b, block.base.turn_end_token_id)
            question = block.question_in(tokens.embeds[b, rows])
        for layer in block.layers:
            n, nq = layer.norm(h), layer.norm(question)
            context = torch.zeros_like(h)
            for g in group.unique().tolist():
                window = (group - g).abs() <= cfg.neighbours
                for is_video, attn in ((True, layer.video_from_audio), (False, layer.audio_from_video)):
                    queries = (group == g) & (video == is_video)
                    if queries.any():
                        keys = torch.cat([n[window & (video != is_video)], nq])
                        context[queries] = _naive_attention(attn, n[queries], keys)
            h = h + context
            h = h + layer.mlp(layer.mlp_norm(h))
        out[b, av] = x + block.gate.weight * block.up(block.norm_out(h))
    return out


CASES = [
    ("own group", dict(neighbours=0)),
    ("neighbours 1", dict(neighbours=1)),
    ("neighbours 2, two layers", dict(neighbours=2, layers=2)),
    ("instruction, neighbours 1", dict(neighbours=1, instruction=True)),
]


@pytest.mark.parametrize("name,params", CASES, ids=[c[0] for c in CASES])
def test_batched_group_attention_equals_naive_reference(tiny, name, params):
    model = tiny[0]
    block = _block(model, **params)
    tokens = model.build_tokens(**random_inputs(model, seconds=5, batch_size=2, seed=8))  # left-padded batch
    with torch.no_grad():
        fast = block.fuse(tokens)
        slow = _naive_fuse(block, tokens)
    assert not torch.equal(fast, tokens.embeds)
    torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-5)


def test_video_only_and_audio_only_samples_get_a_zero_context(tiny):
    """No partner modality in the window: the null key takes all the attention, the context is W_o(0) = bias."""
    model = tiny[0]
    block = _block(model, neighbours=1)
    for kind in (dict(video=True, audio=False), dict(video=False, audio=True)):
        tokens = model.build_tokens(**random_inputs(model, seconds=4, seed=2, **kind))
        with torch.no_grad():
            fast = block.fuse(tokens)
            slow = _naive_fuse(block, tokens)
        assert torch.isfinite(fast).all()
        torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("neighbours", [0, 1])
def test_keys_stay_inside_the_time_window(tiny, monkeypatch, neighbours):
    """On a 30-s clip every SDPA call sees at most (2n + 1) * (largest group) + 1 keys, far fewer than the clip's
    audio tokens, and no call's score matrix approaches N_v x N_a."""
    model = tiny[0]
    block = _block(model, neighbours=neighbours)
    calls = []

    def recording_sdpa(q, k, v, mask):
        calls.append((tuple(q.shape), tuple(k.shape)))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    monkeypatch.setattr(cross_attention, "sdpa", recording_sdpa)
    tokens = model.build_tokens(**random_inputs(model, seconds=30, seed=0))
    with torch.no_grad():
        block.fuse(tokens)
    n_video, n_audio = int(tokens.n_video[0]), int(tokens.n_audio[0])
    groups = tokens.time_group[0][tokens.av_mask[0]]
    largest = max(int(((groups == g) & tokens.audio_mask[0][tokens.av_mask[0]]).sum()) for g in groups.unique())
    assert len(calls) == 2  # one call per direction for the whole batch
    for (G, _heads, n_q, _), (_, _, n_k, _) in calls:
        assert n_k <= (2 * neighbours + 1) * largest + 1
        assert n_k < n_audio / 4
        assert G * n_q * n_k < n_video * n_audio / 2


def test_a_token_only_depends_on_its_window(tiny):
    """One layer, n = 1: changing an audio token of group 0 changes fused tokens of groups 0..1 only."""
    model = tiny[0]
    block = _block(model, neighbours=1)
    tokens = model.build_tokens(**random_inputs(model, seconds=10, seed=5))
    first_audio = int((tokens.audio_mask[0] & (tokens.time_group[0] == 0)).nonzero()[0])
    embeds = tokens.embeds.clone()
    embeds[0, first_audio] += 3.0
    moved = dataclasses.replace(tokens, embeds=embeds)
    with torch.no_grad():
        changed = (block.fuse(tokens) != block.fuse(moved)).any(-1)[0]  # (L,)
    changed[first_audio] = False
    groups = tokens.time_group[0]
    assert bool(changed[(groups == 0) | (groups == 1)].any())
    assert not bool(changed[groups >= 2].any())
    assert not bool(changed[groups < 0].any())  # text untouched
