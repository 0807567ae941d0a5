"""Which side a batch is padded on, read from its attention mask (the compressed thinker returns the same layout).

A row ``m`` of a ``(B, L)`` attention mask is *right padded* when its real tokens come first
(``m_j >= m_{j+1}`` for every ``j``: ones, then zeros) and *left padded* when they come last (``m_j <= m_{j+1}``).
A row without padding (all ones) is both, so a batch is:

* ``"right"`` when every row is right padded (this includes a batch without any padding);
* ``"left"`` when every row is left padded and at least one is not right padded (a row with zeros before its ones);
* neither otherwise (rows padded on different sides, or a row with a hole): :func:`padding_side_of` raises, and the
  caller chooses the output layout with ``padding_side=``.
"""

from __future__ import annotations

from torch import Tensor

from fusion.errors import InputMismatchError

SIDES = ("right", "left")


def check_padding_side(side: str) -> str:
    """Return ``side`` if it is ``"right"`` or ``"left"``; raise :class:`InputMismatchError` otherwise."""
    if side not in SIDES:
        raise InputMismatchError(f"padding_side must be 'right' or 'left' (or None: read it from the attention "
                                 f"mask), got {side!r}")
    return side


def padded_on(attention_mask: Tensor, side: str) -> bool:
    """True when every row of ``attention_mask`` ``(B, L)`` is padded on ``side`` (a row without padding counts as
    padded on both sides): ``m_j >= m_{j+1}`` for all ``j`` (right) or ``m_j <= m_{j+1}`` (left)."""
    step = attention_mask[:, 1:].long() - attention_mask[:, :-1].long()  # (B, L - 1): +1 pad -> real, -1 real -> pad
    return bool((step <= 0).all()) if check_padding_side(side) == "right" else bool((step >= 0).all())


def padding_side_of(attention_mask: Tensor | None) -> str:
    """``"right"`` or ``"left"``: the side every row of ``attention_mask`` ``(B, L)`` is padded on (module doc).

    ``None`` (no mask: nothing padded) and a mask of all ones give ``"right"``.

    Raises:
        InputMismatchError: rows padded on different sides, or a row whose padding is not at one end.
    """
    if attention_mask is None or padded_on(attention_mask, "right"):
        return "right"
    if padded_on(attention_mask, "left"):
        return "left"
    raise InputMismatchError(
        "the attention mask is padded neither on the right nor on the left in every row (rows padded on different "
        "sides, or padding in the middle of a row); pad the whole batch on one side (tokenizer padding_side), or pass "
        "padding_side='left' / 'right' to choose the layout of the outputs"
    )
