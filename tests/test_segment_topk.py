"""Segmentwise audio top-K: golden keep sets on hand-built layouts, the floor(K/S) rule, batches, end to end."""

from __future__ import annotations

import math

import pytest
import torch
from av_layouts import build_tokens, ranks_kept

from fusion import METHODS
from fusion.errors import InputMismatchError, MethodConfigError, MissingModalityError
from fusion.testing import random_inputs


@pytest.fixture(scope="module")
def config(tiny):
    return tiny[0].config


def audio_sample(scores: torch.Tensor, grid_t: int = 0, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = scores.shape[0]
    return dict(grid_t=grid_t, side=2, video=torch.randn(4 * grid_t, 64, generator=g),
                audio=torch.randn(n, 64, generator=g), scores=scores)


def test_golden_keeps_the_top_of_every_segment_not_the_global_top(config):
    """40 tokens, S = 4, r = .5 -> K = 20, 5 per segment of 10. Segment 0 outscores everything (a global top-20 would
    take all of it), but inside every segment the odd places outscore the even ones -> keep exactly the odd ranks."""
    i = torch.arange(40)
    scores = (i < 10) * 1000.0 + (i % 2) * 10.0 + i / 100
    tokens = build_tokens(config, [audio_sample(scores)])
    keep = METHODS.build("segment_topk", retention=0.5, segments=4)(tokens).keep
    assert ranks_kept(tokens, keep, 0, "audio") == list(range(1, 40, 2))


@pytest.mark.parametrize("retention, kept", [(0.25, 10), (0.3, 10), (0.55, 20)])
def test_remainder_is_not_kept(config, retention, kept):
    """N = 37, S = 10: segments floor(i * 10 / 37) start at 0,4,8,12,15,19,23,26,30,34. K = ceil(r N) = 10, 12, 21
    -> floor(K / S) = 1, 1, 2 per segment; with increasing scores each segment keeps its last token(s)."""
    tokens = build_tokens(config, [audio_sample(torch.arange(37, dtype=torch.float))])
    keep = METHODS.build("segment_topk", retention=retention)(tokens).keep
    got = ranks_kept(tokens, keep, 0, "audio")
    assert len(got) == kept == 10 * (math.ceil(retention * 37 - 1e-9) // 10)
    ends = [3, 7, 11, 14, 18, 22, 25, 29, 33, 36]
    per = kept // 10
    assert got == sorted(e - j for e in ends for j in range(per))


def test_fewer_tokens_than_segments_keeps_no_audio(config):
    """N = 20, r = .25 -> K = 5 < S = 10 -> floor(K/S) = 0: no audio token is kept (the paper's rule)."""
    tokens = build_tokens(config, [audio_sample(torch.rand(20))])
    assert ranks_kept(tokens, METHODS.build("segment_topk", retention=0.25)(tokens).keep, 0, "audio") == []


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batch_equals_samples_one_by_one_and_video_is_untouched(config, padding_side):
    g = torch.Generator().manual_seed(1)
    samples = [audio_sample(torch.rand(n, generator=g), grid_t=t, seed=n) for n, t in ((100, 4), (137, 6), (60, 0))]
    method = METHODS.build("segment_topk", retention=0.3)
    batch = build_tokens(config, samples, padding_side=padding_side)
    keep = method(batch).keep
    for b, s in enumerate(samples):
        alone = build_tokens(config, [s])
        assert ranks_kept(batch, keep, b, "audio") == ranks_kept(alone, method(alone).keep, 0, "audio")
        n = s["audio"].shape[0]
        assert len(ranks_kept(batch, keep, b, "audio")) == 10 * (math.ceil(0.3 * n - 1e-9) // 10)
        assert len(ranks_kept(batch, keep, b, "video")) == 4 * s["grid_t"]  # every video token kept
    assert bool(keep[batch.attention_mask.bool() & ~batch.av_mask].all())


def test_video_only_raises_and_identity_at_full_retention(config):
    sample = dict(grid_t=4, side=2, video=torch.randn(16, 64), audio=torch.zeros(0, 64), scores=torch.zeros(0))
    tokens = build_tokens(config, [sample])
    with pytest.raises(MissingModalityError, match="segment_topk"):
        METHODS.build("segment_topk", retention=0.3)(tokens)
    assert torch.equal(METHODS.build("segment_topk", retention=1.0)(tokens).keep, tokens.attention_mask.bool())


def test_parameters_and_missing_scores(config):
    for bad in (0, -2, 2.5, True):
        with pytest.raises(MethodConfigError, match="segments"):
            METHODS.build("segment_topk", retention=0.3, segments=bad)
    with pytest.raises(MethodConfigError, match="audio_scoring"):
        METHODS.build("segment_topk", retention=0.3, audio_scoring="local")
    method = METHODS.build("segment_topk", retention=0.3, audio_scoring="window")
    assert method.requires == {"audio_attention_window"}
    tokens = build_tokens(config, [audio_sample(torch.rand(30))])  # carries the global scores only
    with pytest.raises(InputMismatchError, match="audio_attention_window"):
        method(tokens)


@pytest.mark.parametrize("scoring", ["global", "window"])
def test_end_to_end_through_the_thinker(with_method, scoring):
    model = with_method("segment_topk", 0.25, segments=4, audio_scoring=scoring)
    inputs = random_inputs(model, seconds=6, batch_size=2, seed=3)
    with torch.no_grad():
        out = model(**inputs)
    for b, row in enumerate(model.last_stats.rows()):
        assert row["audio_after"] == 4 * (math.ceil(0.25 * row["audio_before"] - 1e-9) // 4)
        assert row["video_after"] == row["video_before"]
        src = out.source_index[b][out.attention_mask[b].bool()]
        assert bool((src[1:] > src[:-1]).all())  # kept in original order
        # the kept audio tokens are the top ones of each segment by the thinker's own scores
        tokens = model.last_tokens
        scores = tokens.extras[f"audio_attention_{scoring}"][b][tokens.audio_mask[b]]
        kept = set(torch.isin(tokens.audio_mask[b].nonzero().flatten(), src).nonzero().flatten().tolist())
        n = scores.shape[0]
        per = (math.ceil(0.25 * n - 1e-9) // 4)
        for s in range(4):  # reference: plain Python per segment
            seg = [i for i in range(n) if i * 4 // n == s]
            best = sorted(seg, key=lambda i: (-float(scores[i]), i))[:per]
            assert set(best) <= kept
