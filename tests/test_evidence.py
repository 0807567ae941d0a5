"""Evidence masks on real ToyWorld clips (decode -> processor -> annotated tokens), the oracle and the dropout."""

from __future__ import annotations

import math

import pytest
import torch

from fusion import METHODS
from fusion.data.batching import collate
from fusion.data.evidence import EvidenceDropout, EvidenceOracle, evidence_mask
from fusion.data.mcq import MCQSample
from fusion.data.toyworld import generate_split


@pytest.fixture(scope="module")
def toy_tokens(tiny, tmp_path_factory):
    """Annotated tokens of 4 ToyWorld clips (one per category) and their samples."""
    model, processor = tiny
    samples = generate_split(tmp_path_factory.mktemp("ev"), "test", 4, seed=7)
    batch = collate(samples, processor, mode="eval")
    with torch.no_grad():
        tokens = model.build_tokens(**{k: v for k, v in batch.model_inputs().items()})
    return tokens, samples


def test_evidence_is_where_the_scene_says(toy_tokens):
    tokens, samples = toy_tokens
    scenes, categories = [s.extra["scene"] for s in samples], [s.category for s in samples]
    mask = evidence_mask(tokens, scenes, categories)
    seconds, place = tokens.seconds(), tokens.grid_place
    for b, sample in enumerate(samples):
        squares, beeps = scenes[b]["squares"], scenes[b]["beeps"]
        video = mask[b] & tokens.video_mask[b]
        audio_times = seconds[b][mask[b] & tokens.audio_mask[b]]
        if sample.category == "colour_at_beep":
            (s,) = [i for i, x in enumerate(beeps) if x]
            key_squares, key_beeps = [(s, squares[s][0])], [s]
        elif sample.category == "tone_at_shape":
            (s,) = [i for i, x in enumerate(squares) if x]
            key_squares, key_beeps = [(s, squares[s][0])], [s]
        elif sample.category == "beep_count":
            key_squares, key_beeps = [], [i for i, x in enumerate(beeps) if x]
        else:
            key_squares, key_beeps = [(i, q[0]) for i, q in enumerate(squares) if q], []
        got = sorted((int(place[b, j, 0]), int(place[b, j, 1] * 2 + place[b, j, 2])) for j in video.nonzero()[:, 0])
        assert got == sorted(key_squares), sample.category
        # a 250 ms beep overlaps 7 tokens of 40 ms (6 when it starts exactly on a token boundary)
        assert len(audio_times) in range(6 * len(key_beeps), 7 * len(key_beeps) + 1)
        for s in key_beeps:
            start = s + beeps[s][0]
            near = audio_times[(audio_times > start - 0.05) & (audio_times < start + 0.3)]
            assert near.min() > start - 0.04 and near.max() < start + 0.25


def test_oracle_keeps_the_evidence_within_the_budget(toy_tokens):
    tokens, samples = toy_tokens
    oracle = EvidenceOracle(0.25)
    oracle.set_batch([s.extra["scene"] for s in samples], [s.category for s in samples])
    keep = oracle(tokens).keep
    evidence = oracle._evidence(tokens)
    assert bool((keep | ~evidence).all())  # every evidence token kept
    assert (keep & tokens.video_mask).sum(1).tolist() == [math.ceil(0.25 * 16)] * 4
    assert (keep & tokens.audio_mask).sum(1).tolist() == [math.ceil(0.25 * 100)] * 4


def test_dropout_drops_only_non_evidence(toy_tokens):
    tokens, samples = toy_tokens
    scenes, categories = [s.extra["scene"] for s in samples], [s.category for s in samples]
    dropout = EvidenceDropout(p=1.0, r_min=0.1, generator=torch.Generator().manual_seed(0))
    dropout.set_batch(scenes, categories)
    keep = dropout(tokens).keep
    evidence = evidence_mask(tokens, scenes, categories)
    real = tokens.attention_mask.bool()
    assert bool((keep | ~(evidence | (real & ~tokens.av_mask))).all())  # evidence and text always kept
    assert bool((~keep & real & tokens.av_mask).any())  # something was dropped
    none = EvidenceDropout(p=0.0)
    none.set_batch(scenes, categories)
    assert torch.equal(none(tokens).keep, real)
    with pytest.raises(ValueError, match="set_batch"):
        EvidenceDropout().select(tokens)


def test_joint_oracle_keeps_the_evidence_within_the_joint_budget(toy_tokens):
    tokens, samples = toy_tokens
    oracle = METHODS.build("evidence_oracle", retention=0.1, budget="joint")
    oracle.set_batch([s.extra["scene"] for s in samples], [s.category for s in samples])
    keep = oracle(tokens).keep & tokens.av_mask
    evidence = oracle._evidence(tokens)
    assert keep.sum(1).tolist() == [math.ceil(0.1 * 116)] * 4  # 16 video + 100 audio tokens per 4-s clip
    n_evidence = evidence.sum(1)
    kept_evidence = (keep & evidence).sum(1)
    assert torch.equal(kept_evidence, torch.minimum(n_evidence, torch.full_like(n_evidence, math.ceil(0.1 * 116))))


def test_the_harness_tells_the_oracle_its_scenes_and_refuses_samples_without_one(tmp_path):
    from eval.predict import tell_samples
    from fusion.errors import DatasetError

    class Thinker:
        compressor = METHODS.build("evidence_oracle", retention=0.25)

    class Prepared:
        samples = [MCQSample(id="a", video="a.mp4", question="q", options=["x", "y"], answer="A", category="beep_count",
                             extra={"scene": {"squares": [None], "beeps": [None]}})]

    model = Thinker()
    tell_samples(model, Prepared)
    assert model.compressor.categories == ["beep_count"]
    Prepared.samples[0].extra = {}
    with pytest.raises(DatasetError, match="ToyWorld scene"):
        tell_samples(model, Prepared)
