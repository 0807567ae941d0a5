"""Batches of different lengths, greedy generation from the pruned prefix, and the loss on answer tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusion.testing import random_inputs, sample_alone


@pytest.mark.parametrize("method,params", [("uniform", {}), ("random", {"seed": 3}), ("uniform", {"budget": "joint"})])
def test_batch_equals_each_sample_alone(with_method, method, params):
    model = with_method(method, 0.3, **params)
    inputs = random_inputs(model, seconds=4, batch_size=2, seed=9)
    with torch.no_grad():
        batched = model(**inputs)
        for b in range(2):
            alone_inputs = sample_alone(inputs, b)
            alone = model(**alone_inputs)
            real = batched.attention_mask[b].bool()
            pad = int((inputs["attention_mask"][b] == 0).sum())  # left padding shifts source indices
            assert torch.equal(batched.source_index[b][real] - pad, alone.source_index[0])
            torch.testing.assert_close(batched.logits[b][real], alone.logits[0], atol=1e-5, rtol=0)


def _manual_greedy(model, pruned, steps: int) -> torch.Tensor:
    """Greedy decoding by re-running the language model on [pruned prefix; new tokens] without a cache.

    New tokens sit at TMRoPE id max(kept ids) + 1 + t on all three rows.
    """
    embeds, positions, mask = pruned.inputs_embeds, pruned.position_ids, pruned.attention_mask
    next_id = positions.masked_fill(~mask.bool()[None], -1).amax(dim=(0, 2)) + 1  # (B,)
    new = []
    for t in range(steps):
        hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
        token = model.lm_head(hidden.last_hidden_state[:, -1]).argmax(-1)  # (B,)
        new.append(token)
        embeds = torch.cat([embeds, model.model.get_input_embeddings()(token)[:, None]], dim=1)
        positions = torch.cat([positions, (next_id + t)[None, :, None].expand(3, -1, 1)], dim=2)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return torch.stack(new, dim=1)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_generate_equals_manual_greedy_loop(with_method, batch_size):
    model = with_method("uniform", 0.25)
    inputs = random_inputs(model, seconds=4, batch_size=batch_size, seed=21)
    steps = 6
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
        media = {k: v for k, v in inputs.items() if k != "input_ids"}
        pruned = model.compress(inputs["input_ids"], padding_side="left", **media)
        expected = _manual_greedy(model, pruned, steps)
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert torch.equal(out[:, inputs["input_ids"].shape[1]:], expected)


def test_decode_continues_at_max_kept_position_plus_one(with_method):
    model = with_method("random", 0.2, seed=1)
    inputs = random_inputs(model, seconds=4, seed=4)
    media = {k: v for k, v in inputs.items() if k != "input_ids"}
    with torch.no_grad():
        pruned = model.compress(inputs["input_ids"], padding_side="left", **media)
    last = pruned.position_ids[:, 0, -1]
    assert torch.equal(last, pruned.position_ids[:, 0].amax(dim=1)), "the prompt ends with its maximal TMRoPE id"
    # generate appends last + 1 on all three rows; the cached rope deltas give the same id
    n_kept = int(pruned.attention_mask.sum())
    assert int(model.model.rope_deltas[0, 0]) + n_kept == int(last.max()) + 1


def test_loss_is_cross_entropy_on_answer_tokens(with_method):
    model = with_method("uniform", 0.25)
    inputs = random_inputs(model, seconds=4, batch_size=2, seed=8, padding_side="right")
    labels = torch.full_like(inputs["input_ids"], -100)
    lengths = inputs["attention_mask"].sum(1)
    for b in range(2):  # the last 3 real tokens are the "answer"
        labels[b, lengths[b] - 3: lengths[b]] = inputs["input_ids"][b, lengths[b] - 3: lengths[b]]
    out = model(**inputs, labels=labels)
    terms = []
    for b in range(2):
        real = out.attention_mask[b].bool()
        src = out.source_index[b][real]
        logits = out.logits[b][real]
        for j in range(1, len(src)):
            if labels[b, src[j]] != -100:
                terms.append(F.cross_entropy(logits[j - 1][None], labels[b, src[j]][None]))
    assert len(terms) == 6
    torch.testing.assert_close(out.loss, torch.stack(terms).mean())
