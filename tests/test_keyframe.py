"""Keyframe temporal pruning: keyframes known by construction for every rule, dissimilar tokens kept, the per-block
budget rule, batches, missing video, and the thinker end to end."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from av_layouts import stack_tokens

from fusion.errors import InputMismatchError, MethodConfigError, MissingModalityError
from fusion.model.synthetic import synthetic_tokens
from fusion.pruners import METHODS
from fusion.pruners.keyframe import frame_budgets
from fusion.testing import random_inputs

D = 64  # the tiny thinker's hidden size
M = 4  # merged tokens per grid on a (4, 4)-patch grid


@pytest.fixture(scope="module")
def config(tiny):
    return tiny[0].config


def with_frames(config, frames: torch.Tensor, n_audio: int | None = None, seed: int = 0):
    """Synthetic tokens of one sample whose video frames (grids) are ``frames`` ``(T, M, D)``; audio covers the clip
    (25 tokens per second, 1 s per grid) unless ``n_audio`` is given."""
    T = frames.shape[0]
    tokens = synthetic_tokens(config, grid_t=T, grid_hw=(4, 4), n_audio=25 * T if n_audio is None else n_audio,
                              seed=seed)
    tokens.embeds[0, tokens.video_mask[0]] = frames.reshape(T * M, D)
    return tokens


def kept_per_frame(tokens, keep, b: int = 0) -> list[int]:
    video = tokens.video_mask[b]
    return keep[b][video].reshape(-1, M).sum(1).tolist()


def kept_places(tokens, keep, frame: int, b: int = 0) -> list[int]:
    video = tokens.video_mask[b]
    return keep[b][video].reshape(-1, M)[frame].nonzero().flatten().tolist()


def rotate_from(ref: torch.Tensor, degrees: list[float], g: torch.Generator, norm: float = 1.0) -> torch.Tensor:
    """``(M, D)`` tokens at the given angles from ``ref``'s token at the same place (exact cosines)."""
    r = F.normalize(ref, dim=-1)
    u = torch.randn(ref.shape, generator=g)
    u = F.normalize(u - (u * r).sum(-1, keepdim=True) * r, dim=-1)  # unit, orthogonal to r place by place
    theta = torch.tensor(degrees) * math.pi / 180
    return norm * (torch.cos(theta)[:, None] * r + torch.sin(theta)[:, None] * u)


def odd_frame_layout(g: torch.Generator, special: list[int], blocks: int = 3, per_block: int = 2) -> torch.Tensor:
    """Frames that all look like one pattern ``P`` (plus noise), except one frame per block (``special[b]``, index
    inside the block) drawn independently: unlike every frame of the other blocks."""
    P = torch.randn(M, D, generator=g)
    frames = P + 0.05 * torch.randn(blocks * per_block, M, D, generator=g)
    for b, j in enumerate(special):
        frames[b * per_block + j] = torch.randn(M, D, generator=g)
    return frames


# ------------------------------------------------------------------------------------------- keyframe choice
@pytest.mark.parametrize("rule, keys", [("least_similar", [1, 2, 5]), ("most_similar", [0, 3, 4]),
                                        ("first", [0, 2, 4])])
def test_keyframe_known_by_construction(config, rule, keys):
    """3 blocks (2-s groups) of 2 frames; the odd frame of each block is at place [1, 0, 1]. least_similar picks the odd
    frames (mean similarity ~0 to the other blocks), most_similar the pattern frames (~0.5), first the first ones.
    r = 0.75: K_b = ceil(6) = 6 -> the keyframe whole (4), the other frame 2."""
    g = torch.Generator().manual_seed(0)
    tokens = with_frames(config, odd_frame_layout(g, special=[1, 0, 1]))
    keep = METHODS.build("keyframe", 0.75, keyframe=rule)(tokens).keep
    assert kept_per_frame(tokens, keep) == [4 if f in keys else 2 for f in range(6)]


@pytest.mark.parametrize("rule, keys", [("least_similar", [2, 3]), ("first", [0, 3])])
def test_blocks_of_n_grids(config, rule, keys):
    """block=3 on 6 grids: two blocks of 3 frames; odd frames at 2 and 3. r = 0.5: K_b = 6 -> keyframe 4, others 1 + 1.
    """
    g = torch.Generator().manual_seed(1)
    tokens = with_frames(config, odd_frame_layout(g, special=[2, 0], blocks=2, per_block=3))
    keep = METHODS.build("keyframe", 0.5, block=3, keyframe=rule)(tokens).keep
    assert kept_per_frame(tokens, keep) == [4 if f in keys else 1 for f in range(6)]


@pytest.mark.parametrize("rule, key", [("least_similar", 2), ("most_similar", 0), ("first", 0)])
def test_single_block_compares_frames_of_the_same_block(config, rule, key):
    """One block of 3 frames (block=5 > T): frame 1 = P, frame 2 = Q, frame 0 = 0.8 P + 0.2 Q (a blend). Mean similarity
    to the two other frames: ~0.6 (frame 0), ~0.49 (frame 1), ~0.12 (frame 2)."""
    g = torch.Generator().manual_seed(2)
    P, Q = F.normalize(torch.randn(2, M, D, generator=g), dim=-1)
    frames = torch.stack([F.normalize(0.8 * P + 0.2 * Q, dim=-1), P, Q])
    tokens = with_frames(config, frames)
    keep = METHODS.build("keyframe", 0.5, block=5, keyframe=rule)(tokens).keep  # K = 6: keyframe 4, others 1, 1
    assert kept_per_frame(tokens, keep) == [4 if f == key else 1 for f in range(3)]


# ------------------------------------------------------------------------------------------- tokens kept
def test_other_frames_keep_the_tokens_least_like_their_own_keyframe(config):
    """Two blocks; in each, frame 1 of the block is built at exact angles from its block's keyframe (frame 0, rule
    'first'), place by place: block 0 [10, 80, 30, 60] degrees, block 1 [70, 5, 50, 20]. Norms differ (cosine only).
    r = 0.75 keeps 2 per non-key frame: {1, 3} and {0, 2}; r = 0.875 keeps 3: {1, 2, 3} and {0, 2, 3}."""
    g = torch.Generator().manual_seed(3)
    key0, key1 = torch.randn(2, M, D, generator=g)
    frames = torch.stack([key0, rotate_from(key0, [10, 80, 30, 60], g, norm=3.0),
                          key1, rotate_from(key1, [70, 5, 50, 20], g, norm=0.5)])
    tokens = with_frames(config, frames)
    for r, first, second in ((0.75, [1, 3], [0, 2]), (0.875, [1, 2, 3], [0, 2, 3])):
        keep = METHODS.build("keyframe", r, keyframe="first")(tokens).keep
        assert kept_places(tokens, keep, 0) == kept_places(tokens, keep, 2) == [0, 1, 2, 3]
        assert kept_places(tokens, keep, 1) == first and kept_places(tokens, keep, 3) == second


def test_keyframe_ratio_prunes_the_keyframe_by_its_own_frame_mean(config):
    """keyframe_ratio 0.25, r = 0.5: K = 4, keyframe keeps max(1, 4 - 4) = 1 token -- the one pointing against the
    others (cos -1 with the frame mean) -- and the other frame 3, least similar to the keyframe: angles
    [10, 80, 30, 60] -> places {1, 2, 3}."""
    g = torch.Generator().manual_seed(4)
    d = torch.randn(D, generator=g)
    key = d + 0.01 * torch.randn(M, D, generator=g)
    key[2] = -d
    frames = torch.stack([key, rotate_from(key, [10, 80, 30, 60], g)])
    tokens = with_frames(config, frames)
    keep = METHODS.build("keyframe", 0.5, keyframe="first", keyframe_ratio=0.25)(tokens).keep
    assert kept_places(tokens, keep, 0) == [2]
    assert kept_places(tokens, keep, 1) == [1, 2, 3]


# ------------------------------------------------------------------------------------------- budget rule
BLOCK = torch.tensor([0, 0, 0, 1, 1, 1, 2])  # blocks of 3, 3 and 1 frames, M = 4
KEY = torch.tensor([False, True, False, True, False, False, True])


@pytest.mark.parametrize("retention, ratio, expected", [
    # K = [6, 6, 2]; keyframe min(6, max(4, 6 - 8)) = 4, the other two 1 + 1; the lone frame keeps K = 2
    (0.5, 1.0, [1, 4, 1, 4, 1, 1, 2]),
    # K = [3, 3, 1] < one frame: the keyframe takes the whole budget, the others nothing
    (0.25, 1.0, [0, 3, 0, 3, 0, 0, 1]),
    # K = [11, 11, 4]; keyframe 4, rest 7 -> 4 (first other frame in time) + 3
    (0.9, 1.0, [4, 4, 3, 4, 4, 3, 4]),
    # keyframe_ratio 0.5: keyframe max(2, 6 - 8) = 2, rest 4 -> 2 + 2; lone frame K = 2
    (0.5, 0.5, [2, 2, 2, 2, 2, 2, 2]),
    # keyframe_ratio 0.5, K = 11: the others hold at most 8, so the keyframe keeps max(2, 11 - 8) = 3, rest 4 + 4
    (0.9, 0.5, [4, 3, 4, 3, 4, 4, 4]),
])
def test_frame_budgets_golden(retention, ratio, expected):
    k = frame_budgets(BLOCK, KEY, M, retention, ratio)
    assert k.tolist() == expected
    for b, n in enumerate((3, 3, 1)):  # every block keeps exactly K_b = ceil(r F_b M)
        assert int(k[BLOCK == b].sum()) == math.ceil(retention * n * M - 1e-9)


@pytest.mark.parametrize("retention", [0.1, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("block", ["time_group", 3])
def test_counts_per_block_and_audio_text_untouched(config, retention, block):
    """7 grids (an odd count: the last 2-s group holds one grid), random features."""
    tokens = synthetic_tokens(config, grid_t=7, grid_hw=(8, 8), n_audio=175, seed=5)  # 16 tokens per grid
    keep = METHODS.build("keyframe", retention, block=block)(tokens).keep
    video = tokens.video_mask[0]
    frame_block = (tokens.time_group[0][video][::16] if block == "time_group" else torch.arange(7) // 3).tolist()
    per_frame = keep[0][video].reshape(7, 16).sum(1)
    for b in set(frame_block):
        frames = [f for f in range(7) if frame_block[f] == b]
        assert int(per_frame[frames].sum()) == math.ceil(retention * 16 * len(frames) - 1e-9)
    assert bool(keep[0][~video & tokens.attention_mask[0].bool()].all())


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batch_equals_each_sample_alone(config, padding_side):
    samples = [synthetic_tokens(config, grid_t=t, grid_hw=(8, 8), n_audio=a, seed=s)
               for t, a, s in ((6, 150, 1), (9, 0, 2), (4, 100, 3))]
    batch = stack_tokens(config, samples, padding_side)
    method = METHODS.build("keyframe", 0.3)
    keep = method(batch).keep
    for b, s in enumerate(samples):
        real = batch.attention_mask[b].bool()
        assert torch.equal(keep[b][real], method(s).keep[0])


def test_missing_video_identity_and_parameters(config):
    audio_only = synthetic_tokens(config, n_audio=100)
    with pytest.raises(MissingModalityError, match="keyframe"):
        METHODS.build("keyframe", 0.3)(audio_only)
    tokens = synthetic_tokens(config, grid_t=4, grid_hw=(4, 4), n_audio=100)
    assert torch.equal(METHODS.build("keyframe", 1.0)(tokens).keep, tokens.attention_mask.bool())
    tokens.video_grid_thw = None
    with pytest.raises(InputMismatchError, match="video_grid_thw"):
        METHODS.build("keyframe", 0.3)(tokens)
    for params in (dict(block=0), dict(block="chunk"), dict(block=True), dict(keyframe="middle"),
                   dict(keyframe_ratio=0.0), dict(keyframe_ratio=1.5), dict(keyframe_ratio=float("nan"))):
        with pytest.raises(MethodConfigError):
            METHODS.build("keyframe", 0.3, **params)


# ------------------------------------------------------------------------------------------- through the thinker
def test_thinker_keeps_one_whole_frame_per_block(with_method):
    """6-s and 7-s clips at 112 px (16 tokens per grid), r = 0.75: every 2-grid block keeps its keyframe whole and
    ceil(0.75 * 32) - 16 = 8 tokens of the other grid (the 7-s clip's last block has one grid: 12 tokens); audio and
    text are untouched; the batch equals each sample alone."""
    from fusion.testing import sample_alone

    model = with_method("keyframe", 0.75)
    inputs = random_inputs(model, seconds=6, batch_size=2, seed=4, frame_size=112)
    with torch.no_grad():
        out = model(**inputs)
        tokens = model.last_tokens
        for b, row in enumerate(model.last_stats.rows()):
            src = out.source_index[b][out.attention_mask[b].bool()]
            kept = torch.zeros_like(tokens.av_mask[b])
            kept[src] = True
            per_frame = sorted(kept[tokens.video_mask[b]].reshape(-1, 16).sum(1).tolist())
            n_frames = 6 + b
            assert per_frame == sorted([16] * (n_frames // 2) + [8] * (n_frames // 2) + [12] * (n_frames % 2))
            assert row["audio_after"] == row["audio_before"]
            assert bool(kept[tokens.attention_mask[b].bool() & ~tokens.av_mask[b]].all())
            pad = int((inputs["attention_mask"][b] == 0).sum())
            alone = model(**sample_alone(inputs, b))
            assert torch.equal(src - pad, alone.source_index[0])
