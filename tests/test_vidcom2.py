"""VidCom²: kernel, channel choice, per-frame budgets, unique-frame golden layouts, and the thinker end to end."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fusion.errors import InputMismatchError, MethodConfigError, MissingModalityError
from fusion.model.synthetic import synthetic_tokens
from fusion.pruners import METHODS
from fusion.pruners.vidcom2 import (
    code_scores,
    frame_budgets,
    low_variance_channels,
    multiscale_gaussian,
    paper_scores,
    vidcom2_keep,
)
from fusion.testing import random_inputs
from fusion.tokens import Modality

T, M = 4, 16
UNIQUE_FRAME = 2
UNIQUE_SLOTS = [1, 3, 4, 6, 9, 10, 12, 15]  # 8 of the unique frame's 16 tokens point elsewhere


def unique_frame_video(dim: int = 32, noise_channels: bool = True, seed: int = 0) -> torch.Tensor:
    """``(T, M, dim)``: every token ~ direction ``a`` except 8 tokens of frame 2 ~ direction ``b`` (orthogonal).

    ``a``/``b`` live in the first half of the channels with tiny variance; with ``noise_channels`` the second half
    is loud noise (std 5), so the official code's low-variance-channel step must discard it to see the structure.
    """
    g = torch.Generator().manual_seed(seed)
    half = dim // 2
    a = torch.zeros(half)
    a[: half // 2] = 0.1
    b = torch.zeros(half)
    b[half // 2:] = 0.1
    signal = a.expand(T, M, half).clone()
    signal[UNIQUE_FRAME, UNIQUE_SLOTS] = b
    signal += 0.003 * torch.randn(T, M, half, generator=g)
    noise = 5.0 * torch.randn(T, M, dim - half, generator=g) if noise_channels else torch.zeros(T, M, dim - half)
    return torch.cat([signal, noise], dim=-1)


def test_gaussian_kernel_on_known_vectors():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [4.0, 4.0]])
    c = torch.tensor([1.0, 0.0])
    alphas = (1 / 8, 1 / 4, 1 / 2, 1, 2)
    expected = [sum(math.exp(-d2 / (2 * a)) for a in alphas) for d2 in (1.0, 0.0, 25.0)]
    torch.testing.assert_close(multiscale_gaussian(x, c), torch.tensor(expected))
    assert expected[1] == 5.0  # identical vectors: one per bandwidth


def test_low_variance_channels_are_the_constructed_ones():
    g = torch.Generator().manual_seed(0)
    x = 3.0 * torch.randn(300, 8, generator=g)
    quiet = [6, 1, 7, 4]  # variances 1e-6, 4e-6, 9e-6, 1.6e-5 around a large mean (the mean must not matter)
    for i, ch in enumerate(quiet):
        x[:, ch] = 7.0 + 1e-3 * (i + 1) * torch.randn(300, generator=g)
    assert set(low_variance_channels(x, 0.5).tolist()) == set(quiet)
    assert set(low_variance_channels(x, 0.25).tolist()) == {6, 1}


def test_frame_budgets_peaked_allocation_and_clamp():
    s = torch.tensor([-1.0, -1.0, 0.0, -1.0])  # frame 2 far more unique: at tau 0.01, p ~ one-hot
    r, k = frame_budgets(s, 0.25, M)
    torch.testing.assert_close(r, torch.tensor([0.25 * 0.75, 0.25 * 0.75, 0.25 * 1.75, 0.25 * 0.75]))
    assert k.tolist() == [3, 3, 7, 3] and int(k.sum()) == 0.25 * T * M
    r, k = frame_budgets(s, 0.6, M)  # 0.6 * 1.75 = 1.05 -> clamped at 1
    torch.testing.assert_close(r, torch.tensor([0.45, 0.45, 1.0, 0.45]))
    assert k.tolist() == [7, 7, 16, 7]
    _, k = frame_budgets(s, 0.01, M)  # round(0.0075 * 16) = 0 -> at least one token per frame
    assert k.tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize("scoring", ["code", "paper"])
def test_frame_budgets_follow_the_formula(scoring):
    s = [0.3, 0.1, -0.2, 0.05, 0.0]
    tau, R, m = 0.2, 0.3, 100
    e = [math.exp((v - max(s)) / tau) for v in s]
    sigma = [v / sum(e) for v in e]
    expected = [R * (1 + p - 1 / len(s)) for p in sigma]  # r_t = R (1 + sigma_t - 1/T)
    r, k = frame_budgets(torch.tensor(s), R, m, temperature=tau, scoring=scoring)
    torch.testing.assert_close(r, torch.tensor(expected), atol=1e-6, rtol=0)
    assert k.tolist() == [round(v * m) for v in expected]
    assert abs(int(k.sum()) - R * len(s) * m) <= len(s) / 2  # the mean stays R up to rounding


def test_unique_frame_gets_the_larger_budget_and_keeps_its_unique_tokens():
    frames = unique_frame_video()
    _, uniqueness = code_scores(frames)
    assert int(uniqueness.argmax()) == UNIQUE_FRAME
    keep = vidcom2_keep(frames, 0.25)  # budgets as in the peaked-allocation test: 3, 3, 7, 3
    assert keep.sum(1).tolist() == [3, 3, 7, 3]
    assert set(keep[UNIQUE_FRAME].nonzero().flatten().tolist()) < set(UNIQUE_SLOTS)


def test_low_variance_channels_are_what_makes_the_code_scoring_see_the_structure():
    """With every channel (channel_ratio=1) the loud noise dominates and the unique frame is no longer found."""
    frames = unique_frame_video()
    keep = vidcom2_keep(frames, 0.25, channel_ratio=1.0)
    assert keep.sum(1).tolist() != [3, 3, 7, 3]
    assert not set(keep[UNIQUE_FRAME].nonzero().flatten().tolist()) <= set(UNIQUE_SLOTS)


def test_paper_scoring_on_the_same_layout_without_noise():
    frames = unique_frame_video(noise_channels=False)
    _, uniqueness = paper_scores(frames)
    assert int(uniqueness.argmax()) == UNIQUE_FRAME
    keep = vidcom2_keep(frames, 0.25, scoring="paper")
    assert keep.sum(1).tolist() == [3, 3, 7, 3]
    assert set(keep[UNIQUE_FRAME].nonzero().flatten().tolist()) < set(UNIQUE_SLOTS)


def _planted_tokens(config):
    """4 s of video (4 grids of 8x8 patches = 16 tokens each), 100 audio tokens interleaved; video = golden layout."""
    tokens = synthetic_tokens(config, grid_t=T, grid_hw=(8, 8), n_audio=100, seed=1)
    dim = tokens.embeds.shape[-1]
    tokens.embeds[tokens.video_mask] = unique_frame_video(dim).reshape(T * M, dim)
    return tokens


def test_select_on_the_interleaved_layout(tiny):
    tokens = _planted_tokens(tiny[0].config)
    keep = METHODS.build("vidcom2", 0.25)(tokens).keep
    video = tokens.video_mask & keep
    place = tokens.grid_place[video]  # (n_kept, 3) (t, h, w)
    per_frame = torch.bincount(place[:, 0], minlength=T)
    assert per_frame.tolist() == [3, 3, 7, 3]
    slots = place[place[:, 0] == UNIQUE_FRAME][:, 1] * 4 + place[place[:, 0] == UNIQUE_FRAME][:, 2]
    assert set(slots.tolist()) < set(UNIQUE_SLOTS)
    real = tokens.attention_mask.bool()
    assert bool(keep[real & ~tokens.video_mask].all()), "audio, text and markers are never dropped"


def test_retention_one_keeps_everything_and_bad_parameters_are_errors(tiny):
    tokens = _planted_tokens(tiny[0].config)
    assert bool(METHODS.build("vidcom2", 1.0)(tokens).keep.all())
    with pytest.raises(MethodConfigError, match="scoring"):
        METHODS.build("vidcom2", 0.25, scoring="cosine")
    with pytest.raises(MethodConfigError, match="temperature"):
        METHODS.build("vidcom2", 0.25, temperature=0)
    with pytest.raises(MethodConfigError, match="channel_ratio"):
        METHODS.build("vidcom2", 0.25, channel_ratio=1.5)
    with pytest.raises(InputMismatchError, match="video_grid_thw"):
        METHODS.build("vidcom2", 0.25)(dataclasses.replace(tokens, video_grid_thw=None))


def test_audio_only_input_is_a_missing_modality(tiny):
    tokens = synthetic_tokens(tiny[0].config, n_audio=100)
    with pytest.raises(MissingModalityError, match="'vidcom2' needs video"):
        METHODS.build("vidcom2", 0.25)(tokens)


# ---------------------------------------------------------------------------------------- through the thinker
def _kept_sets(out) -> list[list[int]]:
    return [out.source_index[b][out.attention_mask[b].bool()].tolist() for b in range(out.source_index.shape[0])]


@pytest.mark.parametrize("scoring", ["code", "paper"])
def test_thinker_batch_equals_each_sample_alone(with_method, scoring):
    from fusion.testing import sample_alone

    model = with_method("vidcom2", 0.3, scoring=scoring)
    inputs = random_inputs(model, seconds=4, batch_size=2, seed=9, frame_size=112)  # 16 tokens per grid
    with torch.no_grad():
        batched = _kept_sets(model(**inputs))
        rows = model.last_stats.rows()
        for b in range(2):
            pad = int((inputs["attention_mask"][b] == 0).sum())
            alone = _kept_sets(model(**sample_alone(inputs, b)))[0]
            assert [i - pad for i in batched[b]] == alone
    for row in rows:  # audio untouched; video keeps about 30 %, at least one token per grid
        assert row["audio_after"] == row["audio_before"]
        grids = row["video_before"] // 16
        assert grids <= row["video_after"] <= row["video_before"]
        assert abs(row["video_after"] - 0.3 * row["video_before"]) <= 0.3 * 16 * grids


def test_thinker_video_only_and_audio_only(with_method):
    model = with_method("vidcom2", 0.25)
    with torch.no_grad():
        out = model(**random_inputs(model, seconds=4, seed=2, audio=False, frame_size=112))
    (row,) = model.last_stats.rows()
    assert row["audio_before"] == 0 and row["video_before"] == 4 * 16
    tokens = model.last_tokens
    kept = out.source_index[0][out.attention_mask[0].bool()]
    grids = tokens.grid_place[0, kept][tokens.modality[0, kept] == Modality.VIDEO][:, 0]
    assert set(grids.tolist()) == {0, 1, 2, 3} and row["video_after"] < row["video_before"]
    with pytest.raises(MissingModalityError):
        model(**random_inputs(model, seconds=4, seed=2, video=False))
