"""The language model run layer by layer for an in-LLM hook (see :mod:`fusion.model.llm_hooks` for the contract).

:func:`run_prefill` runs the decoder layers on a :class:`~fusion.model.keep.PrunedBatch`, dropping tokens before
``hook.prefill_layer`` (FastV); :func:`decode_step` runs one new token per sample against per-layer caches,
restricting layers ``>= hook.decode_layer`` to the entries the hook keeps (DyCoke stage 2). Both call HF's own
decoder layers (so LoRA-wrapped projections, SDPA and eager attention all work) with explicit additive masks built
from per-layer key masks; the TMRoPE cos/sin come from the model's rotary embedding on the kept tokens' ORIGINAL
ids. Supported attention backends: ``sdpa`` and ``eager``; sliding-window layers are not supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from fusion.errors import SelectionError, UnsupportedOptionError
from fusion.model.keep import PrunedBatch, apply_keep
from fusion.model.llm_hooks import (
    HookCache,
    HookStats,
    LLMHook,
    attention_mask,
    attention_row,
    compact,
    layer_keys,
    layer_query,
    prefill_mask,
)
from fusion.model.padding import padding_side_of
from fusion.tokens import AVTokens, KeepStats, Modality, Selection

BACKENDS = ("sdpa", "eager")


@dataclass
class HookedState:
    """What a hooked prefill leaves for decoding.

    Attributes:
        batch: the pruned batch the LAST layers saw (``source_index`` points into the unpruned input).
        hidden: ``(B, S_last, D)`` final hidden states (after the final norm).
        cache: the per-layer cache (None for a prefill without cache).
        key_masks: per layer, ``(B, S_l)`` bool real entries of its cache (grows by one column per decode step).
        prefill_modality: ``(B, S_p)`` modality of the prefill entries of layers ``>= decode_layer`` (DyCoke).
        next_position: ``(B,)`` TMRoPE id of the next token (``max kept id + 1``, then +1 per step).
        layer_tokens: ``(B, num_layers)`` real tokens per layer at prefill.
        decode_av_kept: per decode step, ``(B,)`` AV prefill entries attended by layers ``>= decode_layer``.
    """

    batch: PrunedBatch
    hidden: Tensor
    cache: HookCache | None
    key_masks: list[Tensor]
    prefill_modality: Tensor
    next_position: Tensor
    layer_tokens: Tensor
    decode_av_kept: list[Tensor] = field(default_factory=list)


def check_backend(thinker, hook: LLMHook) -> None:
    """Raise a typed error if the hooked runner cannot serve this model (backend, sliding window, hook layer)."""
    lm = thinker.model.language_model
    impl = lm.config._attn_implementation
    if impl not in BACKENDS:
        raise UnsupportedOptionError(
            f"{hook.name} runs inside the language model with explicit per-layer masks, which needs "
            f"attn_implementation in {BACKENDS}; this model uses {impl!r}. Load it with attn_implementation='sdpa'"
        )
    if getattr(lm, "has_sliding_layers", False):
        raise UnsupportedOptionError(f"{hook.name}: sliding-window attention layers are not supported by the hook")
    hook.check(len(lm.layers))


def batch_modality(tokens: AVTokens, batch: PrunedBatch) -> Tensor:
    """``(B, S)`` modality codes of a pruned batch's positions (PAD on padding)."""
    src = batch.source_index
    codes = tokens.modality.gather(1, src.clamp(min=0))
    return torch.where(src >= 0, codes, torch.full_like(codes, int(Modality.PAD)))


def drop_tokens(tokens: AVTokens, batch: PrunedBatch, hidden: Tensor, keep: Tensor, padding_side: str,
                pad_token_id: int) -> PrunedBatch:
    """Keep ``keep`` ``(B, S)`` of a running batch: ``apply_keep`` on the hidden states (ids, TMRoPE ids, mask and
    labels gathered with the same indices); ``source_index`` is composed so it still points into the unpruned
    input."""
    view = AVTokens(embeds=hidden, input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids, modality=batch_modality(tokens, batch),
                    special_ids=tokens.special_ids)
    out = apply_keep(view, Selection(keep=keep), labels=batch.labels, padding_side=padding_side,
                     pad_token_id=pad_token_id)
    rel = out.source_index  # (B, S') index into the running batch
    out.source_index = torch.where(rel >= 0, batch.source_index.gather(1, rel.clamp(min=0)), rel)
    return out


def _last_real(valid: Tensor) -> Tensor:
    """``(B,)`` index of each sample's last real position (left or right padding)."""
    idx = torch.arange(valid.shape[1], device=valid.device)
    return torch.where(valid, idx, torch.full_like(idx, -1)).amax(dim=1)


def last_token_row(layer, hidden: Tensor, cos: Tensor, sin: Tensor, valid: Tensor) -> Tensor:
    """``(B, S)`` attention row of each sample's last real token at ``layer``, whose INPUT is ``hidden``
    ``(B, S, D)``: :func:`~fusion.model.llm_hooks.attention_row` of ``q[last]`` against every real key ``<= last``."""
    B, S, D = hidden.shape
    last = _last_real(valid)  # (B,)
    pick = last[:, None, None]
    q = layer_query(layer, hidden.gather(1, pick.expand(B, 1, D)), cos.gather(1, pick.expand(B, 1, cos.shape[-1])),
                    sin.gather(1, pick.expand(B, 1, sin.shape[-1])))  # (B, H, 1, d)
    k = layer_keys(layer, hidden, cos, sin)  # (B, Hkv, S, d)
    allowed = valid & (torch.arange(S, device=valid.device)[None, :] <= last[:, None])
    return attention_row(q, k, allowed, layer.self_attn.scaling)


def run_prefill(thinker, tokens: AVTokens, pruned: PrunedBatch, hook: LLMHook, padding_side: str,
                use_cache: bool) -> HookedState:
    """Run every decoder layer on ``pruned``; before layer ``hook.prefill_layer`` keep ``hook.prefill_keep(row)``.

    Layers ``< K`` see the whole batch, layers ``>= K`` the kept tokens (re-padded on ``padding_side``); each
    layer's cache keeps what it saw. Records :class:`HookStats` in ``thinker.last_stats``.
    """
    check_backend(thinker, hook)
    lm = thinker.model.language_model
    layers = lm.layers
    pad = thinker.config.get_text_config().pad_token_id or 0
    cache = HookCache(len(layers)) if use_cache else None
    batch, hidden = pruned, pruned.inputs_embeds  # (B, S, D)
    valid = batch.attention_mask.bool()
    cos, sin = lm.rotary_emb(hidden, batch.position_ids)  # (B, S, d) each
    backend = lm.config._attn_implementation
    mask = prefill_mask(valid, hidden.dtype, backend)  # (B, 1, S, S) or None (causal, no padding)
    key_masks, counts, layer_input = [], [], hidden
    for i, layer in enumerate(layers):
        if i == hook.prefill_layer:
            row = last_token_row(layers[i - 1], layer_input, cos, sin, valid)  # (B, S) float32
            keep = hook.prefill_keep(row, batch_modality(tokens, batch), valid)
            batch = drop_tokens(tokens, batch, hidden, keep, padding_side, pad)
            hidden, valid = batch.inputs_embeds, batch.attention_mask.bool()
            cos, sin = lm.rotary_emb(hidden, batch.position_ids)
            mask = prefill_mask(valid, hidden.dtype, backend)
        layer_input = hidden
        hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin), past_key_values=cache,
                       use_cache=use_cache)
        key_masks.append(valid)
        counts.append(valid.sum(1))
    hidden = lm.norm(hidden)
    positions = batch.position_ids.masked_fill(~valid[None], -1)
    state = HookedState(batch=batch, hidden=hidden, cache=cache, key_masks=key_masks,
                        prefill_modality=batch_modality(tokens, batch), next_position=positions.amax(dim=(0, 2)) + 1,
                        layer_tokens=torch.stack(counts, dim=1))
    record_stats(thinker, tokens, state, hook)
    return state


def record_stats(thinker, tokens: AVTokens, state: HookedState, hook: LLMHook) -> None:
    """``thinker.last_stats`` = :class:`HookStats`: counts of what the last layers saw, per-layer lengths, and the
    decode-time AV entries (stage 2)."""
    kept = torch.zeros_like(tokens.attention_mask, dtype=torch.bool)  # (B, L) over the unpruned input
    src = state.batch.source_index
    kept.scatter_(1, src.clamp(min=0), src >= 0)
    kept &= tokens.attention_mask.bool()
    base = KeepStats.from_keep(tokens, kept)
    decode = torch.stack(state.decode_av_kept, dim=1) if state.decode_av_kept else None
    av_total = None
    if hook.decode_layer is not None:
        av_total = ((state.prefill_modality == Modality.VIDEO) | (state.prefill_modality == Modality.AUDIO)).sum(1)
    thinker.last_stats = HookStats(**vars(base), layer_tokens=state.layer_tokens, prune_layer=hook.prefill_layer,
                                   decode_av_kept=decode, decode_av_total=av_total)


def decode_step(thinker, tokens: AVTokens, state: HookedState, hook: LLMHook, token: Tensor) -> Tensor:
    """Feed one token per sample ``(B,)`` at TMRoPE id ``state.next_position``; return the next logits ``(B, V)``.

    Every layer attends to its cache's real entries plus the new token. With ``hook.decode_layer = L``, after
    layer ``L-1`` the current token's row at ``L-1`` (``attention_row`` of its query against that layer's cache)
    goes to ``hook.decode_keep``; layers ``>= L`` then attend only to the kept prefill entries and to every
    generated token (cache gather, original order).
    """
    lm = thinker.model.language_model
    layers, cache, backend = lm.layers, state.cache, lm.config._attn_implementation
    B = token.shape[0]
    hidden = thinker.model.get_input_embeddings()(token)[:, None]  # (B, 1, D)
    pos = state.next_position[None, :, None].expand(3, B, 1)  # (3, B, 1)
    cos, sin = lm.rotary_emb(hidden, pos)  # (B, 1, d)
    ones = torch.ones(B, 1, dtype=torch.bool, device=token.device)
    state.key_masks = [torch.cat([m, ones], dim=1) for m in state.key_masks]  # (B, S_l + 1)
    cache.restrict(None, None)
    restricted_mask, layer_input = None, hidden
    L = hook.decode_layer
    for i, layer in enumerate(layers):
        if L is not None and i == L:
            restricted_mask = _restrict(state, hook, layers[L - 1], layer_input, cos, sin, hidden.dtype, backend)
        if restricted_mask is not None:
            mask = restricted_mask
        else:
            mask = attention_mask(state.key_masks[i][:, None, :], hidden.dtype, backend)  # (B, 1, 1, S_l + 1)
        layer_input = hidden
        hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin), past_key_values=cache,
                       use_cache=True)
    cache.restrict(None, None)
    state.next_position = state.next_position + 1
    return thinker.lm_head(lm.norm(hidden))[:, 0]  # (B, V)


def _restrict(state: HookedState, hook: LLMHook, prev_layer, layer_input: Tensor, cos: Tensor, sin: Tensor,
              dtype: torch.dtype, backend: str) -> Tensor | None:
    """Ask the hook which prefill entries layers >= L attend to; set the cache gather; return their mask."""
    L = hook.decode_layer
    keys = state.cache.keys[L - 1]  # (B, Hkv, S + 1, d): layer L-1 already stored the current token
    q = layer_query(prev_layer, layer_input, cos, sin)  # (B, H, 1, d)
    row = attention_row(q, keys, state.key_masks[L - 1], prev_layer.self_attn.scaling)  # (B, S + 1)
    n_prefill = state.prefill_modality.shape[1]
    modality = state.prefill_modality
    pool = (modality == Modality.VIDEO) | (modality == Modality.AUDIO)
    keep = hook.decode_keep(row[:, :n_prefill], modality)
    if keep is None:
        state.decode_av_kept.append(pool.sum(1))
        return None
    real = modality != Modality.PAD
    if bool((real & ~pool & ~keep).any()):
        raise SelectionError(f"{hook.name}: decode_keep dropped text/special cache entries; keep every non-AV entry")
    allowed = state.key_masks[L].clone()  # (B, S + 1)
    allowed[:, :n_prefill] &= keep
    index, index_valid = compact(allowed)  # (B, W)
    state.cache.restrict(L, index)
    state.decode_av_kept.append((pool & keep).sum(1))
    return attention_mask(index_valid[:, None, :], dtype, backend)  # (B, 1, 1, W)


def hooked_forward(thinker, tokens: AVTokens, pruned: PrunedBatch, hook: LLMHook, padding_side: str | None = None,
                   **kwargs) -> tuple[Tensor, PrunedBatch]:
    """Prefill-only forward for the thinker's ``forward`` (training, scoring): ``(hidden (B, S, D), batch)``.

    The tokens the hook drops are re-padded on ``padding_side`` (None: the side ``pruned`` is padded on). No cache
    is returned (decode hooked models with ``generate``); ``output_attentions`` / ``output_hidden_states`` are not
    available on this path.
    """
    unsupported = sorted(k for k in ("output_attentions", "output_hidden_states") if kwargs.get(k))
    if unsupported:
        raise UnsupportedOptionError(f"{hook.name}: {unsupported} are not available when a method acts inside the "
                                     "language model; drop them (the hook computes its attention rows itself)")
    padding_side = padding_side_of(pruned.attention_mask) if padding_side is None else padding_side
    state = run_prefill(thinker, tokens, pruned, hook, padding_side, use_cache=False)
    return state.hidden, state.batch
