"""Retention 1.0 is the identity: the compressed thinker's logits equal the stock HF thinker's."""

from __future__ import annotations

import pytest
import torch

from fusion.testing import random_inputs

CASES = [
    ("video+audio", dict(video=True, audio=True)),
    ("video only", dict(video=True, audio=False)),
    ("audio only", dict(video=False, audio=True)),
]


@pytest.mark.parametrize("method", ["none", "uniform", "random"])
@pytest.mark.parametrize("name,kind", CASES, ids=[c[0] for c in CASES])
def test_retention_one_matches_stock(with_method, stock, method, name, kind):
    model = with_method(method, 1.0)
    inputs = random_inputs(model, seconds=4, seed=3, **kind)
    with torch.no_grad():
        ours = model(**inputs).logits
        ref = stock(**inputs).logits
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_retention_one_matches_stock_on_padded_batch(with_method, stock):
    """A left-padded batch of two lengths: every real token's logits equal the stock batched forward."""
    model = with_method("uniform", 1.0)
    inputs = random_inputs(model, seconds=4, batch_size=2, seed=5)
    assert (inputs["attention_mask"] == 0).any(), "the batch must contain padding for this test"
    with torch.no_grad():
        out = model(**inputs)
        ref = stock(**inputs).logits
    for b in range(2):
        real = out.attention_mask[b].bool()
        src = out.source_index[b][real]
        torch.testing.assert_close(out.logits[b][real], ref[b, src], atol=1e-5, rtol=0)
