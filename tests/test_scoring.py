"""Scoring: lmms-eval's WorldSense letter extraction, logits mode on hand-built logits and on a compressed thinker."""

from __future__ import annotations

import pytest
import torch

from fusion.data.scoring import (
    accuracy,
    last_real_index,
    letter_token_ids,
    option_logits,
    parse_letter,
    predict_from_output,
)
from fusion.errors import InputMismatchError
from fusion.testing import random_inputs

OPTIONS = ["a dog", "a cat", "a car", "a bell"]


@pytest.mark.parametrize("response, expected", [
    ("B", "B"),
    ("D.", "D"),
    ("The answer is C.", "C"),
    ("(C) a car", "C"),
    ("I think it is (B), not (A)", "A"),     # several letters: the last "(X)" wins
    ("Answer: B", "A"),                      # lmms-eval quirk: the "A" of "Answer" is a candidate, no "(X)": first
    ("", "A"),                               # nothing found: A
    ("a car", "A"),                          # 5 words or fewer: option texts are not searched
    ("it is a bell for sure here", "D"),     # > 5 words, no letter: option text
    ("maybe a cat or a car i guess", "C"),   # several texts: the last one
])
def test_parse_letter_like_lmms_eval(response, expected):
    assert parse_letter(response, OPTIONS) == expected


def test_letter_token_ids(tiny):
    tokenizer = tiny[1].tokenizer
    assert letter_token_ids(tokenizer, "AB") == tokenizer.convert_tokens_to_ids(["A", "B"])
    with pytest.raises(InputMismatchError, match="single-token"):
        letter_token_ids(tokenizer, ["A."])


def test_logits_mode_against_hand_computed_argmax():
    V, letters = 10, [5, 6, 7, 8]
    logits = torch.zeros(3, 4, V)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 1, 1]])
    logits[0, 3, [5, 6, 7, 8]] = torch.tensor([0.1, 0.9, 0.3, 0.2])  # row 0: last real position 3 -> B
    logits[1, 1, [5, 6, 7, 8]] = torch.tensor([0.0, 0.1, 0.2, 3.0])  # row 1: position 1 -> D
    logits[1, 3, 5] = 9.0  # a padding position must be ignored
    logits[2, 3, [5, 6, 7, 8]] = torch.tensor([2.0, 0.0, 0.0, 5.0])  # row 2: D unless limited to 3 options
    logits[0, 3, 0] = 50.0  # a non-letter token never wins
    assert last_real_index(mask).tolist() == [3, 1, 3]
    scores = option_logits(logits, mask, letters, n_options=[4, 4, 3])
    assert scores.argmax(-1).tolist() == [1, 3, 0]
    assert scores[2, 3] == float("-inf")


def test_last_position_logits_need_left_padding():
    logits = torch.randn(2, 1, 10)
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert option_logits(logits, left, [1, 2]).shape == (2, 2)
    with pytest.raises(InputMismatchError, match="left padding"):
        option_logits(logits, torch.tensor([[1, 1, 0], [1, 1, 1]]), [1, 2])


def test_mismatched_mask_is_an_error():
    with pytest.raises(InputMismatchError, match="different sequences"):
        option_logits(torch.randn(2, 5, 10), torch.ones(2, 7), [1, 2])


def test_logits_mode_is_padding_invariant_on_a_pruned_thinker(with_method):
    """Right- and left-padded batches through a pruning thinker give the same option logits per sample."""
    model = with_method("uniform", 0.5)
    letters = [3, 4, 5, 6]
    with torch.no_grad():
        right = random_inputs(model, seconds=2, batch_size=3, padding_side="right")
        out_r = model(**right)
        left = random_inputs(model, seconds=2, batch_size=3, padding_side="left")
        out_l = model(**left)
    assert out_r.attention_mask.shape[1] < right["input_ids"].shape[1]  # the sequence was pruned
    a = option_logits(out_r.logits, out_r.attention_mask, letters)
    b = option_logits(out_l.logits, out_l.attention_mask, letters)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert torch.equal(predict_from_output(out_r, right["attention_mask"], letters), a.argmax(-1))


def test_accuracy_table():
    table = accuracy([True, False, True, True], ["x", "x", "y", "y"])
    assert table == {"x": 50.0, "y": 100.0, "all": 75.0, "mean": 75.0}
    assert accuracy([True, False, False], ["x", "y", "y"])["all"] == pytest.approx(100 / 3)
    assert accuracy([True, False, False], ["x", "y", "y"])["mean"] == pytest.approx(50.0)
