"""Coverage-aware selection and its relaxation: the allocation sums exactly to the budget for every layout, the
soft top-k keeps the budget and has the implicit gradient, the relaxed loss reaches every pool token (dropped ones
included) and every cell's allocation logit, the soft key bias equals dropping, config errors."""

from __future__ import annotations

import math

import pytest
import torch

from fusion import METHODS
from fusion.block.allocation import (
    CellLayout,
    continuous_allocation,
    integer_allocation,
    marginal_keep,
    topk_within_cells,
)
from fusion.block.relaxed import key_bias, sigmoid_budget
from fusion.errors import MethodConfigError
from fusion.model.soft_mask import soft_attention_mask
from fusion.testing import random_inputs
from train.run import annealed_temperature

LORA_FREE = {"dim": 32, "heads": 4, "scorer_hidden": 16}


def _block(model, retention=0.3, **params):
    return METHODS.build("fusion", retention=retention, **{**LORA_FREE, **params}).bind(model.config)


def _random_cells(gen: torch.Generator, retention: float, joint: bool) -> CellLayout:
    """A layout of 1-4 samples with 0-6 groups each, cell sizes 0-30 (absent modalities included)."""
    n_samples = int(torch.randint(1, 5, (), generator=gen))
    groups = torch.randint(0, 7, (n_samples,), generator=gen)
    group_sample = torch.repeat_interleave(torch.arange(n_samples), groups)  # (G,)
    G = int(groups.sum())
    size = torch.randint(0, 31, (2 * G,), generator=gen)
    is_audio = torch.arange(2 * G) % 2 == 1
    sample = group_sample[torch.arange(2 * G) // 2]
    pool = sample if joint else 2 * sample + is_audio.long()
    n_pools = n_samples if joint else 2 * n_samples
    pool_size = torch.zeros(n_pools, dtype=torch.long).index_add(0, pool, size)
    budget = torch.ceil(pool_size.double() * retention - 1e-9).long()
    token_cell = torch.repeat_interleave(torch.arange(2 * G), size)
    return CellLayout(token_cell, size, pool, is_audio, pool_size, budget)


def _per_pool(cells: CellLayout, values: torch.Tensor) -> torch.Tensor:
    return torch.zeros(cells.n_pools, dtype=values.dtype).index_add(0, cells.cell_pool, values)


@pytest.mark.parametrize("joint", [True, False])
def test_integer_allocation_sums_exactly_to_the_budget_for_every_layout(joint):
    gen = torch.Generator().manual_seed(0)
    for trial in range(300):
        retention = [0.01, 0.1, 0.25, 0.33, 0.5, 0.9, 1.0][trial % 7]
        cells = _random_cells(gen, retention, joint)
        logits = 3 * torch.randn(cells.n_cells, generator=gen)
        kappa = continuous_allocation(logits, cells)
        torch.testing.assert_close(_per_pool(cells, kappa.double()), cells.pool_budget.double(), atol=1e-3, rtol=0)
        k = integer_allocation(kappa, cells)
        assert torch.equal(_per_pool(cells, k), cells.pool_budget), (trial, k, cells.pool_budget)
        assert bool((k >= 0).all()) and bool((k <= cells.cell_size).all())
        assert bool(((kappa - k.float()).abs() < 1 + 1e-4).all())  # rounding moves each cell by less than one
        keep = topk_within_cells(torch.randn(cells.token_cell.numel(), generator=gen), cells.token_cell, k)
        assert torch.equal(torch.bincount(cells.token_cell[keep], minlength=cells.n_cells), k)


def test_float_noise_does_not_break_a_tie_between_equal_remainders():
    """Cells of one pool at the same rho: remainders 0.2857 each in exact arithmetic. The noise the batch adds
    (measured: 39.285706 batched vs 39.285717 alone) must not decide which cell gets the pool's last token."""
    cells = CellLayout(token_cell=torch.zeros(0, dtype=torch.long), cell_size=torch.tensor([4, 50, 50, 22]),
                       cell_pool=torch.zeros(4, dtype=torch.long),
                       cell_is_audio=torch.tensor([False, True, False, True]),
                       pool_size=torch.tensor([126]), pool_budget=torch.tensor([99]))
    batched = integer_allocation(torch.tensor([3.1428566, 39.285706, 39.285706, 17.285711]), cells)
    alone = integer_allocation(torch.tensor([3.1428573, 39.285717, 39.285717, 17.285715]), cells)
    assert batched.tolist() == alone.tolist() == [3, 40, 39, 17]  # the tie goes to the lower cell both times


def test_an_untrained_head_spreads_the_budget_evenly():
    gen = torch.Generator().manual_seed(1)
    cells = _random_cells(gen, 0.25, joint=True)
    kappa = continuous_allocation(torch.zeros(cells.n_cells), cells)
    torch.testing.assert_close(kappa, 0.25 * cells.cell_size.float() * (cells.pool_budget / (0.25 * cells.pool_size))
                               [cells.cell_pool].float(), atol=1e-4, rtol=0)


def test_topk_within_cells_golden():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.5, 2.0, -1.0, 0.0])
    cell = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    keep = topk_within_cells(scores, cell, torch.tensor([2, 1, 0]))
    assert keep.tolist() == [False, True, True, False, True, False, False]


def test_sigmoid_budget_keeps_the_budget_and_its_gradient_is_the_implicit_one():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(12, generator=gen, dtype=torch.float64)
    index = torch.tensor([0] * 5 + [1] * 7)
    w = torch.rand(12, generator=gen, dtype=torch.float64) + 0.5
    target = torch.tensor([1.3, 2.2], dtype=torch.float64)
    y = sigmoid_budget(z, index, 2, target, weight=w, temperature=0.7)
    torch.testing.assert_close(torch.zeros(2, dtype=torch.float64).index_add(0, index, w * y), target)
    z.requires_grad_(True)
    target.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, t: sigmoid_budget(a, index, 2, t, weight=w, temperature=0.7),
                                    (z, target), eps=1e-6, atol=1e-5)
    # a small tau approaches the hard top-k: the two largest of group 0 near 1, the rest near 0
    hard = sigmoid_budget(z.detach(), index, 2, torch.tensor([2.0, 3.0], dtype=torch.float64), temperature=1e-3)
    expect = torch.zeros(12, dtype=torch.bool)
    expect[z.detach()[:5].topk(2).indices] = True
    expect[5 + z.detach()[5:].topk(3).indices] = True
    assert torch.equal(hard > 0.5, expect)


def _answer_labels(inputs):
    labels = torch.full_like(inputs["input_ids"], -100)
    for b, n in enumerate(inputs["attention_mask"].sum(1).tolist()):  # the last 3 tokens, after the media
        labels[b, n - 3:n] = inputs["input_ids"][b, n - 3:n]
    return labels


def _relaxed_backward(model, block):
    """One LM-loss backward with the block's scores and allocation logits captured; returns (scores, logits, y)."""
    captured = {}
    scores_fn, allocator_fn = block.scores, block.allocator.forward

    def scores(embeds, tokens):
        out = scores_fn(embeds, tokens)
        out.retain_grad()
        captured["scores"] = out
        return out

    def allocator(*args):
        out = allocator_fn(*args)
        out.retain_grad()
        captured["logits"] = out
        return out

    block.scores, block.allocator.forward = scores, allocator
    model.set_compressor(block.train())
    try:
        inputs = random_inputs(model, seconds=5, batch_size=2, seed=4, padding_side="right")
        model(**inputs, labels=_answer_labels(inputs)).loss.backward()
        tokens = model.last_tokens
    finally:
        model.set_compressor(METHODS.build("none"))
        model.zero_grad(set_to_none=True)
    return captured, tokens


def test_the_relaxed_loss_reaches_every_pool_token_and_every_cells_allocation(tiny):
    model = tiny[0]
    block = _block(model, 0.25, allocation=True, relaxation="soft", temperature=0.2)
    captured, tokens = _relaxed_backward(model, block)
    grad = captured["scores"].grad[tokens.av_mask]  # (N,) every audio/video token of both samples
    assert grad.numel() > 100 and bool((grad != 0).all()), "a pool token got no gradient"
    y = block.last_allocation  # kappa: soft budgets of the cells
    cells = block.last_cells
    logits_grad = captured["logits"].grad[cells.cell_size > 0]
    assert bool((logits_grad != 0).all()), "an occupied cell's allocation logit got no gradient"
    assert y.shape == (cells.n_cells,)
    # the allocation head's own weights learn too (its output layer starts at zero)
    assert block.allocator.out.weight.grad.abs().sum() > 0


def test_the_marginal_relaxation_keeps_one_fractional_token_per_cell_and_trains_every_budget(tiny):
    model = tiny[0]
    block = _block(model, 0.25, allocation=True, relaxation="marginal")
    captured, _ = _relaxed_backward(model, block)
    cells = block.last_cells
    assert bool((captured["logits"].grad[cells.cell_size > 0] != 0).all()), "a cell's allocation got no gradient"
    # the forward: floor(kappa_c) tokens at weight 1 and the next one at frac(kappa_c), per cell
    inputs = random_inputs(model, seconds=5, batch_size=2, seed=4, padding_side="right")
    tokens = model.build_tokens(**inputs)
    selection = block.train()(tokens)
    kappa = block.last_allocation
    rows = tokens.av_mask.nonzero()
    kept_rows = selection.keep[rows[:, 0], rows[:, 1]]
    bias_rows = selection.key_bias[rows[:, 0], rows[:, 1]]
    cell = block.last_cells.token_cell
    kept = torch.bincount(cell[kept_rows], minlength=cells.n_cells)
    frac = kappa - kappa.floor()
    assert torch.equal(kept, torch.minimum(kappa.floor().long() + (frac > 0).long(), block.last_cells.cell_size))
    partial = torch.zeros(cells.n_cells).index_add(0, cell[kept_rows], bias_rows[kept_rows].exp())
    torch.testing.assert_close(partial, kappa.float(), atol=1e-4, rtol=0)  # sum of weights = kappa_c
    y = marginal_keep(torch.arange(3).repeat(2), torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([1.25, 3.0]))
    assert y.tolist() == pytest.approx([1.0, 0.25, 0.0, 1.0, 1.0, 1.0])


def test_training_mode_under_no_grad_selects_hard(tiny):
    """The harness scores under no_grad: a block left in train() mode must not hand the LLM a soft selection."""
    model = tiny[0]
    block = _block(model, 0.25, allocation=True, relaxation="soft").train()
    inputs = random_inputs(model, seconds=4, batch_size=1, seed=5)
    with torch.no_grad():
        selection = block(model.build_tokens(**inputs))
    assert selection.key_bias is None
    assert int(selection.keep[model.build_tokens(**inputs).av_mask].sum()) == math.ceil(
        0.25 * int(model.build_tokens(**inputs).av_mask.sum()) - 1e-9)


def test_with_the_straight_through_estimator_the_allocation_gets_no_gradient(tiny):
    """Why the relaxation exists: with a hard top-k inside the cells, the LM loss never reaches the budgets."""
    model = tiny[0]
    block = _block(model, 0.25, allocation=True, relaxation="ste")
    captured, tokens = _relaxed_backward(model, block)
    assert captured["logits"].grad is None or bool((captured["logits"].grad == 0).all())
    assert bool((captured["scores"].grad[tokens.av_mask] != 0).any())  # the scores still get the STE's


@pytest.mark.parametrize("budget", ["joint", "modality"])
@pytest.mark.parametrize("retention", [0.1, 0.25, 0.5, 1.0])
def test_hard_coverage_selection_keeps_ceil_r_n_per_pool(tiny, budget, retention):
    model = tiny[0]
    block = _block(model, retention, allocation=True, relaxation="soft", budget=budget)
    with torch.no_grad():  # a trained-looking head: unequal budgets over the cells
        block.allocator.out.weight.normal_(0, 1.0)
    model.set_compressor(block.eval())
    try:
        for seconds, batch in ((3, 1), (6, 3)):
            inputs = random_inputs(model, seconds=seconds, batch_size=batch, seed=seconds)
            with torch.no_grad():
                model(**inputs)
            for row in model.last_stats.rows():
                if budget == "joint":
                    assert row["total_after"] == math.ceil(retention * row["total_before"] - 1e-9)
                else:
                    assert row["video_after"] == math.ceil(retention * row["video_before"] - 1e-9)
                    assert row["audio_after"] == math.ceil(retention * row["audio_before"] - 1e-9)
            cells = block.last_cells
            assert torch.equal(torch.zeros_like(cells.pool_budget).index_add(0, cells.cell_pool,
                                                                             block.last_allocation),
                               cells.pool_budget)
    finally:
        model.set_compressor(METHODS.build("none"))


def test_soft_key_bias_of_zero_or_one_equals_dropping_the_tokens(tiny):
    """The language model with log y = 0 on kept keys and log 1e-6 ... on dropped ones gives the logits of the
    sliced sequence at the kept positions (same TMRoPE ids)."""
    model = tiny[0]
    inputs = random_inputs(model, seconds=4, batch_size=1, seed=3)
    with torch.no_grad():
        tokens = model.build_tokens(**inputs)
        gen = torch.Generator().manual_seed(0)
        keep = ~tokens.av_mask | (torch.rand(tokens.av_mask.shape, generator=gen) < 0.3)
        lm = model.model.language_model
        dropped = lm(inputs_embeds=tokens.embeds[keep][None], position_ids=tokens.position_ids[:, keep][:, None],
                     attention_mask=torch.ones(1, int(keep.sum()), dtype=torch.long)).last_hidden_state
        bias = torch.where(keep, 0.0, -1e4)  # y ~ e^-1e4: no attention at all
        mask = soft_attention_mask(tokens.attention_mask, bias, tokens.embeds.dtype)
        soft = lm(inputs_embeds=tokens.embeds, position_ids=tokens.position_ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(soft[keep][None], dropped, atol=1e-4, rtol=1e-4)
    x = torch.tensor([30.0, 0.0, -5.0, -1e5])
    assert key_bias(x).tolist() == pytest.approx([0.0, math.log(0.5), math.log(torch.sigmoid(x[2]).item()), -1e4])


def test_annealed_temperature_schedule():
    assert annealed_temperature(1.0, 0.05, 0, 100) == 1.0
    assert annealed_temperature(1.0, 0.05, 99, 100) == pytest.approx(0.05)
    assert annealed_temperature(1.0, 0.05, 50, 101) == pytest.approx(math.sqrt(0.05))


@pytest.mark.parametrize("params,key", [({"relaxation": "gumbel"}, "relaxation"),
                                        ({"temperature_final": 0.0}, "temperature_final"),
                                        ({"scorer": "uniform", "allocation": True}, "allocation")])
def test_bad_coverage_settings_are_config_errors(params, key):
    with pytest.raises(MethodConfigError, match=key):
        METHODS.build("fusion", retention=0.25, **params)


def test_a_malformed_key_bias_is_a_selection_error():
    from fusion.errors import SelectionError

    mask = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(SelectionError, match="shape"):
        soft_attention_mask(mask, torch.zeros(1, 5), torch.float32)
    with pytest.raises(SelectionError, match="NaN"):
        soft_attention_mask(mask, torch.tensor([[0.0, float("nan"), 0.0, 0.0]]), torch.float32)
    full = soft_attention_mask(mask, torch.tensor([[0.0, -1.0, 0.0, 0.0]]), torch.float32)
    assert full[0, 0, 2, 1] == -1.0 and full[0, 0, 1, 2] == torch.finfo(torch.float32).min  # bias + causal
