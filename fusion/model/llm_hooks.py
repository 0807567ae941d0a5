"""The in-LLM hook: how a compressor acts *inside* the language model (FastV at prefill, DyCoke stage 2 at decode).

Every other method selects before the language model (``apply_keep``). A method that must act at a layer of the
LLM returns an :class:`LLMHook` from ``Compressor.llm_hook()``. When the thinker's compressor gives a hook, the
thinker runs the language model's decoder layers itself (``fusion.model.hooked_lm``) instead of calling HF's text
model; without a hook nothing changes (the stock path runs).

Prefill (``hook.prefill_layer = K``, FastV)
    Layers ``0..K-1`` run on the sequence ``apply_keep`` produced. Before layer ``K`` the runner computes ONE
    attention row: the last real prompt token's query at layer ``K-1`` against that layer's keys,
    ``a = mean_h softmax(q_h k_hᵀ / sqrt(d))`` (see :func:`attention_row`), and asks
    ``hook.prefill_keep(row, modality, valid)`` which tokens continue. The hidden states, TMRoPE ids, mask and
    labels of the kept tokens are gathered by ``apply_keep`` again (same padding side, original ids) and layers
    ``K..`` run on them. Each layer's KV cache keeps the length its layer saw (layers < K: the whole prefix,
    layers >= K: the kept prefix).

Decode (``hook.decode_layer = L``, DyCoke stage 2)
    Each new token runs through every layer against that layer's cache, with a per-layer key mask (so per-sample
    padding and per-layer lengths both work). After layer ``L-1`` the runner computes the current token's row at
    ``L-1`` over that layer's cache and asks ``hook.decode_keep(row, modality)`` which *prefill* cache entries
    layers ``>= L`` attend to in this step (generated tokens are always attended). The cache gathers those
    entries for layers ``>= L``; the full cache stays in memory (as in DyCoke's ``PrunableDynamicCache``).

Attention rows are computed by hand for the one query that needs them, so the LLM itself keeps running on SDPA
(or eager); ``output_attentions`` is never used. A hook object is created per call (it may keep per-generation
state, e.g. DyCoke's previous attention row); it must not set both layers (no published method needs both).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fusion.errors import MethodConfigError
from fusion.tokens import KeepStats


class LLMHook:
    """What an in-LLM method tells the hooked runner. Subclass it and set one of the two layers.

    Attributes:
        name: the method's name (for error messages).
        prefill_layer: ``K``: tokens are dropped before decoder layer ``K`` during prefill (None: never).
        decode_layer: ``L``: during decoding, layers ``>= L`` attend to a subset of the prefill cache (None: never).
    """

    name: str = "hook"
    prefill_layer: int | None = None
    decode_layer: int | None = None

    def check(self, num_layers: int) -> None:
        """Raise :class:`MethodConfigError` if the hook's layer does not fit a language model of ``num_layers``."""
        if (self.prefill_layer is None) == (self.decode_layer is None):
            raise MethodConfigError(f"{self.name}: an LLM hook sets exactly one of prefill_layer / decode_layer")
        layer = self.prefill_layer if self.prefill_layer is not None else self.decode_layer
        if not 1 <= layer < num_layers:
            raise MethodConfigError(
                f"{self.name}: layer {layer} needs 1 <= layer < {num_layers} (the language model has {num_layers} "
                f"decoder layers and the method reads the attention of layer {layer} - 1); pass a smaller layer"
            )

    def prefill_keep(self, row: Tensor, modality: Tensor, valid: Tensor) -> Tensor:
        """``(B, S)`` bool: which tokens continue from layer ``prefill_layer`` on.

        Args:
            row: ``(B, S)`` float32 attention of the last real prompt token at layer ``prefill_layer - 1``.
            modality: ``(B, S)`` :class:`~fusion.tokens.Modality` codes of the sequence.
            valid: ``(B, S)`` bool, real (non-padding) tokens. Every real non-AV token must be kept.
        """
        raise NotImplementedError

    def decode_keep(self, row: Tensor, modality: Tensor) -> Tensor | None:
        """``(B, S_p)`` bool over the prefill cache entries (True = layers ``>= decode_layer`` attend to it this
        step), or None for no restriction this step.

        Args:
            row: ``(B, S_p)`` float32 attention of the current token at layer ``decode_layer - 1`` over the prefill
                entries (the full row also covers generated tokens; they are always attended).
            modality: ``(B, S_p)`` modality codes of the prefill entries (PAD on padding).
        """
        raise NotImplementedError


@dataclass
class HookStats(KeepStats):
    """:class:`KeepStats` of a hooked call (``*_after`` = what the LLM's LATER layers saw), plus per-layer counts.

    For FastV the ``*_after`` counts are the tokens kept from layer ``K`` on (layers < K saw ``*_before`` minus
    what a pre-LLM stage dropped); :attr:`layer_tokens` gives every layer's real sequence length so a harness can
    compute FLOPs as ``sum_l C(layer_tokens[:, l])`` (= ``K·C(n) + (T-K)·C(n̂)`` for FastV).

    Attributes:
        layer_tokens: ``(B, num_layers)`` real tokens each decoder layer processed at prefill.
        prune_layer: the layer from which ``*_after`` holds (FastV's ``K``), or None.
        decode_av_kept: ``(B, steps)`` AV prefill cache entries attended by layers ``>= decode_layer`` at each
            decoding step (DyCoke stage 2; the first generated token comes from the prefill and has no column), or
            None.
        decode_av_total: ``(B,)`` AV prefill cache entries per sample (the denominator of ``decode_av_kept``).
    """

    layer_tokens: Tensor | None = None
    prune_layer: int | None = None
    decode_av_kept: Tensor | None = None
    decode_av_total: Tensor | None = None


def layer_token_counts(stats: KeepStats, num_layers: int) -> Tensor:
    """``(B, num_layers)`` real tokens per decoder layer: ``stats.layer_tokens`` for hooked calls, else every layer
    saw ``sequence_after`` (pre-LLM methods)."""
    per_layer = getattr(stats, "layer_tokens", None)
    if per_layer is not None:
        return per_layer
    return stats.sequence_after[:, None].expand(-1, num_layers)


# ---------------------------------------------------------------------------------------------- one attention row
def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """HF's own RoPE for Qwen2.5-Omni (imported here so that importing the registry stays light)."""
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import apply_rotary_pos_emb

    return apply_rotary_pos_emb(x, x, cos, sin)[0]


def layer_query(layer, hidden: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotated queries of a decoder layer: ``q = RoPE(W_q · RMSNorm(h) + b_q)``, ``(B, H, Q, d)``.

    ``hidden`` is the layer's INPUT ``(B, Q, D)`` (before ``input_layernorm``); ``cos``/``sin`` ``(B, Q, d)``.
    """
    attn = layer.self_attn
    B, Q, _ = hidden.shape
    q = attn.q_proj(layer.input_layernorm(hidden)).view(B, Q, -1, attn.head_dim).transpose(1, 2)  # (B, H, Q, d)
    return _rotate(q, cos, sin)


def layer_keys(layer, hidden: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotated keys of a decoder layer: ``k = RoPE(W_k · RMSNorm(h) + b_k)``, ``(B, H_kv, S, d)`` (what its cache
    holds)."""
    attn = layer.self_attn
    B, S, _ = hidden.shape
    k = attn.k_proj(layer.input_layernorm(hidden)).view(B, S, -1, attn.head_dim).transpose(1, 2)  # (B, Hkv, S, d)
    return _rotate(k, cos, sin)


def attention_row(query: Tensor, keys: Tensor, allowed: Tensor, scaling: float) -> Tensor:
    """Head-averaged attention probabilities of ONE query per sample.

    ``a[b, j] = (1/H) · sum_h softmax_j(q_{b,h} · k_{b,g(h),j} · scaling)`` over the keys ``j`` with
    ``allowed[b, j]`` (0 elsewhere), where ``g(h) = h // (H / H_kv)`` is the key/value head of query head ``h``
    (grouped-query attention). Computed in float32; cost ``O(H · S · d)``.

    Args:
        query: ``(B, H, 1, d)`` rotated query.
        keys: ``(B, H_kv, S, d)`` rotated keys.
        allowed: ``(B, S)`` bool, the keys the query may attend to (causal and padding rules applied by the caller).
        scaling: the attention's scale (``1/sqrt(d)`` for Qwen2.5-Omni).

    Returns:
        ``(B, S)`` float32, each row sums to 1 over the allowed keys.
    """
    B, H, _, d = query.shape
    Hkv = keys.shape[1]
    q = query.float().reshape(B, Hkv, H // Hkv, d)  # (B, Hkv, n_rep, d): heads h = g * n_rep + r
    scores = torch.matmul(q, keys.float().transpose(-1, -2)) * scaling  # (B, Hkv, n_rep, S)
    scores = scores.masked_fill(~allowed[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1).mean(dim=(1, 2))  # (B, S)


# ---------------------------------------------------------------------------------------------- masks and cache
def attention_mask(allowed: Tensor, dtype: torch.dtype, backend: str) -> Tensor:
    """``(B, 1, Q, S)`` mask from ``allowed`` ``(B, Q, S)`` in the form the attention backend takes: bool (True =
    attend; 1 byte per entry) for ``sdpa``, additive float (0 / the dtype's minimum) for ``eager``."""
    if backend == "sdpa":
        return allowed[:, None]
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


def prefill_mask(valid: Tensor, dtype: torch.dtype, backend: str) -> Tensor | None:
    """The prefill mask of :func:`prefill_allowed`; None for ``sdpa`` without padding (SDPA's own causal path,
    which can use its flash kernels, exactly as HF's text model does)."""
    if backend == "sdpa" and bool(valid.all()):
        return None
    return attention_mask(prefill_allowed(valid), dtype, backend)


def prefill_allowed(valid: Tensor) -> Tensor:
    """``(B, S, S)`` causal attention pattern over real keys: ``i`` sees ``j`` iff ``j <= i`` and ``j`` is real.

    The diagonal is always allowed so that padding rows are never fully masked (no NaN; their outputs are unused
    and real rows never see padding keys).
    """
    S = valid.shape[1]
    idx = torch.arange(S, device=valid.device)
    causal = idx[None, :] <= idx[:, None]  # (S, S)
    return (causal[None] & valid[:, None, :]) | torch.eye(S, dtype=torch.bool, device=valid.device)[None]


def compact(allowed: Tensor) -> tuple[Tensor, Tensor]:
    """Indices of the True entries of ``allowed`` ``(B, S)``, in order, re-padded: ``(index, valid)`` both
    ``(B, W)`` with ``W`` = the largest count; padding slots point at some masked entry and are invalid."""
    count = allowed.sum(1)  # (B,)
    width = int(count.max()) if allowed.numel() else 0
    order = torch.sort((~allowed).to(torch.int8), dim=1, stable=True).indices[:, :width]  # allowed first
    valid = torch.arange(width, device=allowed.device)[None, :] < count[:, None]
    return order, valid


class HookCache:
    """Per-layer key/value store used by the hooked runner (the object attention layers call ``update`` on).

    ``update(k, v, layer)`` appends to that layer's entries (each layer keeps its own length) and returns what the
    attention uses: all entries, or — for layers ``>= gather_from`` while :meth:`restrict` is active — only the
    entries at ``index`` ``(B, W)`` (DyCoke stage 2). ``store=False`` keeps nothing (a prefill without cache).
    """

    def __init__(self, num_layers: int, store: bool = True) -> None:
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers
        self.store = store
        self.gather_from: int | None = None
        self.index: Tensor | None = None

    def restrict(self, from_layer: int | None, index: Tensor | None) -> None:
        """Layers ``>= from_layer`` attend only to cache entries ``index`` ``(B, W)`` until the next call."""
        self.gather_from, self.index = from_layer, index

    def length(self, layer: int) -> int:
        keys = self.keys[layer]
        return 0 if keys is None else keys.shape[2]

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if self.keys[layer_idx] is not None:
            key = torch.cat([self.keys[layer_idx], key], dim=2)  # (B, Hkv, S + q, d)
            value = torch.cat([self.values[layer_idx], value], dim=2)
        if self.store:
            self.keys[layer_idx], self.values[layer_idx] = key, value
        if self.index is not None and layer_idx >= self.gather_from:
            B, Hkv, _, d = key.shape
            idx = self.index[:, None, :, None].expand(B, Hkv, self.index.shape[1], d)  # (B, Hkv, W, d)
            return key.gather(2, idx), value.gather(2, idx)
        return key, value
