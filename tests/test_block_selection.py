"""The block's selection: straight-through top-k (golden values, gradient), ceil(r * N) joint / per modality,
sorted kept order, batch == alone, the scorer learning from the LM loss, per-modality standardised scores,
training-free scorers, config errors."""

from __future__ import annotations

import math

import pytest
import torch

from fusion import METHODS
from fusion.block.scorer import standardise_within
from fusion.block.straight_through import straight_through_topk
from fusion.errors import MethodConfigError
from fusion.pruners.budget import keep_count
from fusion.testing import random_inputs

RETENTIONS = [0.1, 0.25, 0.5, 1.0]


def _block(model, retention=0.3, **params):
    params = {"dim": 32, "heads": 4, "scorer_hidden": 16, **params}
    block = METHODS.build("fusion", retention=retention, **params).bind(model.config)
    with torch.no_grad():
        block.gate.weight.copy_(torch.linspace(-0.5, 0.5, block.gate.weight.numel()))
    return block


def test_straight_through_golden_keep_set_and_gradient():
    """Pool = positions 1..5 of 7 with scores [3, 1, 4, 1, 5]; r = 0.5 keeps ceil(2.5) = 3: positions 1, 3, 5.
    The gradient of sum(w * y) is the softmax Jacobian: dL/ds_i = p_i (w_i - sum_j p_j w_j) / tau."""
    scores = torch.tensor([[9.0, 3.0, 1.0, 4.0, 1.0, 5.0, 9.0]], requires_grad=True)
    pool = torch.tensor([[False, True, True, True, True, True, False]])
    tau = 2.0
    keep, gate = straight_through_topk(scores, [pool], retention=0.5, temperature=tau)
    assert keep[0].nonzero().flatten().tolist() == [1, 3, 5]
    assert gate.tolist() == [[1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0]]  # forward value: exactly y_hard (1 off pool)
    w = torch.tensor([[0.0, 0.5, -1.0, 2.0, 0.25, 1.0, 7.0]])
    (gate * w).sum().backward()
    p = torch.softmax(scores.detach()[pool] / tau, dim=0)
    expected = torch.zeros(1, 7)
    expected[pool] = p * (w[pool] - (p * w[pool]).sum()) / tau
    torch.testing.assert_close(scores.grad, expected, atol=1e-7, rtol=1e-6)


def test_straight_through_ties_go_to_the_earlier_position_and_empty_pools_are_finite():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    pool = torch.tensor([[True, True, True, True], [False, False, False, False]])
    keep, gate = straight_through_topk(scores, [pool], retention=0.5)
    assert keep.tolist() == [[True, True, False, False], [False, False, False, False]]
    gate.sum().backward()
    assert torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("budget", ["joint", "modality"])
@pytest.mark.parametrize("retention", RETENTIONS)
def test_kept_counts_sorted_order_and_text(tiny, budget, retention):
    model = tiny[0]
    model.set_compressor(_block(model, retention, budget=budget))
    try:
        inputs = random_inputs(model, seconds=5, batch_size=2, seed=6)
        with torch.no_grad():
            out = model(**inputs)
        tokens, rows = model.last_tokens, model.last_stats.rows()
    finally:
        model.set_compressor(METHODS.build("none"))
    for b, row in enumerate(rows):
        real = out.attention_mask[b].bool()
        src = out.source_index[b][real]
        assert torch.all(src[1:] > src[:-1])  # original order
        text = (tokens.attention_mask[b].bool() & ~tokens.av_mask[b]).nonzero().flatten()
        assert set(text.tolist()) <= set(src.tolist())
        if budget == "joint":
            assert row["total_after"] == math.ceil(retention * row["total_before"] - 1e-9)
        else:
            assert row["video_after"] == math.ceil(retention * row["video_before"] - 1e-9)
            assert row["audio_after"] == math.ceil(retention * row["audio_before"] - 1e-9)


def _alone(inputs: dict, b: int) -> dict:
    """Sample ``b`` of a random_inputs batch, unpadded."""
    real = inputs["attention_mask"][b].bool()
    sizes = inputs["video_grid_thw"].prod(-1).tolist()
    start, n = sum(sizes[:b]), int(inputs["feature_attention_mask"][b].sum())
    return {"input_ids": inputs["input_ids"][b:b + 1, real], "attention_mask": inputs["attention_mask"][b:b + 1, real],
            "pixel_values_videos": inputs["pixel_values_videos"][start:start + sizes[b]],
            "video_grid_thw": inputs["video_grid_thw"][b:b + 1],
            "video_second_per_grid": inputs["video_second_per_grid"][b:b + 1],
            "input_features": inputs["input_features"][b:b + 1, :, :n],
            "feature_attention_mask": inputs["feature_attention_mask"][b:b + 1, :n]}


@pytest.mark.parametrize("params", [{"neighbours": 1}, {"instruction": True, "budget": "modality"}])
def test_batch_equals_each_sample_alone(tiny, params):
    model = tiny[0]
    block = _block(model, 0.3, **params)
    inputs = random_inputs(model, seconds=4, batch_size=2, seed=9)
    with torch.no_grad():
        tokens = model.build_tokens(**inputs)
        batched = block(tokens)
        for b in range(2):
            real = inputs["attention_mask"][b].bool()
            alone_tokens = model.build_tokens(**_alone(inputs, b))
            alone = block(alone_tokens)
            assert torch.equal(batched.keep[b][real], alone.keep[0])
            torch.testing.assert_close(batched.embeds[b][real], alone.embeds[0], atol=1e-5, rtol=0)


def test_scorer_gets_a_gradient_through_the_compressed_thinker(tiny):
    """One backward of the LM loss (answer = the last tokens) reaches the scorer through the STE."""
    model = tiny[0]
    block = _block(model, 0.3).train()
    with torch.no_grad():
        block.gate.weight.zero_()  # as at initialisation
    model.set_compressor(block)
    try:
        inputs = random_inputs(model, seconds=4, batch_size=2, seed=2, padding_side="right")
        labels = torch.full_like(inputs["input_ids"], -100)
        for b, n in enumerate(inputs["attention_mask"].sum(1).tolist()):  # the last 3 tokens, after the media
            labels[b, n - 3:n] = inputs["input_ids"][b, n - 3:n]
        loss = model(**inputs, labels=labels).loss
        loss.backward()
    finally:
        model.set_compressor(METHODS.build("none"))
        model.zero_grad(set_to_none=True)  # the shared fixture is not frozen
    grads = {name: p.grad for name, p in block.scorer.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["mlp.0.weight"].abs().sum() > 0 and grads["mlp.2.weight"].abs().sum() > 0
    assert block.gate.weight.grad.abs().sum() > 0  # the fusion branch learns too, starting from the gate


def test_standardise_within_golden_values_and_degenerate_pools():
    """Row 0: pool a = [1, 3] -> mean 2, var 1 -> [-1, 1]; pool b = [10, 10, 16] -> mean 12, var 8 -> [-1/sqrt2,
    -1/sqrt2, sqrt2]; the text position stays 0. Row 1: a one-token pool gives 0 and an empty pool nothing."""
    scores = torch.tensor([[1.0, 10.0, 3.0, 10.0, 16.0, 7.0], [5.0, 2.0, 0.0, 0.0, 0.0, 0.0]])
    a = torch.tensor([[True, False, True, False, False, False], [True, False, False, False, False, False]])
    b = torch.tensor([[False, True, False, True, True, False], [False] * 6])
    z = standardise_within(scores, [a, b], eps=0.0)
    r = 2 ** -0.5
    torch.testing.assert_close(z, torch.tensor([[-1.0, -r, 1.0, -r, 2 ** 0.5, 0.0], [0.0] * 6]))


def test_standardised_scores_ignore_an_offset_between_the_modalities(tiny):
    """With ``standardise`` the joint top-k keeps the same tokens whatever constant is added to one modality's
    scores, and no gradient reaches that offset (z has mean 0 per modality); with raw scores a large offset hands
    the whole joint budget to that modality."""
    model = tiny[0]
    with torch.no_grad():
        tokens = model.build_tokens(**random_inputs(model, seconds=5, batch_size=2, seed=4))
    video = tokens.video_mask
    kept_video = {}
    for standardise in (True, False):
        block = _block(model, 0.25, standardise=standardise)
        raw = block.scorer.forward
        offset = torch.zeros((), requires_grad=True)

        def shifted(x, raw=raw, offset=offset):  # + offset on the video tokens (scores() calls the scorer on av)
            return raw(x) + offset * video[tokens.av_mask].to(x.dtype)

        block.scorer.forward = shifted
        with torch.no_grad():
            offset.fill_(0.0)
            base = block(tokens).keep
            offset.fill_(50.0)
            moved = block(tokens).keep
        selection = block(tokens)
        selection.embeds.sum().backward()
        kept_video[standardise] = int((moved & video).sum())
        if standardise:
            assert torch.equal(base, moved)
            assert abs(offset.grad.item()) < 1e-5
        else:
            k = keep_count(tokens.av_mask.sum(1), 0.25)  # (B,) the joint budget of each row
            assert (moved & video).sum(1).tolist() == torch.minimum(video.sum(1), k).tolist()
    assert kept_video[True] < kept_video[False]


@pytest.mark.parametrize("budget", ["modality", "joint"])
def test_training_free_scorer_chooses_the_tokens(tiny, budget):
    model = tiny[0]
    block = _block(model, 0.25, scorer="uniform", scorer_params={"budget": budget})
    assert block.scorer is None
    tokens = model.build_tokens(**random_inputs(model, seconds=5, batch_size=2, seed=3))
    with torch.no_grad():
        selection = block(tokens)
        reference = METHODS.build("uniform", retention=0.25, budget=budget)(tokens)
        fused = block.fuse(tokens)
    assert torch.equal(selection.keep, reference.keep)
    assert torch.equal(selection.embeds, fused)


def test_unfused_learned_scorer_scores_the_raw_tokens(tiny):
    model = tiny[0]
    block = METHODS.build("fusion", retention=0.3, fused=False, scorer_hidden=16).bind(model.config)
    assert not hasattr(block, "gate")
    tokens = model.build_tokens(**random_inputs(model, seconds=4, seed=1))
    selection = block(tokens)
    assert torch.equal(selection.embeds[selection.keep], tokens.embeds[selection.keep])
    k = math.ceil(0.3 * int(tokens.av_mask.sum()) - 1e-9)
    assert int((selection.keep & tokens.av_mask).sum()) == k


def test_the_registry_entry_works_without_a_backbone(tiny):
    """A benchmark iterating METHODS gets an untrained, seeded block sized to the tokens it sees."""
    model = tiny[0]
    tokens = model.build_tokens(**random_inputs(model, seconds=4, seed=1))
    first = METHODS.build("fusion", retention=0.2)(tokens)
    again = METHODS.build("fusion", retention=0.2)(tokens)
    assert torch.equal(first.keep, again.keep)
    assert int((first.keep & tokens.av_mask).sum()) == math.ceil(0.2 * int(tokens.av_mask.sum()) - 1e-9)


@pytest.mark.parametrize("params,needle", [
    ({"dim": 30, "heads": 4}, "heads"),
    ({"neighbours": -1}, "neighbours"),
    ({"budget": "both"}, "budget"),
    ({"scorer": "nope"}, "uniform"),
    ({"scorer_params": {"budget": "joint"}}, "scorer_params"),
    ({"width": 3}, "width"),
])
def test_bad_block_parameters_are_typed_errors(params, needle):
    with pytest.raises(MethodConfigError, match=needle):
        METHODS.build("fusion", retention=0.3, **params)
