"""Naive references for the in-LLM tests: a decoder layer written out with explicit matrices (eager softmax(QKᵀ)
over a per-row mask, no cache), and a small thinker deep enough for FastV / DyCoke layers (4 decoder layers).

Nothing here imports fusion's hook code: the references are independent of what they check.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def deep_tiny(layers: int = 4, attn: str = "sdpa", seed: int = 0):
    """The tiny test thinker with ``layers`` decoder layers and sharpened attention (q/k weights x6), so that
    attention rows have clear winners and top-k selections are stable under float noise."""
    from fusion.data.tokenizer import build_word_tokenizer
    from fusion.model.configs import small_thinker_config
    from fusion.model.loading import build_random_thinker

    config = small_thinker_config(build_word_tokenizer(), hidden=64, layers=layers, heads=4, kv_heads=2,
                                  mrope_section=[2, 3, 3], vision_hidden=32, audio_hidden=32)
    model = build_random_thinker(config, seed=seed, attn_implementation=attn).eval()
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(6.0)
            layer.self_attn.k_proj.weight.mul_(6.0)
    return model


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE written out: ``x·cos + [-x2, x1]·sin`` with ``cos``/``sin`` ``(B, S, d)`` broadcast over heads."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return x * cos[:, None] + torch.cat([-x2, x1], dim=-1) * sin[:, None]


def naive_layer(layer, h: Tensor, cos: Tensor, sin: Tensor, allowed: Tensor) -> tuple[Tensor, Tensor]:
    """One decoder layer, eager: returns ``(output (B, S, D), head-mean attention probabilities (B, S, S))``.

    ``allowed`` ``(B, S, S)``: row i may attend to key j.
    """
    attn = layer.self_attn
    B, S, _ = h.shape
    d, H, Hkv = attn.head_dim, attn.config.num_attention_heads, attn.config.num_key_value_heads
    x = layer.input_layernorm(h)
    q = F.linear(x, attn.q_proj.weight, attn.q_proj.bias).view(B, S, H, d).transpose(1, 2)
    k = F.linear(x, attn.k_proj.weight, attn.k_proj.bias).view(B, S, Hkv, d).transpose(1, 2)
    v = F.linear(x, attn.v_proj.weight, attn.v_proj.bias).view(B, S, Hkv, d).transpose(1, 2)
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)  # (B, H, S, d)
    scores = q @ k.transpose(-1, -2) / d ** 0.5
    probs = torch.softmax(scores.masked_fill(~allowed[:, None], float("-inf")), dim=-1)  # (B, H, S, S)
    out = (probs @ v).transpose(1, 2).reshape(B, S, H * d)
    h = h + F.linear(out, attn.o_proj.weight)
    h = h + layer.mlp(layer.post_attention_layernorm(h))
    return h, probs.mean(1)


def causal(S: int, B: int = 1) -> Tensor:
    """``(B, S, S)`` lower-triangular pattern."""
    return torch.ones(S, S, dtype=torch.bool).tril()[None].expand(B, S, S)


def topk_keep(row: Tensor, pool: Tensor, n: int) -> Tensor:
    """``(S,)`` bool: every non-pool position plus the ``n`` pool positions with the largest ``row`` (one sample),
    after checking the choice is well separated (so float noise between implementations cannot flip it)."""
    scores = torch.where(pool, row, torch.full_like(row, float("-inf")))
    ranked = scores.sort(descending=True).values
    if 0 < n < int(pool.sum()):
        assert float(ranked[n - 1] - ranked[n]) > 1e-5, "ill-conditioned test setup: top-k ties"
    keep = ~pool
    keep[scores.topk(n).indices] = True
    return keep
