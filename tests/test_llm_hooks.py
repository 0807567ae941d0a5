"""The in-LLM hook machinery: one-row attention, the layer-by-layer runner (prefill + decode), masks, stats, errors."""

from __future__ import annotations

import pytest
import torch
from naive_llm import causal, deep_tiny, naive_layer

from fusion.errors import MethodConfigError, SelectionError, UnsupportedOptionError
from fusion.model.hooked_lm import hooked_forward, last_token_row, run_prefill
from fusion.model.llm_hooks import (
    HookCache,
    LLMHook,
    attention_row,
    compact,
    layer_keys,
    layer_query,
    layer_token_counts,
)
from fusion.pruners.fastv import FastVHook
from fusion.testing import random_inputs
from fusion.tokens import KeepStats, Modality


@pytest.fixture(scope="module")
def deep():
    return deep_tiny()


@pytest.fixture(scope="module")
def deep_eager():
    return deep_tiny(attn="eager")  # same seed: same weights


class KeepAllPrefill(LLMHook):
    """A prefill hook that keeps everything: the runner alone must reproduce the stock model."""

    name = "keep-all"

    def __init__(self, layer: int) -> None:
        self.prefill_layer = layer

    def prefill_keep(self, row, modality, valid):
        return valid.clone()


def _media(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k != "input_ids"}


@pytest.mark.parametrize("layer_index", [0, 2])
@torch.no_grad()
def test_attention_row_equals_eager_attention_row(deep, deep_eager, layer_index):
    """The one row equals the last row of HF's eager softmax(QKᵀ) (output_attentions), averaged over heads."""
    g = torch.Generator().manual_seed(0)
    lm, lm_eager = deep.model.language_model, deep_eager.model.language_model
    x = torch.randn(2, 11, 64, generator=g)
    pos = torch.arange(11)[None, None].expand(3, 2, 11)
    ref = lm_eager(inputs_embeds=x, position_ids=pos, output_attentions=True, output_hidden_states=True)
    expected = ref.attentions[layer_index].mean(1)[:, -1]  # (B, S)
    layer_input = ref.hidden_states[layer_index]
    cos, sin = lm.rotary_emb(x, pos)
    valid = torch.ones(2, 11, dtype=torch.bool)
    ours = last_token_row(lm.layers[layer_index], layer_input, cos, sin, valid)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
    assert torch.allclose(ours.sum(1), torch.ones(2))


@torch.no_grad()
def test_attention_row_with_padding_matches_naive_row(deep):
    """Left- and right-padded rows: padding keys get 0, the rest equals the naive eager row of the real tokens."""
    lm = deep.model.language_model
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 9, 64, generator=g)
    pos = torch.arange(9)[None, None].expand(3, 1, 9)
    cos, sin = lm.rotary_emb(x, pos)
    _, probs = naive_layer(lm.layers[1], x, cos, sin, causal(9))
    expected = probs[0, -1]
    for pad_left in (True, False):
        real = torch.arange(12) >= 3 if pad_left else torch.arange(12) < 9  # (12,)
        xp, cp, sp = (torch.zeros(1, 12, t.shape[-1]) for t in (x, cos, sin))
        xp[:, real], cp[:, real], sp[:, real] = x, cos, sin
        row = last_token_row(lm.layers[1], xp, cp, sp, real[None])[0]
        torch.testing.assert_close(row[real], expected, atol=1e-6, rtol=1e-5)
        assert float(row[~real].abs().sum()) == 0.0


def test_attention_row_grouped_heads_golden():
    """Hand-built GQA case: 2 query heads share 1 kv head; keys chosen so softmax is known in closed form."""
    keys = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]]])  # (1, 1, 3, 2)
    query = torch.tensor([[[[2.0, 0.0]], [[0.0, 2.0]]]])  # (1, 2, 1, 2)
    allowed = torch.tensor([[True, True, False]])
    row = attention_row(query, keys, allowed, scaling=1.0)
    e = torch.exp(torch.tensor(2.0))
    # head 0: softmax(2, 0) over keys 0,1; head 1: softmax(0, 2); mean over heads = (0.5, 0.5, 0)
    expected = torch.tensor([[(e / (e + 1) + 1 / (e + 1)) / 2, (1 / (e + 1) + e / (e + 1)) / 2, 0.0]])
    torch.testing.assert_close(row, expected)


@torch.no_grad()
def test_layer_query_and_keys_match_the_cache_of_a_stock_forward(deep):
    """Keys recomputed from a layer's input equal what HF's attention stores in its KV cache."""
    lm = deep.model.language_model
    x = torch.randn(1, 6, 64, generator=torch.Generator().manual_seed(2))
    pos = torch.arange(6)[None, None].expand(3, 1, 6)
    out = lm(inputs_embeds=x, position_ids=pos, use_cache=True, output_hidden_states=True)
    cos, sin = lm.rotary_emb(x, pos)
    for i in range(len(lm.layers)):
        keys = layer_keys(lm.layers[i], out.hidden_states[i], cos, sin)
        torch.testing.assert_close(keys, out.past_key_values.layers[i].keys, atol=1e-6, rtol=1e-5)
    q = layer_query(lm.layers[0], x, cos, sin)
    assert q.shape == (1, 4, 6, 16)


@pytest.mark.parametrize("kind", [dict(video=True, audio=True), dict(video=True, audio=False),
                                  dict(video=False, audio=True)], ids=["av", "video", "audio"])
def test_keep_all_prefill_through_the_runner_equals_stock(deep, kind):
    """Layer-by-layer runner (explicit masks, a drop of nothing at layer 2) == HF's text model, padded batch."""
    inputs = random_inputs(deep, seconds=3, batch_size=2, seed=4, **kind)
    with torch.no_grad():
        ref = deep(**inputs)  # stock language model through the pre-LLM path ('none')
        pruned = deep.compress(inputs["input_ids"], **_media(inputs))
        hidden, batch = hooked_forward(deep, deep.last_tokens, pruned, KeepAllPrefill(2))
        logits = deep.lm_head(hidden)
    real = batch.attention_mask.bool()
    assert torch.equal(batch.source_index, ref.source_index)
    torch.testing.assert_close(logits[real], ref.logits[real], atol=1e-5, rtol=0)
    assert torch.equal(deep.last_stats.layer_tokens, real.sum(1, keepdim=True).expand(-1, 4))


def test_hook_cache_keeps_per_layer_lengths_and_gathers():
    cache = HookCache(2)
    k0 = torch.arange(2 * 1 * 5 * 3, dtype=torch.float).view(2, 1, 5, 3)
    cache.update(k0, -k0, 0)
    cache.update(k0[:, :, :2], -k0[:, :, :2], 1)
    assert (cache.length(0), cache.length(1)) == (5, 2)
    new = torch.full((2, 1, 1, 3), 100.0)
    cache.restrict(1, torch.tensor([[0, 2], [1, 2]]))
    k, v = cache.update(new, -new, 0)  # layer 0 < 1: everything
    assert k.shape[2] == 6 and torch.equal(v, -k)
    k, _ = cache.update(new, -new, 1)  # layer 1: gathered
    assert torch.equal(k[0, 0], torch.stack([k0[0, 0, 0], new[0, 0, 0]]))
    assert torch.equal(k[1, 0], torch.stack([k0[1, 0, 1], new[1, 0, 0]]))
    assert cache.length(1) == 3  # the full cache stays in memory


def test_compact_golden():
    allowed = torch.tensor([[True, False, True, True], [False, True, False, False]])
    index, valid = compact(allowed)
    assert index[0].tolist() == [0, 2, 3] and valid.tolist() == [[True] * 3, [True, False, False]]
    assert index[1, 0].item() == 1


def test_layer_token_counts_for_pre_llm_stats():
    stats = KeepStats(*(torch.tensor([v]) for v in (4, 2, 8, 4, 20, 14)))
    assert layer_token_counts(stats, 3).tolist() == [[14, 14, 14]]


def test_hook_layer_out_of_range_is_a_typed_error(deep):
    inputs = random_inputs(deep, seconds=2, seed=1)
    pruned = deep.compress(inputs["input_ids"], **_media(inputs))
    for layer in (0, 4):
        with pytest.raises(MethodConfigError, match="1 <= layer < 4"):
            run_prefill(deep, deep.last_tokens, pruned, KeepAllPrefill(layer), "right", use_cache=False)


def test_hook_that_drops_text_is_rejected(deep):
    class DropEverything(KeepAllPrefill):
        def prefill_keep(self, row, modality, valid):
            return torch.zeros_like(valid)

    inputs = random_inputs(deep, seconds=2, seed=1)
    pruned = deep.compress(inputs["input_ids"], **_media(inputs))
    with pytest.raises(SelectionError, match="text/special"):
        run_prefill(deep, deep.last_tokens, pruned, DropEverything(1), "right", use_cache=False)


def test_unsupported_backend_and_generate_options(deep):
    inputs = random_inputs(deep, seconds=2, seed=1)
    hook = FastVHook(1, 0.5, (Modality.VIDEO, Modality.AUDIO))
    deep.set_compressor(_Fixed(hook))
    try:
        for bad in (dict(do_sample=True), dict(num_beams=2), dict(streamer=object())):
            with pytest.raises(UnsupportedOptionError):
                deep.generate(**inputs, max_new_tokens=2, **bad)
        lm_config = deep.model.language_model.config
        lm_config._attn_implementation = "flash_attention_2"
        try:
            with pytest.raises(UnsupportedOptionError, match="sdpa"):
                deep(**inputs)
        finally:
            lm_config._attn_implementation = "sdpa"
    finally:
        from fusion import METHODS

        deep.set_compressor(METHODS.build("none"))


class _Fixed:
    """A compressor that keeps everything before the LLM and hands out a given hook."""

    def __init__(self, hook):
        self.hook = hook

    def __call__(self, tokens):
        return tokens.keep_all()

    def llm_hook(self):
        return self.hook


@torch.no_grad()
def test_eager_backend_gives_the_sdpa_results(deep, deep_eager):
    """The same weights on eager attention (additive float masks) and on SDPA (bool masks / causal path) give the
    same FastV prefill logits and the same greedy decode, on a padded batch."""
    from fusion import METHODS

    inputs = random_inputs(deep, seconds=3, batch_size=2, seed=9)
    outs = []
    for model in (deep, deep_eager):
        model.set_compressor(METHODS.build("fastv", retention=0.4, k=2))
        try:
            forward = model(**inputs)
            outs.append((forward, model.generate(**inputs, max_new_tokens=4, min_new_tokens=4)))
        finally:
            model.set_compressor(METHODS.build("none"))
    (sdpa, sdpa_gen), (eager, eager_gen) = outs
    assert torch.equal(sdpa.source_index, eager.source_index)
    real = sdpa.attention_mask.bool()
    torch.testing.assert_close(sdpa.logits[real], eager.logits[real], atol=1e-5, rtol=0)
    assert torch.equal(sdpa_gen, eager_gen)
