"""Invariants of the one hook: positions gathered not recomputed, order kept, text kept, ceil(r*N) per modality."""

from __future__ import annotations

import math

import pytest
import torch

from fusion.testing import random_inputs
from fusion.tokens import Modality

RETENTIONS = [0.1, 0.25, 0.5, 0.77, 1.0]


def _kept(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out, model.last_tokens


@pytest.mark.parametrize("method", ["uniform", "random"])
@pytest.mark.parametrize("retention", RETENTIONS)
def test_positions_order_text_and_counts(with_method, method, retention):
    model = with_method(method, retention)
    inputs = random_inputs(model, seconds=5, batch_size=2, seed=11)
    out, tokens = _kept(model, inputs)
    for b in range(2):
        real = out.attention_mask[b].bool()
        src = out.source_index[b][real]
        # sorted: original order
        assert torch.all(src[1:] > src[:-1])
        # text and specials never dropped
        text = (tokens.modality[b] == Modality.TEXT).nonzero().flatten()
        assert set(text.tolist()) <= set(src.tolist())
        # kept count per modality = ceil(r * N)
        for mod in (Modality.VIDEO, Modality.AUDIO):
            n = int((tokens.modality[b] == mod).sum())
            kept = int((tokens.modality[b][src] == mod).sum())
            assert kept == math.ceil(retention * n - 1e-9), (mod, n, kept)
    # the stats agree with the kept sets
    rows = model.last_stats.rows()
    assert [r["sequence_after"] for r in rows] == out.attention_mask.sum(1).tolist()


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_kept_position_ids_are_the_full_ids_gathered(with_method, padding_side):
    model = with_method("random", 0.3, seed=4)
    inputs = random_inputs(model, seconds=4, batch_size=2, seed=2)
    media = {k: v for k, v in inputs.items() if k not in ("input_ids",)}
    pruned = model.compress(inputs["input_ids"], padding_side=padding_side, **media)
    full = model.last_tokens.position_ids  # (3, B, L) computed on the unpruned sequence
    for b in range(2):
        real = pruned.attention_mask[b].bool()
        src = pruned.source_index[b][real]
        assert torch.equal(pruned.position_ids[:, b][:, real], full[:, b, src])
        assert torch.equal(pruned.input_ids[b][real], inputs["input_ids"][b, src])
    if padding_side == "left":  # generation layout: every row ends with a real token
        assert bool(pruned.attention_mask[:, -1].all())
    else:
        assert bool(pruned.attention_mask[:, 0].all())


@pytest.mark.parametrize("budget", ["modality", "joint"])
def test_joint_budget_counts_the_whole_av_pool(with_method, budget):
    model = with_method("uniform", 0.3, budget=budget)
    inputs = random_inputs(model, seconds=4, seed=1)
    _kept(model, inputs)
    (row,) = model.last_stats.rows()
    if budget == "joint":
        assert row["total_after"] == math.ceil(0.3 * row["total_before"] - 1e-9)
    else:
        assert row["video_after"] == math.ceil(0.3 * row["video_before"] - 1e-9)
        assert row["audio_after"] == math.ceil(0.3 * row["audio_before"] - 1e-9)


def test_uniform_golden_keep_set():
    """Uniform on a pool of 10 tokens at r=0.3 keeps ranks floor((i + 0.5) * 10 / 3) = 1, 5, 8."""
    from fusion.pruners.ranking import evenly_spaced_mask

    pool = torch.zeros(1, 14, dtype=torch.bool)
    pool[0, 2:12] = True
    kept = evenly_spaced_mask(pool, torch.tensor([3])).nonzero()[:, 1].tolist()
    assert kept == [2 + 1, 2 + 5, 2 + 8]


def test_random_is_seeded(with_method):
    inputs = random_inputs(with_method("none"), seconds=4, seed=0)
    kept = {}
    for seed in (7, 7, 8):
        model = with_method("random", 0.25, seed=seed)
        with torch.no_grad():
            kept.setdefault(seed, []).append(model(**inputs).source_index)
    assert torch.equal(kept[7][0], kept[7][1])
    assert not torch.equal(kept[7][0], kept[8][0])
