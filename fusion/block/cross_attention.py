"""Multi-head cross-attention over padded per-group batches, with SDPA (no attention map is materialised)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """``softmax(q k^T / sqrt(hd) + log mask) v`` via PyTorch SDPA (a module-level name so tests can watch it)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class CrossAttention(nn.Module):
    """Queries of one modality attend to keys of the other (plus optional question tokens) inside a window.

    For a query ``x_i`` and its key set ``K_i`` (masked slots excluded), per head ``h``::

        q = W_q x_i,  k_j = W_k c_j,  v_j = W_v c_j                      (head dim hd = d / heads)
        a_ij = exp(q.k_j / sqrt(hd)) / (1 + sum_{j' in K_i} exp(q.k_j' / sqrt(hd)))
        out_i = W_o concat_h( sum_{j in K_i} a_ij v_j )

    The ``1 +`` is a null key/value (k = v = 0) that every query can attend to: a token with no partner in its
    window (a silent or video-only group) gets a zero context instead of a NaN, and a query can choose to take
    nothing from a window that is irrelevant to it.

    Args:
        dim: model width d of queries and context.
        heads: number of heads (``dim % heads == 0``).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        """``x (G, Mq, d)``, ``context (G, Mk, d)``, ``context_mask (G, Mk)`` bool -> ``(G, Mq, d)``."""
        return self.attend(x, self.kv(context), context_mask)

    def attend(self, x: Tensor, kv: Tensor, kv_mask: Tensor) -> Tensor:
        """:meth:`forward` with the context already projected: ``kv = W_kv c`` ``(G, Mk, 2d)`` (``[k | v]`` per slot).

        Lets a caller project every context token once and then gather its windows (each token sits in up to
        ``2n + 1`` windows), instead of projecting each window's copy.
        """
        G, Mq, d = x.shape
        Mk, h = kv.shape[1], self.heads
        q = self.q(x).view(G, Mq, h, d // h).transpose(1, 2)  # (G, h, Mq, hd)
        k, v = kv.view(G, Mk, 2, h, d // h).permute(2, 0, 3, 1, 4)  # 2 x (G, h, Mk, hd)
        null = k.new_zeros(G, h, 1, d // h)
        k, v = torch.cat([null, k], dim=2), torch.cat([null, v], dim=2)  # (G, h, Mk + 1, hd)
        mask = torch.cat([kv_mask.new_ones(G, 1), kv_mask], dim=1)[:, None, None, :]  # (G, 1, 1, Mk + 1)
        o = sdpa(q, k, v, mask)  # (G, h, Mq, hd)
        return self.out(o.transpose(1, 2).reshape(G, Mq, d))
