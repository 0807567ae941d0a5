"""The trainer's per-sample token cache (train/token_cache.py): the assembled micro-batch equals build_tokens on it,
entries are built alone (independent of the batch they first came in), reused, bounded by the budget, and a
mismatched or left-padded batch is a typed error."""

from __future__ import annotations

import pytest
import torch

from fusion.errors import InputMismatchError
from train.config import SyntheticConfig
from train.split_search import token_inputs
from train.synthetic import SyntheticSource
from train.token_cache import TokenCache


@pytest.fixture(scope="module")
def source(tiny):
    model, processor = tiny
    return SyntheticSource(SyntheticConfig(n_samples=6, seconds_min=2, seconds_max=5), processor, model.config)


def _batch(source, indices):
    batch = source.collate([source.example(i) for i in indices])
    batch.pop("labels")
    return batch


def _cache(model, source, budget=2**30):
    return TokenCache(lambda i: _batch(source, [i]), lambda b: token_inputs(model, b), budget)


def _assert_same_tokens(got, want):
    for name in ("input_ids", "attention_mask", "position_ids", "modality", "time_group", "time_id", "grid_place"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert torch.allclose(got.embeds, want.embeds, atol=1e-5, rtol=1e-4)


def test_the_assembled_batch_equals_build_tokens_on_it(tiny, source):
    model = tiny[0]
    cache = _cache(model, source)
    with torch.no_grad():
        for indices in ([0, 3, 5], [5, 1], [2, 0, 3, 4]):  # other partners, other padding widths
            batch = _batch(source, indices)
            _assert_same_tokens(cache.tokens(model, indices, batch), model.build_tokens(**token_inputs(model, batch)))
    assert cache.misses == 6 and cache.hits == 3  # each sample built once; 0, 3, 5 reused
    assert len(cache.entries) == 6


def test_an_entry_is_built_alone_so_it_does_not_depend_on_its_first_batch(tiny, source):
    model = tiny[0]
    first, second = _cache(model, source), _cache(model, source)
    first.tokens(model, [4, 1], _batch(source, [4, 1]))
    second.tokens(model, [2, 4, 0], _batch(source, [2, 4, 0]))
    with torch.no_grad():
        alone = model.build_tokens(**token_inputs(model, _batch(source, [4])))
    for cache in (first, second):
        assert torch.equal(cache.entries[4].embeds, alone.embeds[0])
        assert torch.equal(cache.entries[4].position_ids, alone.position_ids[:, 0])


def test_the_budget_stops_adding_entries_but_every_batch_is_still_served(tiny, source):
    model = tiny[0]
    probe = _cache(model, source)
    probe.tokens(model, [0], _batch(source, [0]))
    one = probe.entries[0].nbytes
    cache = _cache(model, source, budget=one)  # room for sample 0 (or one no larger) only
    batch = _batch(source, [0, 1, 2])
    cache.tokens(model, [0, 1, 2], batch)
    assert list(cache.entries) == [0] and cache.bytes == one
    with torch.no_grad():
        want = model.build_tokens(**token_inputs(model, batch))
    _assert_same_tokens(cache.tokens(model, [0, 1, 2], batch), want)
    assert cache.hits == 1 and cache.misses == 5  # 1 and 2 are rebuilt: not cached


def test_a_batch_of_other_samples_or_left_padding_is_a_typed_error(tiny, source):
    model = tiny[0]
    cache = _cache(model, source)
    lengths = [int(_batch(source, [i])["attention_mask"].sum()) for i in range(6)]
    pair = [0, next(i for i in range(6) if lengths[i] != lengths[0])]  # two lengths: the batch has padding
    batch = _batch(source, pair)
    with pytest.raises(InputMismatchError, match="not the sample cached under that index"):
        cache.tokens(model, pair[::-1], batch)
    left = dict(batch, input_ids=batch["input_ids"].flip(1), attention_mask=batch["attention_mask"].flip(1))
    with pytest.raises(InputMismatchError, match="right-padded"):
        cache.tokens(model, pair, left)


def test_a_negative_cache_budget_is_a_config_error():
    from fusion.config import load_config
    from fusion.errors import ConfigError
    from train.config import RunConfig

    with pytest.raises(ConfigError, match="token_cache_gib"):
        load_config(RunConfig, "configs/fusion.yaml", ["train.token_cache_gib=-1"])
