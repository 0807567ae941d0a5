"""Pairing a video method with an audio method: equals each method run alone with masks combined by hand, per-side
retentions, replacement embeddings per modality, rejected sides, method specs (dict / YAML / load_model), batches
mixing modalities, and the thinker end to end."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from av_layouts import stack_tokens

from fusion import load_model
from fusion.errors import MethodConfigError, MissingModalityError, RetentionError, UnknownMethodError
from fusion.model.synthetic import synthetic_tokens
from fusion.pruners import METHODS, Compressor
from fusion.pruners.compose import Pair, build_method
from fusion.testing import random_inputs
from fusion.tokens import Selection


@pytest.fixture(scope="module")
def config(tiny):
    return tiny[0].config


def scored(config, grid_t: int, n_audio: int, seed: int):
    """Synthetic tokens with random audio-attention scores (both modes) on the audio tokens."""
    tokens = synthetic_tokens(config, grid_t=grid_t, grid_hw=(8, 8), n_audio=n_audio, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for mode in ("global", "window"):
        extra = torch.full(tokens.input_ids.shape, float("nan"))
        extra[tokens.audio_mask] = torch.rand(int(tokens.audio_mask.sum()), generator=g)
        tokens.extras[f"audio_attention_{mode}"] = extra
    return tokens


def by_hand(tokens, video_keep: torch.Tensor, audio_keep: torch.Tensor) -> torch.Tensor:
    text = tokens.attention_mask.bool() & ~tokens.av_mask
    return text | (video_keep & tokens.video_mask) | (audio_keep & tokens.audio_mask)


SIDES = [
    ("keyframe", {}, "audio_attn", {}),
    ("keyframe", {"keyframe": "first", "block": 1}, "segment_topk", {"segments": 4}),
    ("xattn", {"self_weight": 0.5}, "uniform", {}),  # sides that touch both modalities are masked
    ("vidcom2", {}, "divprune", {}),
    ("random", {"seed": 2}, "xattn", {}),
]


@pytest.mark.parametrize("video, video_params, audio, audio_params", SIDES)
def test_pair_equals_each_method_alone_combined_by_hand(config, video, video_params, audio, audio_params):
    tokens = scored(config, grid_t=6, n_audio=150, seed=1)
    pair = METHODS.build("pair", 0.3, video={"method": video, **video_params},
                         audio={"method": audio, "retention": 0.5, **audio_params})
    expected = by_hand(tokens, METHODS.build(video, 0.3, **video_params)(tokens).keep,
                       METHODS.build(audio, 0.5, **audio_params)(tokens).keep)
    assert torch.equal(pair(tokens).keep, expected)
    assert pair.name == f"{video}+{audio}" and pair.retentions == {"video": 0.3, "audio": 0.5}


class Shift(Compressor):
    """Keeps everything and returns every embedding shifted by ``delta`` (a stand-in for merging methods)."""

    name = "shift"

    def __init__(self, delta: float, drop_first_av: bool = False) -> None:
        self.delta, self.drop_first_av = delta, drop_first_av

    def select(self, tokens):
        keep = tokens.keep_all().keep
        if self.drop_first_av:  # drop the first video AND the first audio token of every sample
            for pool in (tokens.video_mask, tokens.audio_mask):
                first = pool.long().argmax(1)
                keep[torch.arange(tokens.batch_size), first] &= ~pool.any(1)
        return Selection(keep=keep, embeds=tokens.embeds + self.delta)


def test_replacement_embeddings_apply_to_their_own_modality(config):
    tokens = scored(config, grid_t=4, n_audio=100, seed=2)
    base, video, audio = tokens.embeds, tokens.video_mask[..., None], tokens.audio_mask[..., None]
    both = Pair(1.0, video=Shift(1.0, drop_first_av=True), audio=Shift(-2.0))(tokens)
    assert torch.equal(both.embeds, torch.where(video, base + 1.0, torch.where(audio, base - 2.0, base)))
    # the video side's drop of the first AUDIO token is masked out; its drop of the first video token counts
    assert int((~both.keep & tokens.audio_mask).sum()) == 0 and int((~both.keep & tokens.video_mask).sum()) == 1
    one = Pair(1.0, video="none", audio=Shift(3.0))(tokens)
    assert torch.equal(one.embeds, torch.where(audio, base + 3.0, base))
    assert Pair(0.5, video="keyframe", audio="audio_attn")(tokens).embeds is None


class InLLM(Compressor):
    name = "in_llm"

    def llm_hook(self):
        return object()


@pytest.mark.parametrize("params, error, match", [
    (dict(video={"method": "uniform", "budget": "joint"}), MethodConfigError, "joint"),
    (dict(audio={"method": "xattn", "budget": "joint"}), MethodConfigError, "joint"),
    (dict(video="pair"), MethodConfigError, "itself a pair"),
    (dict(audio=InLLM()), MethodConfigError, "inside the language model"),
    (dict(video="keyframes"), UnknownMethodError, r"pair \(video side\)"),
    (dict(audio={"method": "audio_attn", "threshold_mode": "relative"}), MethodConfigError, r"pair \(audio side\)"),
    (dict(audio={"method": "audio_attn", "retention": 1.5}), RetentionError, "audio side"),
    (dict(video={"block": 2}), MethodConfigError, "'method' key"),
    (dict(video=3), MethodConfigError, "method spec"),
])
def test_rejected_sides(params, error, match):
    with pytest.raises(error, match=match):
        METHODS.build("pair", 0.3, **params)


def test_requires_is_the_union_and_defaults(config):
    pair = METHODS.build("pair", 0.25, video={"method": "keyframe"}, audio={"method": "audio_attn",
                                                                           "audio_scoring": "window"})
    assert pair.requires == {"audio_attention_window"}
    assert METHODS.build("pair", 0.25, video="omnizip", audio="segment_topk").requires == {"audio_attention_global"}
    default = METHODS.build("pair", 0.25)
    assert default.name == "keyframe+audio_attn" and type(default.video).__name__ == "Keyframe"


YAML = """
method: pair
retention: 0.25
video: {method: keyframe, keyframe: first, block: 1}
audio: {method: audio_attn, retention: 0.5, threshold: 1.0, threshold_mode: mean}
"""


def test_yaml_spec_through_load_model_and_build_method():
    cfg = yaml.safe_load(YAML)
    model, _ = load_model("tiny-random", **cfg)
    pair = model.compressor
    assert pair.name == "keyframe+audio_attn" and pair.retentions == {"video": 0.25, "audio": 0.5}
    assert (pair.video.keyframe, pair.video.block) == ("first", 1)
    assert (pair.audio.threshold, pair.audio.threshold_mode) == (1.0, "mean")
    again = build_method(cfg)
    assert repr(again) == repr(pair)
    assert repr(build_method("keyframe", 0.4)) == repr(METHODS.build("keyframe", 0.4))


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batch_mixing_modalities_equals_each_sample_alone(config, padding_side):
    """AV, audio-only and video-only samples in one batch: keyframe alone raises on it, the pair runs each side on the
    samples holding its modality, and every sample's kept set equals the pair on that sample alone."""
    samples = [scored(config, 6, 150, 1), scored(config, 0, 80, 2), scored(config, 5, 0, 3), scored(config, 3, 75, 4)]
    batch = stack_tokens(config, samples, padding_side)
    with pytest.raises(MissingModalityError):
        METHODS.build("keyframe", 0.3)(batch)
    pair = METHODS.build("pair", 0.3)
    keep = pair(batch).keep
    for b, s in enumerate(samples):
        assert torch.equal(keep[b][batch.attention_mask[b].bool()], pair(s).keep[0])
    audio_only = stack_tokens(config, [samples[1], samples[1]], padding_side)  # the video side is not run at all
    assert int((pair(audio_only).keep & audio_only.audio_mask).sum()) == 2 * math.ceil(0.3 * 80 - 1e-9)


# ------------------------------------------------------------------------------------------- through the thinker
def _kept(model, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(**inputs)
    return [out.source_index[b][out.attention_mask[b].bool()] for b in range(out.source_index.shape[0])]


def test_thinker_pair_equals_the_two_methods_run_alone(with_method):
    inputs = random_inputs(with_method("none"), seconds=6, batch_size=2, seed=7, frame_size=112)
    video_kept = _kept(with_method("keyframe", 0.3), inputs)
    audio_kept = _kept(with_method("audio_attn", 0.5, audio_scoring="window"), inputs)
    model = with_method("pair", 0.3, video="keyframe", audio={"method": "audio_attn", "retention": 0.5,
                                                              "audio_scoring": "window"})
    pair_kept = _kept(model, inputs)
    tokens = model.last_tokens
    for b, row in enumerate(model.last_stats.rows()):
        video, audio = tokens.video_mask[b], tokens.audio_mask[b]
        expected = set((tokens.attention_mask[b].bool() & ~tokens.av_mask[b]).nonzero().flatten().tolist())  # text
        expected |= {i for i in video_kept[b].tolist() if video[i]} | {i for i in audio_kept[b].tolist() if audio[i]}
        assert pair_kept[b].tolist() == sorted(expected)
        assert row["audio_after"] == math.ceil(0.5 * row["audio_before"] - 1e-9)
        groups = tokens.time_group[b][video]
        assert row["video_after"] == sum(math.ceil(0.3 * int((groups == g).sum()) - 1e-9) for g in groups.unique())


def test_thinker_identity_at_full_retention(with_method, stock):
    model = with_method("pair", 1.0, video="keyframe", audio="audio_attn")
    inputs = random_inputs(model, seconds=4, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, stock(**inputs).logits, atol=1e-6, rtol=0)
