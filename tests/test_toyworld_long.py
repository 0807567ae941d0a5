"""ToyWorld-Long: determinism, balance, answers from the scene, media that show the scene, a video-heavy and
temporally redundant token stream, evidence on the 6 x 6 grid, length buckets, same-length batches."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from fusion.data.batching import collate
from fusion.data.curriculum import SameLengthBatches
from fusion.data.evidence import evidence_mask
from fusion.data.media import MediaSettings, load_media
from fusion.data.toyworld import COLOURS
from fusion.data.toyworld_long import CATEGORIES, LongWorldConfig, generate, generate_split
from fusion.errors import ConfigError
from fusion.model.loading import build_random_thinker
from fusion.model.toy import toy_long_config, toy_long_processor

LONG = MediaSettings(min_pixels=4 * 14 * 14, max_pixels=36 * 14 * 14, size_factor=14)


@pytest.fixture(scope="module")
def split12(tmp_path_factory):
    out = tmp_path_factory.mktemp("long")
    return out, generate_split(out, "train", 12, seed=5)


@pytest.fixture(scope="module")
def long_model():
    processor = toy_long_processor()
    return build_random_thinker(toy_long_config(processor.tokenizer)).eval(), processor


def test_same_seed_same_clips_other_seed_other_clips(tmp_path, split12):
    out, samples = split12
    again = generate_split(tmp_path, "train", 12, seed=5)
    assert [s.to_row(out) for s in samples] == [s.to_row(tmp_path) for s in again]
    a, b = load_media(samples[0].video, LONG), load_media(again[0].video, LONG)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    other = generate_split(tmp_path / "other", "train", 4, seed=6)
    assert [s.extra["scene"] for s in other] != [s.extra["scene"] for s in samples[:4]]


def test_lengths_vary_within_the_range_and_have_buckets(tmp_path):
    cfg = LongWorldConfig(min_seconds=8, max_seconds=16)
    samples = generate_split(tmp_path, "test", 24, seed=1, cfg=cfg)
    seconds = [s.extra["seconds"] for s in samples]
    assert min(seconds) >= 8 and max(seconds) <= 16 and len(set(seconds)) >= 4
    for s in samples:
        assert len(s.extra["scene"]["squares"]) == len(s.extra["scene"]["beeps"]) == s.extra["seconds"]
    assert {cfg.bucket(t) for t in range(8, 17)} == {"08-10 s", "11-13 s", "14-16 s"}
    assert cfg.bucket(11) == "11-13 s" and cfg.bucket(16) == "14-16 s"
    assert LongWorldConfig(min_seconds=8, max_seconds=32).bucket(32) == "26-32 s"


def test_answers_are_balanced_per_category(tmp_path):
    samples = generate_split(tmp_path, "val", 64, seed=0)
    assert Counter(s.category for s in samples) == {c.name: 16 for c in CATEGORIES}
    for c in CATEGORIES:
        counts = Counter(s.answer for s in samples if s.category == c.name)
        assert set(counts.values()) == {16 // len(c.options)}, (c.name, counts)


def _expected_answer(sample) -> int:
    """The answer recomputed from the scene alone."""
    squares, beeps = sample.extra["scene"]["squares"], sample.extra["scene"]["beeps"]
    beep_seconds = [i for i, b in enumerate(beeps) if b]
    shown = [i for i, q in enumerate(squares) if q]
    if sample.category == "colour_at_beep":
        (s,) = beep_seconds
        return squares[s][1]
    if sample.category == "beep_order":
        (s,) = beep_seconds
        assert s < shown[0] - 1 or s > shown[-1] + 1  # a silent second between the two events
        return 0 if s < shown[0] else 1
    if sample.category == "beep_count":
        assert all(b - a > 1 for a, b in zip(beep_seconds, beep_seconds[1:]))  # never adjacent
        return len(beep_seconds) - 1
    (colour,) = {squares[i][1] for i in shown}
    return colour


def test_answers_follow_from_the_scene_and_objects_persist(tmp_path):
    samples = generate_split(tmp_path, "train", 80, seed=2)
    for s in samples:
        assert s.answer_index == _expected_answer(s), s.id
        squares = s.extra["scene"]["squares"]
        shown = [i for i, q in enumerate(squares) if q]
        if s.category in ("beep_order", "shape_colour"):  # one contiguous 2-4 s stay in one cell
            assert shown == list(range(shown[0], shown[0] + len(shown))) and 2 <= len(shown) <= 4
            assert len({tuple(squares[i]) for i in shown}) == 1
        else:  # a moving object, present all clip, staying >= 2 s in a cell except a cut-short last run
            assert shown == list(range(len(squares)))
            changes = [i for i in range(1, len(squares)) if squares[i] != squares[i - 1]]
            stays = np.diff([0, *changes, len(squares)])
            assert (stays[:-1] >= 2).all() and (stays <= 4).all()
            for i in changes:  # to a 4-neighbour cell
                (r0, c0), (r1, c1) = divmod(squares[i - 1][0], 6), divmod(squares[i][0], 6)
                assert abs(r0 - r1) + abs(c0 - c1) <= 1


def test_clips_show_the_scene_on_a_static_background(split12):
    """Decoded at 2 fps: the object's cell holds its colour, every other cell is grey and the same in every
    second (static background); each beep sounds above the hum."""
    _, samples = split12
    colours = np.array(list(COLOURS.values()), dtype=float)
    for sample in samples[:6]:
        media = load_media(sample.video, LONG)
        scene, T = sample.extra["scene"], sample.extra["seconds"]
        assert media.frames.shape == (2 * T, 84, 84, 3) and media.audio.shape == (16000 * T,)
        cells = media.frames[::2].reshape(T, 6, 14, 6, 14, 3)[:, :, 5:9, :, 5:9].mean(axis=(2, 4))  # (T, 6, 6, 3)
        cells = cells.reshape(T, 36, 3).astype(float)
        spread = cells.std(axis=2)  # (T, 36): grey cells have equal channels
        for s, square in enumerate(scene["squares"]):
            if square is None:
                assert spread[s].max() < 10
            else:
                cell, colour = square
                assert spread[s].argmax() == cell
                assert np.abs(colours - cells[s, cell]).sum(1).argmin() == colour
        grey = spread.max(axis=0) < 10  # cells never covered by the object
        assert np.abs(cells[:, grey] - cells[:1, grey]).max() < 8  # the background does not change over time
        energy = np.convolve(media.audio ** 2, np.ones(160) / 160, mode="same")
        for s, beep in enumerate(scene["beeps"]):
            window = energy[s * 16000:(s + 1) * 16000]
            assert (window.max() > 0.02) == (beep is not None)


def test_video_is_the_majority_of_the_tokens_and_mostly_repeats(long_model, split12):
    _, samples = split12
    model, processor = long_model
    batch = collate(samples[:4], processor, mode="eval")
    with torch.no_grad():
        tokens = model.build_tokens(**batch.model_inputs())
    video, audio = int(tokens.video_mask.sum()), int(tokens.audio_mask.sum())
    assert video / (video + audio) >= 0.55
    seconds = sum(s.extra["seconds"] for s in samples[:4])
    assert video == 36 * seconds and audio == 25 * seconds
    # temporal redundancy: most cells show the same thing as one second earlier
    same = total = 0
    for s in samples[:4]:
        squares = s.extra["scene"]["squares"]
        changed = sum(2 * (squares[t] != squares[t - 1]) for t in range(1, len(squares)))  # <= 2 cells per change
        same += 36 * (len(squares) - 1) - changed
        total += 36 * (len(squares) - 1)
    assert same / total > 0.9


def test_evidence_on_the_long_grid(long_model, split12):
    _, samples = split12
    model, processor = long_model
    batch = collate(samples[:4], processor, mode="eval")
    with torch.no_grad():
        tokens = model.build_tokens(**batch.model_inputs())
    scenes, categories = [s.extra["scene"] for s in samples[:4]], [s.category for s in samples[:4]]
    mask = evidence_mask(tokens, scenes, categories)
    place = tokens.grid_place
    for b, sample in enumerate(samples[:4]):
        squares, beeps = scenes[b]["squares"], scenes[b]["beeps"]
        if sample.category == "colour_at_beep":
            (s,) = [i for i, x in enumerate(beeps) if x]
            key = [(s, squares[s][0])]
        elif sample.category in ("beep_order", "shape_colour"):
            key = [(i, q[0]) for i, q in enumerate(squares) if q]
        else:
            key = []
        video = mask[b] & tokens.video_mask[b]
        got = sorted((int(place[b, j, 0]), int(place[b, j, 1] * 6 + place[b, j, 2])) for j in video.nonzero()[:, 0])
        assert got == sorted(key), sample.category
        n_beeps = sum(x is not None for x in beeps) if sample.category != "shape_colour" else 0
        assert int((mask[b] & tokens.audio_mask[b]).sum()) in range(6 * n_beeps, 7 * n_beeps + 1)


def test_same_length_batches_keep_categories_and_share_one_length():
    categories = ["a", "b"] * 50
    lengths = [8 + (i // 2) % 5 for i in range(100)]
    matcher = SameLengthBatches(categories, lengths, torch.Generator().manual_seed(0))
    index = torch.tensor([3, 10, 21, 44, 57, 98])
    out = matcher.match(index)
    assert out[0] == index[0]
    assert {lengths[i] for i in out.tolist()} == {lengths[3]}
    assert [categories[i] for i in out.tolist()] == [categories[i] for i in index.tolist()]
    with pytest.raises(ConfigError):
        SameLengthBatches(["a"], [8, 9])


def test_bad_settings_and_a_folder_of_another_world_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="min_seconds"):
        LongWorldConfig(min_seconds=6)
    with pytest.raises(ConfigError, match="multiple"):
        LongWorldConfig(size=80)
    generate(tmp_path, n_train=0, n_test=2, seed=0)
    with pytest.raises(ConfigError, match="another folder"):
        generate(tmp_path, n_train=0, n_test=2, seed=1)
