"""Attention-received audio pruning: top fraction, score floors (absolute / quantile / mean) and their interaction with
retention, batches, missing audio, and the thinker end to end."""

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
    return dict(grid_t=grid_t, side=2, video=torch.randn(4 * grid_t, 64, generator=g),
                audio=torch.randn(scores.shape[0], 64, generator=g), scores=scores)


# a permutation of 0..39: token i has score PERM[i]
PERM = torch.randperm(40, generator=torch.Generator().manual_seed(0)).float()


def ranks_with(condition) -> list[int]:
    return [i for i in range(40) if condition(float(PERM[i]))]


def test_top_fraction_keeps_the_highest_scores(config):
    """r = 0.25 of 40 tokens keeps the 10 with scores 30..39, wherever they sit."""
    tokens = build_tokens(config, [audio_sample(PERM, grid_t=3)])
    keep = METHODS.build("audio_attn", 0.25)(tokens).keep
    assert ranks_kept(tokens, keep, 0, "audio") == ranks_with(lambda s: s >= 30)
    assert len(ranks_kept(tokens, keep, 0, "video")) == 12  # video untouched


def test_ties_go_to_the_earlier_token(config):
    scores = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.5, 2.0])
    tokens = build_tokens(config, [audio_sample(scores)])
    assert ranks_kept(tokens, METHODS.build("audio_attn", 0.5)(tokens).keep, 0, "audio") == [1, 2, 3]


@pytest.mark.parametrize("mode, threshold, expected", [
    ("absolute", 25.0, ranks_with(lambda s: s >= 25)),
    ("absolute", 25.5, ranks_with(lambda s: s >= 26)),
    ("absolute", 100.0, []),  # nothing passes: a sample may keep no audio at all (documented)
    ("quantile", 0.75, ranks_with(lambda s: s >= 29.25)),  # 0.75-quantile of 0..39 = 0.75 * 39 = 29.25
    ("quantile", 0.0, list(range(40))),
    ("mean", 1.5, ranks_with(lambda s: s >= 29.25)),  # mean 19.5 -> tau = 29.25
])
def test_score_floor_alone_at_full_retention(config, mode, threshold, expected):
    tokens = build_tokens(config, [audio_sample(PERM)])
    method = METHODS.build("audio_attn", 1.0, threshold=threshold, threshold_mode=mode)
    assert ranks_kept(tokens, method(tokens).keep, 0, "audio") == expected


def test_retention_caps_the_threshold(config):
    """Floor 10 passes 30 tokens; r = 0.25 caps at 10 -> the top 10. Floor 35 passes 5 < 10 -> those 5."""
    tokens = build_tokens(config, [audio_sample(PERM)])
    capped = METHODS.build("audio_attn", 0.25, threshold=10.0)(tokens).keep
    assert ranks_kept(tokens, capped, 0, "audio") == ranks_with(lambda s: s >= 30)
    floored = METHODS.build("audio_attn", 0.25, threshold=35.0)(tokens).keep
    assert ranks_kept(tokens, floored, 0, "audio") == ranks_with(lambda s: s >= 35)


def test_mean_floor_is_scale_free(config):
    """Attention received shrinks with clip length; the 'mean' floor gives the same kept set at any score scale."""
    kept = []
    for scale in (1.0, 1e-3):
        tokens = build_tokens(config, [audio_sample(PERM * scale)])
        method = METHODS.build("audio_attn", 1.0, threshold=1.2, threshold_mode="mean")
        kept.append(ranks_kept(tokens, method(tokens).keep, 0, "audio"))
    assert kept[0] == kept[1] == ranks_with(lambda s: s >= 1.2 * 19.5)


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("params", [dict(), dict(threshold=0.7, threshold_mode="quantile"),
                                    dict(threshold=1.0, threshold_mode="mean")])
def test_batch_equals_samples_one_by_one(config, padding_side, params):
    g = torch.Generator().manual_seed(1)
    samples = [audio_sample(torch.rand(n, generator=g), grid_t=t, seed=n) for n, t in ((50, 3), (87, 0), (30, 5))]
    method = METHODS.build("audio_attn", 0.4, **params)
    batch = build_tokens(config, samples, padding_side=padding_side)
    keep = method(batch).keep
    for b, s in enumerate(samples):
        alone = build_tokens(config, [s])
        assert ranks_kept(batch, keep, b, "audio") == ranks_kept(alone, method(alone).keep, 0, "audio")
        assert len(ranks_kept(batch, keep, b, "video")) == 4 * s["grid_t"]
        if not params:
            assert len(ranks_kept(batch, keep, b, "audio")) == math.ceil(0.4 * s["audio"].shape[0] - 1e-9)
    assert bool(keep[batch.attention_mask.bool() & ~batch.av_mask].all())


def test_missing_audio_identity_and_parameters(config):
    video_only = build_tokens(config, [dict(grid_t=3, side=2, video=torch.randn(12, 64), audio=torch.zeros(0, 64),
                                            scores=torch.zeros(0))])
    with pytest.raises(MissingModalityError, match="audio_attn"):
        METHODS.build("audio_attn", 0.5)(video_only)
    tokens = build_tokens(config, [audio_sample(PERM)])
    assert torch.equal(METHODS.build("audio_attn", 1.0)(tokens).keep, tokens.attention_mask.bool())
    for params in (dict(threshold_mode="relative"), dict(threshold="high"), dict(threshold=float("inf")),
                   dict(threshold=1.5, threshold_mode="quantile"), dict(audio_scoring="local")):
        with pytest.raises(MethodConfigError):
            METHODS.build("audio_attn", 1.0, **params)
    method = METHODS.build("audio_attn", 0.5, audio_scoring="window")
    assert method.requires == {"audio_attention_window"}
    with pytest.raises(InputMismatchError, match="audio_attention_window"):
        method(tokens)  # the hand-built tokens carry the global scores only


@pytest.mark.parametrize("scoring", ["global", "window"])
def test_end_to_end_keeps_the_thinkers_top_scores(with_method, scoring):
    model = with_method("audio_attn", 0.3, audio_scoring=scoring)
    inputs = random_inputs(model, seconds=6, batch_size=2, seed=3)
    with torch.no_grad():
        out = model(**inputs)
    tokens = model.last_tokens
    for b, row in enumerate(model.last_stats.rows()):
        assert row["video_after"] == row["video_before"]
        src = out.source_index[b][out.attention_mask[b].bool()]
        assert bool((src[1:] > src[:-1]).all())
        audio_pos = tokens.audio_mask[b].nonzero().flatten()
        scores = tokens.extras[f"audio_attention_{scoring}"][b, audio_pos].tolist()
        k = math.ceil(0.3 * len(scores) - 1e-9)
        best = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]  # reference: plain Python
        assert torch.isin(audio_pos, src).nonzero().flatten().tolist() == sorted(best)
