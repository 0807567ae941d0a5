"""DivPrune: max–min order on hand-placed points, per-group budgets and memory, and the thinker end to end."""

from __future__ import annotations

import math

import pytest
import torch

import fusion.pruners.divprune as divprune
from fusion.model.synthetic import synthetic_tokens
from fusion.pruners import METHODS
from fusion.pruners.divprune import cosine_distance, divprune_groups, greedy_maxmin
from fusion.testing import random_inputs

# Points on a circle (cosine distance = 1 - cos(angle difference), monotone in the difference up to 180 degrees):
# cluster A at 0, 5, 10 degrees, cluster B at 90, 97, one outlier at 200. By hand: the outlier's nearest neighbour
# is 103 degrees away (the others' are 5 or 7) -> picked first; then the farthest from it (10: 170 degrees); then
# 97 (min distance 87 vs 80 for 90, 10 and 5 for cluster A); then 0 (10 vs 7 and 5); then 90 (7 vs 5); then 5.
ANGLES = [0.0, 90.0, 5.0, 200.0, 10.0, 97.0]
ORDER = [3, 4, 5, 0, 1, 2]


def circle(angles, dim: int = 4, scales=None) -> torch.Tensor:
    """``(n, dim)`` points at ``angles`` (degrees) in the first two channels, with arbitrary norms."""
    rad = torch.tensor(angles, dtype=torch.float64) * math.pi / 180
    x = torch.zeros(len(angles), dim)
    x[:, 0], x[:, 1] = torch.cos(rad).float(), torch.sin(rad).float()
    if scales is not None:  # cosine distance ignores norms
        x = x * torch.tensor(scales)[:, None]
    return x


def test_cosine_distance_values():
    d = cosine_distance(circle([0.0, 90.0, 180.0, 60.0])[None])[0]
    torch.testing.assert_close(d[0], torch.tensor([0.0, 1.0, 2.0, 0.5]), atol=1e-6, rtol=0)


def test_max_min_order_on_placed_points():
    x = circle(ANGLES, scales=[1.0, 3.0, 0.2, 7.0, 1.5, 0.9])
    picks = greedy_maxmin(cosine_distance(x[None]), torch.ones(1, 6, dtype=torch.bool), torch.tensor([6]))
    assert picks[0].tolist() == ORDER


def test_groups_are_batched_padded_and_independent():
    """Two groups of different sizes at once == each alone; padding never gets picked; -1 after k picks."""
    x0, x1 = circle(ANGLES), circle([30.0, 31.0, 210.0])  # group 1: 210 first, then 30 (180 degrees away)
    padded = torch.zeros(2, 6, 4)
    padded[0], padded[1, :3] = x0, x1
    valid = torch.zeros(2, 6, dtype=torch.bool)
    valid[0], valid[1, :3] = True, True
    picks = greedy_maxmin(cosine_distance(padded), valid, torch.tensor([4, 2]))
    assert picks[0].tolist() == ORDER[:4]
    assert picks[1].tolist() == [2, 0, -1, -1]


def test_singleton_group_keeps_its_token():
    picks = greedy_maxmin(cosine_distance(circle([45.0])[None]), torch.ones(1, 1, dtype=torch.bool), torch.tensor([1]))
    assert picks.tolist() == [[0]]


def test_per_group_counts_and_rounding():
    """Groups of 5, 3 and 7 tokens at r = 0.3 keep ceil(1.5) + ceil(0.9) + ceil(2.1) = 2 + 1 + 3 = 6 >= ceil(4.5)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(15, 8, generator=g)
    group = torch.tensor([4] * 5 + [9] * 3 + [11] * 7)  # any integer ids
    keep = divprune_groups(x, group, 0.3)
    assert [int(keep[group == i].sum()) for i in (4, 9, 11)] == [2, 1, 3]
    assert int(keep.sum()) == 6 >= math.ceil(0.3 * 15)


def test_selection_inside_a_group_follows_the_placed_order():
    """Group 1 holds the placed points, shuffled among other groups' tokens; 4 of 6 = r 0.6 -> ceil(3.6) = 4."""
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(3, 4, generator=g), circle(ANGLES), torch.randn(2, 4, generator=g)])
    group = torch.tensor([0] * 3 + [1] * 6 + [2] * 2)
    keep = divprune_groups(x, group, 0.6)
    assert (keep[3:9].nonzero().flatten()).tolist() == sorted(ORDER[:4])


def test_memory_is_bounded_by_the_largest_group(monkeypatch):
    """30 groups of up to 40 tokens (N = 900): no distance matrix wider than 40, chunks under max_elements, and the
    chunked result equals the one-chunk result."""
    shapes = []

    def spy(x):
        shapes.append(tuple(x.shape))
        return cosine_distance(x)

    g = torch.Generator().manual_seed(2)
    sizes = [20 + (i * 8) % 21 for i in range(30)]  # 20..40
    group = torch.repeat_interleave(torch.arange(30), torch.tensor(sizes))
    x = torch.randn(len(group), 16, generator=g)
    full = divprune_groups(x, group, 0.25)
    monkeypatch.setattr(divprune, "cosine_distance", spy)
    chunked = divprune_groups(x, group, 0.25, max_elements=5 * 40 * 40)
    assert torch.equal(full, chunked)
    assert max(s[1] for s in shapes) == max(sizes) == 40
    assert all(s[0] * s[1] * s[2] <= 5 * 40 * 40 for s in shapes) and sum(s[0] for s in shapes) == 30


@pytest.mark.parametrize("budget", ["modality", "joint"])
def test_select_counts_per_group_on_the_interleaved_layout(tiny, budget):
    tokens = synthetic_tokens(tiny[0].config, grid_t=6, grid_hw=(8, 8), n_audio=150, seed=3)  # 6 s: 3 groups
    keep = METHODS.build("divprune", 0.3, budget=budget)(tokens).keep
    group = tokens.time_group
    for gi in range(3):
        pools = [tokens.av_mask] if budget == "joint" else [tokens.video_mask, tokens.audio_mask]
        for pool in pools:
            n = int((pool & (group == gi)).sum())
            assert int((keep & pool & (group == gi)).sum()) == math.ceil(0.3 * n - 1e-9)
    real = tokens.attention_mask.bool()
    assert bool(keep[real & ~tokens.av_mask].all())


def test_an_outlier_token_is_kept(tiny):
    """One video token of group 1 points opposite to everything else: it is the first pick of its group."""
    tokens = synthetic_tokens(tiny[0].config, grid_t=6, grid_hw=(8, 8), n_audio=150, seed=4)
    g = torch.Generator().manual_seed(4)
    base = torch.randn(tokens.embeds.shape[-1], generator=g)
    video = tokens.video_mask[0].nonzero().flatten()
    tokens.embeds[0, video] = base + 0.3 * torch.randn(len(video), base.shape[0], generator=g)
    outlier = video[(tokens.time_group[0, video] == 1).nonzero().flatten()[5]]
    tokens.embeds[0, outlier] = -base
    keep = METHODS.build("divprune", 0.1)(tokens).keep
    assert bool(keep[0, outlier])


# ---------------------------------------------------------------------------------------- through the thinker
def _kept_sets(out) -> list[list[int]]:
    return [out.source_index[b][out.attention_mask[b].bool()].tolist() for b in range(out.source_index.shape[0])]


@pytest.mark.parametrize("budget", ["modality", "joint"])
def test_thinker_batch_equals_each_sample_alone(with_method, budget):
    from fusion.testing import sample_alone

    model = with_method("divprune", 0.3, budget=budget)
    inputs = random_inputs(model, seconds=4, batch_size=2, seed=9, frame_size=112)
    with torch.no_grad():
        batched = _kept_sets(model(**inputs))
        tokens = model.last_tokens
        for b in range(2):
            pad = int((inputs["attention_mask"][b] == 0).sum())
            alone = _kept_sets(model(**sample_alone(inputs, b)))[0]
            assert [i - pad for i in batched[b]] == alone
            kept = torch.zeros_like(tokens.av_mask[b])
            kept[batched[b]] = True
            pools = [tokens.av_mask[b]] if budget == "joint" else [tokens.video_mask[b], tokens.audio_mask[b]]
            for gi in range(int(tokens.time_group[b].max()) + 1):
                for pool in pools:
                    n = int((pool & (tokens.time_group[b] == gi)).sum())
                    assert int((kept & pool & (tokens.time_group[b] == gi)).sum()) == math.ceil(0.3 * n - 1e-9)


@pytest.mark.parametrize("kind", [dict(audio=False), dict(video=False)], ids=["video only", "audio only"])
def test_thinker_single_modality(with_method, kind):
    model = with_method("divprune", 0.25)
    with torch.no_grad():
        model(**random_inputs(model, seconds=5, seed=2, frame_size=112, **kind))
    (row,) = model.last_stats.rows()
    tokens = model.last_tokens
    groups = tokens.time_group[0][tokens.av_mask[0]]
    expected = sum(math.ceil(0.25 * int((groups == gi).sum()) - 1e-9) for gi in range(int(groups.max()) + 1))
    assert row["total_after"] == expected and row["total_before"] > 0
    assert row["video_after" if kind.get("audio") is False else "audio_after"] == expected
