"""`apply_keep`: the ONLY place that slices the thinker's inputs after a compressor chose what to keep."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from fusion.errors import SelectionError
from fusion.model.padding import check_padding_side, padded_on
from fusion.tokens import AVTokens, Selection

IGNORE_INDEX = -100
PAD_POSITION = 1  # what transformers' get_rope_index writes at padding positions


@dataclass
class PrunedBatch:
    """The language model's inputs after compression (``L'`` = longest kept sequence in the batch).

    Attributes:
        inputs_embeds: ``(B, L', D)``.
        attention_mask: ``(B, L')`` 1 on kept tokens, 0 on padding.
        position_ids: ``(3, B, L')`` the full TMRoPE ids gathered at the kept indices (never recomputed).
        input_ids: ``(B, L')`` ids of the kept tokens (``pad_token_id`` on padding).
        labels: ``(B, L')`` gathered labels (-100 on padding), or None.
        source_index: ``(B, L')`` index of each kept token in the unpruned sequence (-1 on padding).
        rope_deltas: ``(B, 1)`` ``max(kept ids) + 1 - n_kept``, so cache-based decoding continues at max + 1.
        key_bias: ``(B, L')`` the selection's soft-keep attention bias gathered like the rest (0 on padding), or None.
        lm_inputs: extra language-model inputs a backbone gathered with the same kept index (Qwen3-Omni's
            ``visual_pos_masks`` / ``deepstack_visual_embeds``); empty for Qwen2.5-Omni.
    """

    inputs_embeds: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    input_ids: Tensor
    labels: Tensor | None
    source_index: Tensor
    rope_deltas: Tensor
    key_bias: Tensor | None = None
    lm_inputs: dict = field(default_factory=dict)


def check_selection(selection: Selection, tokens: AVTokens) -> Tensor:
    """Validate a compressor's output; return the effective ``(B, L)`` keep mask (padding removed)."""
    keep = selection.keep
    if keep.shape != tokens.input_ids.shape or keep.dtype != torch.bool:
        raise SelectionError(
            f"a compressor returned keep of shape {tuple(keep.shape)} and dtype {keep.dtype}; it must be a bool "
            f"tensor of the unpruned shape {tuple(tokens.input_ids.shape)}"
        )
    if selection.embeds is not None and selection.embeds.shape != tokens.embeds.shape:
        raise SelectionError(
            f"a compressor returned embeds of shape {tuple(selection.embeds.shape)}; "
            f"expected {tuple(tokens.embeds.shape)}"
        )
    real = tokens.attention_mask.bool()
    dropped_text = real & ~tokens.av_mask & ~keep
    if bool(dropped_text.any()):
        raise SelectionError(
            f"a compressor dropped {int(dropped_text.sum())} text/special token(s); only audio and video tokens may be "
            "dropped (this is a bug in the method: keep every position where tokens.av_mask is False)"
        )
    return keep & real


def apply_keep(
    tokens: AVTokens,
    selection: Selection,
    labels: Tensor | None = None,
    padding_side: str = "right",
    pad_token_id: int = 0,
) -> PrunedBatch:
    """Gather the kept tokens of every sample, in their original order, and re-pad the batch on ``padding_side``.

    Kept order is preserved by a stable sort of the keep mask: kept tokens first (right padding, for training
    and scoring) or last (left padding, for batched generation). Embeddings, attention mask, the full
    TMRoPE ids and labels are all gathered with the same indices. When no real token is dropped and the input is
    already padded on ``padding_side`` (or not padded), the inputs are returned untouched, padding included
    (retention 1.0 is the identity, position for position, at no cost).
    """
    check_padding_side(padding_side)
    keep = check_selection(selection, tokens)
    embeds = tokens.embeds if selection.embeds is None else selection.embeds
    B, L, D = embeds.shape
    count = keep.sum(1)  # (B,)
    positions = tokens.position_ids
    real = tokens.attention_mask.bool()
    if torch.equal(keep, real) and padded_on(tokens.attention_mask, padding_side):
        source = torch.arange(L, device=keep.device).expand(B, L).masked_fill(~real, -1)  # (B, L)
        return PrunedBatch(embeds, tokens.attention_mask, positions, tokens.input_ids, labels, source,
                           _rope_deltas(positions, keep, count), selection.key_bias)

    width = int(count.max())
    slots = torch.arange(width, device=keep.device).expand(B, width)  # (B, L')
    if padding_side == "right":
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :width]  # kept first
        valid = slots < count[:, None]
    else:
        order = torch.sort(keep.to(torch.int8), dim=1, stable=True).indices[:, L - width:]  # kept last
        valid = slots >= (width - count)[:, None]

    gathered = embeds.gather(1, order[..., None].expand(B, width, D))  # (B, L', D)
    inputs_embeds = torch.where(valid[..., None], gathered, torch.zeros((), dtype=embeds.dtype, device=embeds.device))
    attention_mask = valid.to(tokens.attention_mask.dtype)
    position_ids = positions.gather(2, order[None].expand(3, B, width))  # (3, B, L')
    position_ids = position_ids.masked_fill(~valid[None], PAD_POSITION)
    input_ids = tokens.input_ids.gather(1, order).masked_fill(~valid, pad_token_id)
    pruned_labels = None if labels is None else labels.gather(1, order).masked_fill(~valid, IGNORE_INDEX)
    source = order.masked_fill(~valid, -1)
    bias = None if selection.key_bias is None else selection.key_bias.gather(1, order).masked_fill(~valid, 0.0)
    return PrunedBatch(inputs_embeds, attention_mask, position_ids, input_ids, pruned_labels, source,
                       _rope_deltas(positions, keep, count), bias)


def _rope_deltas(position_ids: Tensor, keep: Tensor, count: Tensor) -> Tensor:
    """``(B, 1)`` max kept TMRoPE id + 1 - number kept (the offset cache-based decoding adds)."""
    info = torch.finfo if position_ids.is_floating_point() else torch.iinfo  # Qwen3-Omni's ids are floats
    masked = position_ids.masked_fill(~keep[None], info(position_ids.dtype).min)
    return (masked.amax(dim=(0, 2)) + 1 - count)[:, None]
