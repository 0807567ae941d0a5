"""The fusion block at initialisation: the fused tokens equal the inputs exactly (zero-initialised gate), the
straight-through gate leaves kept embeddings bit-identical, and r = 1 reproduces the stock thinker."""

from __future__ import annotations

import pytest
import torch

from fusion import METHODS
from fusion.testing import random_inputs

CASES = [
    ("one layer, own group", dict(neighbours=0)),
    ("neighbours 2, two layers", dict(neighbours=2, layers=2)),
    ("instruction pre-fusion", dict(instruction=True, neighbours=1)),
]


def _block(model, retention=0.3, **params):
    params = {"dim": 32, "heads": 4, "scorer_hidden": 16, **params}
    return METHODS.build("fusion", retention=retention, **params).bind(model.config)


@pytest.mark.parametrize("name,params", CASES, ids=[c[0] for c in CASES])
def test_fused_tokens_equal_inputs_exactly_at_init(tiny, name, params):
    model = tiny[0]
    block = _block(model, **params)
    tokens = model.build_tokens(**random_inputs(model, seconds=6, batch_size=2, seed=4))
    fused = block.fuse(tokens)
    assert torch.equal(fused, tokens.embeds)
    # the residual branch itself is not zero: only the zero gate makes the block an identity
    with torch.no_grad():
        block.gate.weight.fill_(1.0)
    assert not torch.equal(block.fuse(tokens), tokens.embeds)


@pytest.mark.parametrize("budget", ["joint", "modality"])
def test_straight_through_output_equals_fused_tokens_on_kept_rows(tiny, budget):
    """y = y_hard + (y_soft - stopgrad y_soft) is exactly 1 on kept tokens, so Selection.embeds == fused there."""
    model = tiny[0]
    block = _block(model, budget=budget).train()
    with torch.no_grad():
        block.gate.weight.normal_()
    tokens = model.build_tokens(**random_inputs(model, seconds=5, batch_size=2, seed=1))
    selection = block(tokens)  # grad mode on: the STE path
    fused = block.fuse(tokens)
    assert selection.embeds.requires_grad
    assert torch.equal(selection.embeds[selection.keep], fused[selection.keep])


@pytest.mark.parametrize("params", [{}, {"instruction": True, "neighbours": 2}, {"budget": "modality"}])
def test_retention_one_at_init_matches_stock(tiny, stock, params):
    model = tiny[0]
    model.set_compressor(_block(model, retention=1.0, **params))
    try:
        inputs = random_inputs(model, seconds=4, batch_size=2, seed=3)
        with torch.no_grad():
            ours = model(**inputs)
            ref = stock(**inputs).logits
    finally:
        model.set_compressor(METHODS.build("none"))
    assert (inputs["attention_mask"] == 0).any(), "the batch must contain padding for this test"
    for b in range(2):  # the hook re-pads on the right; compare every real token at its source index
        real = ours.attention_mask[b].bool()
        assert int(real.sum()) == int(inputs["attention_mask"][b].sum())
        torch.testing.assert_close(ours.logits[b][real], ref[b, ours.source_index[b][real]], atol=1e-5, rtol=0)
