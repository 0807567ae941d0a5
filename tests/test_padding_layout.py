"""Output layout = input layout: a left-padded batch comes back left padded, a right-padded one right padded.

Batches hold THREE samples of different lengths (``random_inputs`` makes sample ``b`` last ``seconds + b`` s). At
retention 1.0 the compressed thinker's logits equal the stock HF thinker's position for position (padding included);
below 1.0 every row's logits at its real positions equal that sample run alone, and ``logits[:, -1]`` of a
left-padded batch is every row's last token.
"""

from __future__ import annotations

import pytest
import torch
from naive_llm import deep_tiny

from fusion import METHODS
from fusion.data.scoring import option_logits
from fusion.errors import InputMismatchError
from fusion.model.padding import padded_on, padding_side_of
from fusion.testing import random_inputs, sample_alone

SIDES = ["left", "right"]
MODALITIES = {"video+audio": dict(video=True, audio=True), "video only": dict(video=True, audio=False),
              "audio only": dict(video=False, audio=True)}
PRUNING = [("uniform", {}), ("fusion", {})]  # a training-free method and the learned block, untrained


def _batch(model, side: str, seed: int = 7, **kind) -> dict:
    inputs = random_inputs(model, seconds=2, batch_size=3, seed=seed, padding_side=side, **kind)
    assert len(set(inputs["attention_mask"].sum(1).tolist())) == 3, "three different lengths"
    return inputs


def _left_pads(inputs: dict, b: int) -> int:
    """Padding positions before sample ``b``'s first real token (0 for a right-padded row)."""
    return int(inputs["attention_mask"][b].cumsum(0).eq(0).sum())


# ---------------------------------------------------------------------------------------------- detection
@pytest.mark.parametrize("mask, side", [
    ([[1, 1, 1], [1, 1, 1]], "right"),            # no padding: either side, read as right
    ([[1, 1, 1], [1, 1, 0], [1, 0, 0]], "right"),
    ([[1, 1, 1], [0, 1, 1], [0, 0, 1]], "left"),
    ([[0, 1, 1], [1, 1, 1]], "left"),             # one padded row decides
])
def test_padding_side_of_masks(mask, side):
    assert padding_side_of(torch.tensor(mask)) == side
    assert padded_on(torch.tensor(mask), side)


@pytest.mark.parametrize("mask", [[[0, 1, 1], [1, 1, 0]], [[1, 0, 1], [1, 1, 1]]], ids=["mixed sides", "hole"])
def test_padding_side_of_rejects_a_mask_padded_on_no_single_side(mask):
    with pytest.raises(InputMismatchError, match="padding_side="):
        padding_side_of(torch.tensor(mask))
    assert padding_side_of(None) == "right"


# ---------------------------------------------------------------------------------------------- r = 1.0
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("kind", list(MODALITIES), ids=list(MODALITIES))
def test_retention_one_equals_stock_position_for_position(with_method, stock, side, kind):
    model = with_method("none")
    inputs = _batch(model, side, **MODALITIES[kind])
    with torch.no_grad():
        out = model(**inputs)
        ref = stock(**inputs).logits
    assert out.logits.shape == ref.shape
    torch.testing.assert_close(out.logits, ref, atol=1e-6, rtol=0)  # every position, padding included
    assert torch.equal(out.attention_mask, inputs["attention_mask"])
    positions = torch.arange(ref.shape[1]).expand(ref.shape[0], -1)  # (B, L)
    assert torch.equal(out.source_index, positions.masked_fill(inputs["attention_mask"] == 0, -1))
    if side == "left":  # what batched-generation users read: the last position is every row's last token
        torch.testing.assert_close(out.logits[:, -1], ref[:, -1], atol=1e-6, rtol=0)
        with torch.no_grad():
            last = model(**inputs, logits_to_keep=1).logits  # (B, 1, V)
        torch.testing.assert_close(last[:, 0], ref[:, -1], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- r < 1
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("method,params", PRUNING, ids=[m for m, _ in PRUNING])
def test_pruned_rows_equal_each_sample_alone(with_method, side, method, params):
    model = with_method(method, 0.25, **params)
    inputs = _batch(model, side)
    with torch.no_grad():
        out = model(**inputs)
        alone = [model(**sample_alone(inputs, b)) for b in range(3)]
    assert out.attention_mask.shape[1] < inputs["input_ids"].shape[1], "tokens were dropped"
    assert padded_on(out.attention_mask, side) and not padded_on(out.attention_mask, {"left": "right",
                                                                                       "right": "left"}[side])
    for b in range(3):
        real = out.attention_mask[b].bool()
        assert torch.equal(out.source_index[b][real] - _left_pads(inputs, b), alone[b].source_index[0])
        assert bool((out.source_index[b][~real] == -1).all())
        torch.testing.assert_close(out.logits[b][real], alone[b].logits[0], atol=1e-5, rtol=0)
    if side == "left":
        last = torch.stack([a.logits[0, -1] for a in alone])  # (B, V)
        torch.testing.assert_close(out.logits[:, -1], last, atol=1e-5, rtol=0)


@pytest.mark.parametrize("side", SIDES)
@torch.no_grad()
def test_in_llm_method_keeps_the_layout(side):
    """FastV drops tokens inside the LLM (``hooked_forward``): its re-padded batch follows the input's side too."""
    model = deep_tiny()
    model.set_compressor(METHODS.build("fastv", retention=0.35, k=2))
    inputs = _batch(model, side)
    out = model(**inputs)
    alone = [model(**sample_alone(inputs, b)) for b in range(3)]
    assert out.attention_mask.shape[1] < inputs["input_ids"].shape[1], "tokens were dropped"
    assert padded_on(out.attention_mask, side)
    for b in range(3):
        real = out.attention_mask[b].bool()
        assert torch.equal(out.source_index[b][real] - _left_pads(inputs, b), alone[b].source_index[0])
        torch.testing.assert_close(out.logits[b][real], alone[b].logits[0], atol=2e-5, rtol=0)
    if side == "left":
        torch.testing.assert_close(out.logits[:, -1], torch.stack([a.logits[0, -1] for a in alone]), atol=2e-5,
                                   rtol=0)


def test_labels_and_loss_follow_the_layout(with_method):
    """The pruned labels sit on the same positions as the logits; left and right layouts give one loss."""
    model = with_method("uniform", 0.25)
    outs = {}
    for layout in SIDES:
        inputs = _batch(model, layout, seed=8)
        lengths, width = inputs["attention_mask"].sum(1), inputs["input_ids"].shape[1]
        labels = torch.full_like(inputs["input_ids"], -100)
        for b in range(3):  # the last 3 real tokens are the "answer"
            end = width if layout == "left" else int(lengths[b])
            labels[b, end - 3: end] = inputs["input_ids"][b, end - 3: end]
        outs[layout] = out = model(**inputs, labels=labels)
        real = out.attention_mask.bool()
        assert torch.equal(out.labels[real], labels.gather(1, out.source_index.clamp(min=0))[real])
        assert bool((out.labels[~real] == -100).all())
        assert padded_on(out.attention_mask, layout)
    torch.testing.assert_close(outs["left"].loss, outs["right"].loss, atol=1e-5, rtol=0)


def test_explicit_padding_side_overrides_and_serves_a_mixed_batch(with_method):
    """``padding_side=`` chooses the output layout; a batch padded on both sides needs it and still works."""
    model = with_method("uniform", 0.25)
    inputs = _batch(model, "left")
    mixed = dict(inputs)
    n = int(inputs["attention_mask"][0].sum())  # row 0 moved to right padding, rows 1-2 stay left padded
    for key in ("input_ids", "attention_mask"):
        mixed[key] = inputs[key].clone()
        mixed[key][0] = torch.roll(inputs[key][0], n)
    with torch.no_grad():
        left = model(**inputs)
        with pytest.raises(InputMismatchError, match="padding_side="):
            model(**mixed)
        outs = [model(**inputs, padding_side="right"), model(**mixed, padding_side="right"),
                model(**mixed, padding_side="left")]
    for out, side in zip(outs, ["right", "right", "left"]):
        assert padded_on(out.attention_mask, side)
        for b in range(3):
            torch.testing.assert_close(out.logits[b][out.attention_mask[b].bool()],
                                       left.logits[b][left.attention_mask[b].bool()], atol=1e-5, rtol=0)


def test_last_position_scoring_reads_every_row_of_a_pruned_left_batch(with_method):
    """``logits_to_keep=1`` on a left-padded batch: option scores equal those read from the full logits."""
    model = with_method("uniform", 0.25)
    inputs = _batch(model, "left")
    letters = [3, 4, 5, 6]
    with torch.no_grad():
        full = model(**inputs)
        last = model(**inputs, logits_to_keep=1)
    assert last.logits.shape[1] == 1
    torch.testing.assert_close(option_logits(last.logits, last.attention_mask, letters),
                               option_logits(full.logits, full.attention_mask, letters), atol=1e-5, rtol=0)
