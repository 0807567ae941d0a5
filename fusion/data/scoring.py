"""Scoring MCQ answers: letter extraction from generated text, and the faster logits mode.

* :func:`parse_letter` reproduces lmms-eval's WorldSense ``parse_multi_choice_response`` (written anew):
  strip ``,.!?;:'`` from both ends, pad with spaces; candidates = every option letter that occurs in the
  response as a bare substring (lmms-eval's first test; its comment says "(A)" but the code tests the bare
  letter, so e.g. the "A" of "Answer" counts); failing that, ``" X "``; failing that, for responses longer
  than 5 words, every option whose text occurs (case-insensitive). Several candidates: the one whose last
  occurrence of ``"(X)"`` (letters found), or of the option text (texts found), comes last (the first
  candidate on ties, as ``np.argmax``). None: ``"A"``.
* Logits mode: one prefill, then ``argmax_k logits[b, last, id(letter_k)]`` over the sample's option letters,
  at the last REAL position of each row (works with left or right padding and with a compressed thinker's
  output, whose ``attention_mask`` covers the pruned sequence).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from fusion.data.mcq import LETTERS
from fusion.errors import InputMismatchError

_STRIP = ",.!?;:'"


def parse_letter(response: str, options: list[str], letters: str | None = None) -> str:
    """The option letter a free-form ``response`` picks, as lmms-eval's WorldSense scorer decides it.

    Args:
        response: generated text.
        options: the option texts (used when no letter is found in a long response).
        letters: the option letters (default ``"ABCD..."`` for ``len(options)``).
    """
    letters = letters or LETTERS[: len(options)]
    text = " " + response.strip(_STRIP) + " "
    candidates = [c for c in letters if c in text]
    by_letter = bool(candidates)
    if not candidates:  # unreachable after the bare test, kept for parity with lmms-eval
        candidates = [c for c in letters if f" {c} " in text]
    by_text = False
    if not candidates and len(text.split()) > 5:
        candidates = [c for c, o in zip(letters, options) if o.lower() in text.lower()]
        by_text = bool(candidates)
    if not candidates:
        return letters[0]
    if len(candidates) == 1:
        return candidates[0]
    if by_text:
        where = [text.lower().rfind(options[letters.index(c)].lower()) for c in candidates]
    elif by_letter:
        where = [text.rfind(f"({c})") for c in candidates]
    else:
        where = [text.rfind(f" {c} ") for c in candidates]
    return candidates[max(range(len(where)), key=lambda i: (where[i], -i))]


def letter_token_ids(tokenizer, letters: str | list[str] = "ABCD") -> list[int]:
    """Token id of each option letter (each must be one token of ``tokenizer``)."""
    ids = []
    for letter in letters:
        encoded = tokenizer.encode(letter, add_special_tokens=False)
        if len(encoded) != 1:
            raise InputMismatchError(f"option letter {letter!r} is {len(encoded)} tokens for this tokenizer; logits "
                                     "scoring needs single-token letters (use generation scoring)")
        ids.append(encoded[0])
    return ids


def last_real_index(attention_mask: Tensor) -> Tensor:
    """``(B,)`` index of the last position with ``attention_mask == 1`` (``max_j j * [mask_j = 1]``)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).expand_as(attention_mask)
    last = torch.where(attention_mask.bool(), positions, torch.full_like(positions, -1)).amax(1)  # (B,)
    if bool((last < 0).any()):
        raise InputMismatchError("a row of the attention mask has no real token")
    return last


def option_logits(logits: Tensor, attention_mask: Tensor, letter_ids: list[int],
                  n_options: list[int] | Tensor | None = None) -> Tensor:
    """``(B, K)`` logits of the K option letters at each row's last real position (-inf beyond a row's options).

    Args:
        logits: ``(B, L, V)`` over the sequence the mask describes (for a compressed thinker: ``out.logits`` with
            ``out.attention_mask``); ``(B, 1, V)`` is accepted when every row's last position is real (left padding).
        attention_mask: ``(B, L)``.
        letter_ids: token ids of the letters ``A, B, ...`` (:func:`letter_token_ids`).
        n_options: options per row (default: all K).
    """
    B = logits.shape[0]
    if logits.shape[1] == 1 and attention_mask.shape[1] != 1:
        if not bool(attention_mask[:, -1].bool().all()):
            raise InputMismatchError("logits of the last position only need left padding (every row's last "
                                     "position real); pass full logits for right-padded batches")
        last_logits = logits[:, 0]  # (B, V)
    else:
        if logits.shape[:2] != attention_mask.shape:
            raise InputMismatchError(f"logits {tuple(logits.shape[:2])} and attention mask "
                                     f"{tuple(attention_mask.shape)} cover different sequences; pass the model "
                                     "output's own attention_mask (pruned) when tokens were dropped")
        last = last_real_index(attention_mask)
        last_logits = logits[torch.arange(B, device=logits.device), last]  # (B, V)
    picked = last_logits[:, letter_ids].float()  # (B, K)
    if n_options is not None:
        n = torch.as_tensor(n_options, device=picked.device).view(B, 1)
        valid = torch.arange(picked.shape[1], device=picked.device)[None, :] < n  # (B, K)
        picked = picked.masked_fill(~valid, float("-inf"))
    return picked


def predict_from_output(output, attention_mask: Tensor, letter_ids: list[int],
                        n_options: list[int] | Tensor | None = None) -> Tensor:
    """``(B,)`` predicted option index from a model output; uses ``output.attention_mask`` when the model pruned
    the sequence (a :class:`~fusion.model.thinker.CompressedOutput`) and ``attention_mask`` otherwise."""
    mask = getattr(output, "attention_mask", None)
    mask = attention_mask if mask is None else mask
    return option_logits(output.logits, mask, letter_ids, n_options).argmax(-1)


def accuracy(correct: list[bool], categories: list[str]) -> dict[str, float]:
    """Accuracy in % overall (``"all"``, sample-weighted), per category, and ``"mean"`` (unweighted mean over
    categories)."""
    if len(correct) != len(categories):
        raise InputMismatchError(f"{len(correct)} results for {len(categories)} categories")
    groups: dict[str, list[bool]] = defaultdict(list)
    for ok, category in zip(correct, categories):
        groups[category].append(bool(ok))
    table = {c: 100.0 * sum(v) / len(v) for c, v in sorted(groups.items())}
    table["all"] = 100.0 * sum(map(bool, correct)) / max(len(correct), 1)
    table["mean"] = sum(table[c] for c in groups) / max(len(groups), 1)
    return table
