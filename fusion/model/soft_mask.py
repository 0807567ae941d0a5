"""The 4-D additive attention mask of a soft (relaxed) selection: causal + padding + ``log y`` on every key."""

from __future__ import annotations

import torch
from torch import Tensor

from fusion.errors import SelectionError


def soft_attention_mask(attention_mask: Tensor, key_bias: Tensor, dtype: torch.dtype) -> Tensor:
    """``(B, 1, L, L)`` float mask ``M[b, 0, q, k] = log y_{b,k}`` where ``k <= q`` and ``k`` is real, else the
    dtype's minimum (never ``-inf``, so a padding query's fully masked row stays finite).

    With every ``log y = 0`` it equals the causal padding mask the LLM builds itself; ``log y -> -inf`` removes key
    ``k`` from every query's softmax, as dropping the token would (its own query still runs, on its own position).

    Args:
        attention_mask: ``(B, L)`` 1 on real tokens.
        key_bias: ``(B, L)`` float ``log y`` (``<= 0``; 0 on text and on hard-kept tokens).
        dtype: the LLM's compute dtype.
    """
    if key_bias.shape != attention_mask.shape:
        raise SelectionError(f"key_bias has shape {tuple(key_bias.shape)}; it must match the sequence "
                             f"{tuple(attention_mask.shape)}")
    if not bool(torch.isfinite(key_bias).all()):
        raise SelectionError("key_bias contains NaN or Inf: a soft selection must give finite log-keeps (clamp y)")
    B, L = attention_mask.shape
    idx = torch.arange(L, device=attention_mask.device)
    allowed = (idx[None, :] <= idx[:, None])[None] & attention_mask.bool()[:, None, :]  # (B, L_q, L_k)
    floor = torch.finfo(dtype).min
    mask = torch.where(allowed, key_bias.to(dtype)[:, None, :], torch.full((), floor, dtype=dtype,
                                                                           device=key_bias.device))
    return mask[:, None]  # (B, 1, L, L)
