"""The trainer's per-sample token cache (train/token_cache.py): the assembled micro-batch equals build_tokens on it,
a sample's entry depends on its chunk alone (not on the batch it first came in), entries are reused, a set that
does not fit the budget turns the cache off, and a mismatched or left-padded batch is a typed error."""

from __future__ import annotations

import pytest
import torch

from fusion.errors import InputMismatchError
from train.config import SyntheticConfig
from train.split_search import token_inputs
from train.synthetic import SyntheticSource
from train.token_cache import TokenCache

SIZE, CHUNK = 6, 2


@pytest.fixture(scope="module")
def source(tiny):
    model, processor = tiny
    return SyntheticSource(SyntheticConfig(n_samples=SIZE, seconds_min=2, seconds_max=5), processor, model.config)


def _batch(source, indices):
    batch = source.collate([source.example(i) for i in indices])
    batch.pop("labels")
    return batch


def _cache(model, source, budget=2**30):
    return TokenCache(lambda indices: _batch(source, indices), lambda b: token_inputs(model, b), SIZE, budget, CHUNK)


def _built(model, source, indices):
    with torch.no_grad():
        return model.build_tokens(**token_inputs(model, _batch(source, indices)))


def _assert_same_tokens(got, want):
    for name in ("input_ids", "attention_mask", "position_ids", "modality", "time_group", "time_id", "grid_place"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert torch.allclose(got.embeds, want.embeds, atol=1e-5, rtol=1e-4)


def test_the_assembled_batch_equals_build_tokens_on_it(tiny, source):
    model = tiny[0]
    cache = _cache(model, source)
    for indices in ([0, 3, 5], [5, 1], [2, 0, 3, 4]):  # other partners, other padding widths
        _assert_same_tokens(cache.tokens(model, indices, _batch(source, indices)), _built(model, source, indices))
    assert len(cache.entries) == SIZE and cache.bytes == sum(e.nbytes for e in cache.entries.values())
    assert cache.misses == 3 and cache.hits == 6  # 0, 3, 5 each built their chunk; the rest came from the cache


def test_an_entry_depends_on_its_chunk_alone_not_on_its_first_batch(tiny, source):
    model = tiny[0]
    first, second = _cache(model, source), _cache(model, source)
    first.tokens(model, [4, 1], _batch(source, [4, 1]))
    second.tokens(model, [2, 0, 4], _batch(source, [2, 0, 4]))
    chunk = _built(model, source, [4, 5])  # sample 4's chunk, built together
    for cache in (first, second):
        assert torch.equal(cache.entries[4].embeds, chunk.embeds[0, chunk.attention_mask[0].bool()])
        assert torch.equal(cache.entries[4].position_ids, chunk.position_ids[:, 0, chunk.attention_mask[0].bool()])


def test_a_set_larger_than_the_budget_turns_the_cache_off(tiny, source):
    model = tiny[0]
    cache = _cache(model, source, budget=1000)  # far below six samples
    assert cache.tokens(model, [0, 1], _batch(source, [0, 1])) is None
    assert cache.off and not cache.entries and "off" in cache.describe()
    assert cache.tokens(model, [2], _batch(source, [2])) is None and cache.misses == 1  # nothing built any more
    assert _cache(model, source, budget=0).tokens(model, [0], _batch(source, [0])) is None


def test_a_batch_of_other_samples_or_left_padding_is_a_typed_error(tiny, source):
    model = tiny[0]
    cache = _cache(model, source)
    lengths = [int(_batch(source, [i])["attention_mask"].sum()) for i in range(SIZE)]
    pair = [0, next(i for i in range(SIZE) if lengths[i] != lengths[0])]  # two lengths: the batch has padding
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
