"""Training-free cross-modal scoring: scores equal a naive explicit-softmax reference per group (including one-modality
groups), the tokens built to receive the most cross-modal attention are kept, memory is per group, batches, and the
thinker end to end."""

from __future__ import annotations

import math

import pytest
import torch
from av_layouts import stack_tokens

import fusion.pruners.xattn as xattn
from fusion.errors import MethodConfigError
from fusion.model.synthetic import synthetic_tokens
from fusion.pruners import METHODS
from fusion.pruners.xattn import xattn_scores
from fusion.testing import random_inputs


@pytest.fixture(scope="module")
def config(tiny):
    return tiny[0].config


def naive_received(q: torch.Tensor, k: torch.Tensor, scale: float, exclude_self: bool) -> list[float]:
    """Attention received relative to uniform, one query row at a time with an explicit exp / sum softmax."""
    n_q, n_k = q.shape[0], k.shape[0]
    total, count = [0.0] * n_k, [0] * n_k
    for i in range(n_q):
        keys = [j for j in range(n_k) if not (exclude_self and j == i)]
        if not keys:
            continue
        logits = torch.stack([scale * torch.dot(q[i], k[j]) for j in keys])
        e = torch.exp(logits - logits.max())
        p = e / e.sum()
        for slot, j in enumerate(keys):
            total[j] += len(keys) * float(p[slot])
            count[j] += 1
    return [t / c if c else 1.0 for t, c in zip(total, count)]


def naive_scores(tokens, b: int, self_weight: float, normalize: bool, scale: float | None) -> dict[int, float]:
    """position -> score of every AV token of sample ``b``, group by group (module doc of fusion.pruners.xattn)."""
    x = tokens.embeds[b].double()
    if normalize:
        x = x / x.norm(dim=-1, keepdim=True)
    scale = 1 / math.sqrt(x.shape[-1]) if scale is None else scale
    out = {}
    for g in sorted(set(tokens.time_group[b][tokens.av_mask[b]].tolist())):
        in_group = tokens.time_group[b] == g
        v = (in_group & tokens.video_mask[b]).nonzero().flatten().tolist()
        a = (in_group & tokens.audio_mask[b]).nonzero().flatten().tolist()
        self_v = naive_received(x[v], x[v], scale, True)
        self_a = naive_received(x[a], x[a], scale, True)
        cross_v = naive_received(x[a], x[v], scale, False) if a else self_v
        cross_a = naive_received(x[v], x[a], scale, False) if v else self_a
        for positions, cross, own in ((v, cross_v, self_v), (a, cross_a, self_a)):
            for p, c, s in zip(positions, cross, own):
                out[p] = c + self_weight * s
    return out


LAYOUTS = [dict(grid_t=5, n_audio=100), dict(grid_t=2, n_audio=140), dict(grid_t=3, n_audio=0),
           dict(grid_t=0, n_audio=60)]
IDS = ["trailing video-only group", "trailing audio-only groups", "video only", "audio only"]


@pytest.mark.parametrize("layout", LAYOUTS, ids=IDS)
@pytest.mark.parametrize("self_weight, normalize, scale", [(0.0, False, None), (0.7, False, None), (0.0, True, 5.0),
                                                            (0.3, False, 0.05)])
def test_scores_equal_the_naive_reference(config, layout, self_weight, normalize, scale):
    tokens = synthetic_tokens(config, grid_hw=(4, 4), seed=1, **layout)  # 4 video tokens per grid, D = 64
    scores, _ = xattn_scores(tokens, self_weight, normalize, scale)
    ref = naive_scores(tokens, 0, self_weight, normalize, scale)
    positions = sorted(ref)
    assert positions == tokens.av_mask[0].nonzero().flatten().tolist()
    expected = torch.tensor([ref[p] for p in positions], dtype=torch.float64)
    torch.testing.assert_close(scores[0, positions].double(), expected, atol=1e-5, rtol=1e-5)
    assert bool(scores[0][~tokens.av_mask[0]].isnan().all())


def aligned_layout(config, seed: int = 2):
    """Two 2-s groups of 8 video + 50 audio tokens with small noise embeddings; in group g, 2 video tokens and 13 audio
    tokens are 8 * u_g (+ noise), u_g a random unit direction. With logits q.k / 8 those tokens give each other
    softmax weights ~e^8 times the rest: the built video tokens receive ~4x uniform attention from the audio (the
    others < 1), the built audio ~4x from the video."""
    g = torch.Generator().manual_seed(seed)
    tokens = synthetic_tokens(config, grid_t=4, grid_hw=(4, 4), n_audio=100, seed=seed)
    tokens.embeds[0] = 0.1 * torch.randn(tokens.embeds.shape[1:], generator=g)
    built = torch.zeros_like(tokens.av_mask[0])
    for group in (0, 1):
        u = torch.nn.functional.normalize(torch.randn(64, generator=g), dim=0)
        for pool, n, k in ((tokens.video_mask[0], 8, 2), (tokens.audio_mask[0], 50, 13)):
            where = (pool & (tokens.time_group[0] == group)).nonzero().flatten()
            chosen = where[torch.randperm(n, generator=g)[:k]]
            tokens.embeds[0, chosen] += 8 * u
            built[chosen] = True
    return tokens, built


@pytest.mark.parametrize("budget", ["modality", "joint"])
def test_tokens_built_to_receive_cross_attention_are_kept(config, budget):
    """r = 0.25 keeps 2 of 8 video and 13 of 50 audio per group (modality), or 15 of 58 (joint, same set)."""
    tokens, built = aligned_layout(config)
    keep = METHODS.build("xattn", 0.25, budget=budget)(tokens).keep
    assert torch.equal(keep[0] & tokens.av_mask[0], built)
    assert bool(keep[0][~tokens.av_mask[0]].all())


def test_groups_are_independent_of_each_other(config):
    """Changing group 1's embeddings leaves group 0's scores unchanged (attention never crosses a group)."""
    tokens, _ = aligned_layout(config)
    before, _ = xattn_scores(tokens)
    in_group1 = tokens.time_group[0] == 1
    tokens.embeds[0, in_group1] = torch.randn(int(in_group1.sum()), 64, generator=torch.Generator().manual_seed(9))
    after, _ = xattn_scores(tokens)
    group0 = tokens.time_group[0] == 0
    assert torch.equal(before[0, group0], after[0, group0])
    assert not torch.equal(before[0, in_group1], after[0, in_group1])


def test_memory_is_per_group_and_chunked(config, monkeypatch):
    """A 30-s clip at 16 video tokens per grid (15 groups of 32 video + 50 audio): no score call sees more than one
    group's width, chunks stay under max_elements, and the chunked scores equal the one-chunk scores."""
    tokens = synthetic_tokens(config, grid_t=30, grid_hw=(8, 8), n_audio=750, seed=3)
    full, _ = xattn_scores(tokens, 0.5)
    shapes = []
    original = xattn.group_scores

    def spy(video, audio, *args):
        shapes.append((video.shape[0], video.shape[1], audio.shape[1]))
        return original(video, audio, *args)

    monkeypatch.setattr(xattn, "group_scores", spy)
    budget = 4 * (32 + 50) ** 2
    chunked, _ = xattn_scores(tokens, 0.5, max_elements=budget)
    torch.testing.assert_close(chunked, full, equal_nan=True, atol=0, rtol=0)
    assert {(v, a) for _, v, a in shapes} == {(32, 50)}
    assert all(c * (v + a) ** 2 <= budget for c, v, a in shapes) and sum(c for c, _, _ in shapes) == 15


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("budget", ["modality", "joint"])
def test_batch_equals_each_sample_alone(config, padding_side, budget):
    samples = [synthetic_tokens(config, grid_t=t, grid_hw=(8, 8), n_audio=a, seed=s)
               for t, a, s in ((6, 150, 1), (0, 90, 2), (5, 100, 3), (3, 0, 4))]
    batch = stack_tokens(config, samples, padding_side)
    method = METHODS.build("xattn", 0.3, budget=budget, self_weight=0.2)
    keep = method(batch).keep
    for b, s in enumerate(samples):
        real = batch.attention_mask[b].bool()
        assert torch.equal(keep[b][real], method(s).keep[0])


def test_counts_per_group_and_parameters(config):
    tokens = synthetic_tokens(config, grid_t=5, grid_hw=(8, 8), n_audio=100, seed=5)  # group 2: video only
    for budget in ("modality", "joint"):
        keep = METHODS.build("xattn", 0.3, budget=budget)(tokens).keep[0]
        for g in range(3):
            in_group = tokens.time_group[0] == g
            pools = [tokens.av_mask[0]] if budget == "joint" else [tokens.video_mask[0], tokens.audio_mask[0]]
            for pool in pools:
                n = int((pool & in_group).sum())
                assert int((keep & pool & in_group).sum()) == math.ceil(0.3 * n - 1e-9)
    assert torch.equal(METHODS.build("xattn", 1.0)(tokens).keep, tokens.attention_mask.bool())
    for params in (dict(budget="both"), dict(self_weight=-1.0), dict(self_weight=float("nan")), dict(normalize=1),
                   dict(scale=0.0), dict(scale="auto")):
        with pytest.raises(MethodConfigError):
            METHODS.build("xattn", 0.3, **params)


# ------------------------------------------------------------------------------------------- through the thinker
@pytest.mark.parametrize("kind", [dict(), dict(audio=False), dict(video=False)], ids=["video+audio", "video only",
                                                                                       "audio only"])
def test_thinker_counts_and_batch_equals_alone(with_method, kind):
    from fusion.testing import sample_alone

    model = with_method("xattn", 0.3)
    inputs = random_inputs(model, seconds=5, batch_size=2, seed=6, frame_size=112, **kind)
    with torch.no_grad():
        out = model(**inputs)
        tokens = model.last_tokens
        for b in range(2):
            src = out.source_index[b][out.attention_mask[b].bool()]
            kept = torch.zeros_like(tokens.av_mask[b])
            kept[src] = True
            assert bool(kept[tokens.attention_mask[b].bool() & ~tokens.av_mask[b]].all())
            for g in range(int(tokens.time_group[b].max()) + 1):
                for pool in (tokens.video_mask[b], tokens.audio_mask[b]):
                    n = int((pool & (tokens.time_group[b] == g)).sum())
                    assert int((kept & pool & (tokens.time_group[b] == g)).sum()) == math.ceil(0.3 * n - 1e-9)
            pad = int((inputs["attention_mask"][b] == 0).sum())
            assert torch.equal(src - pad, model(**sample_alone(inputs, b)).source_index[0])


def test_thinker_identity_at_full_retention(with_method, stock):
    model = with_method("xattn", 1.0, budget="joint")
    inputs = random_inputs(model, seconds=4, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, stock(**inputs).logits, atol=1e-6, rtol=0)
