"""ToyWorld generator: determinism, answer balance, answers consistent with the scene, media that show the scene."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from fusion.data.mcq import load_jsonl
from fusion.data.media import MediaSettings, load_media
from fusion.data.toyworld import CATEGORIES, COLOURS, PITCHES, ToyWorldConfig, generate, generate_split, main
from fusion.errors import ConfigError

SMALL = MediaSettings(min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)


@pytest.fixture(scope="module")
def split16(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    return out, generate_split(out, "train", 16, seed=3)


def test_same_seed_same_dataset(tmp_path, split16):
    out, samples = split16
    again = generate_split(tmp_path, "train", 16, seed=3)
    assert [s.to_row(out) for s in samples] == [s.to_row(tmp_path) for s in again]
    for a, b in zip(samples[:4], again[:4]):
        da, db = load_media(a.video, SMALL), load_media(b.video, SMALL)
        assert np.array_equal(da.frames, db.frames) and np.array_equal(da.audio, db.audio)
    other = generate_split(tmp_path / "other", "train", 4, seed=4)
    assert [s.extra["scene"] for s in other] != [s.extra["scene"] for s in samples[:4]]


def test_answers_are_balanced_per_category(tmp_path):
    samples = generate_split(tmp_path, "test", 32, seed=0, cfg=ToyWorldConfig())
    by_category = Counter(s.category for s in samples)
    assert by_category == {c.name: 8 for c in CATEGORIES}
    for c in CATEGORIES:
        assert Counter(s.answer for s in samples if s.category == c.name) == {"A": 2, "B": 2, "C": 2, "D": 2}


def _expected_answer(sample) -> int:
    """The answer recomputed from the scene alone."""
    squares, beeps = sample.extra["scene"]["squares"], sample.extra["scene"]["beeps"]
    if sample.category == "colour_at_beep":
        (s,) = [i for i, b in enumerate(beeps) if b]
        return squares[s][1]
    if sample.category == "tone_at_shape":
        (s,) = [i for i, q in enumerate(squares) if q]
        return beeps[s][1]
    if sample.category == "beep_count":
        return sum(b is not None for b in beeps) - 1
    return sum(q is not None for q in squares) - 1


def test_answers_follow_from_the_scene(split16):
    _, samples = split16
    for s in samples:
        assert s.answer_index == _expected_answer(s), s.id
        assert s.options == list(next(c.options for c in CATEGORIES if c.name == s.category))
        scene = s.extra["scene"]
        if s.category == "colour_at_beep":  # every second a square, each colour once: no majority colour
            assert sorted(q[1] for q in scene["squares"]) == [0, 1, 2, 3]
        if s.category == "tone_at_shape":  # every second a beep, each pitch once
            assert sorted(b[1] for b in scene["beeps"]) == [0, 1, 2, 3]


def test_clips_show_the_scene(split16):
    """Decoded at 2 fps: each second's square has its colour in its cell; each beep sounds at its onset and pitch."""
    _, samples = split16
    colours = np.array(list(COLOURS.values()), dtype=float)
    for sample in samples[:8]:
        media = load_media(sample.video, SMALL)
        scene = sample.extra["scene"]
        assert media.frames.shape == (8, 56, 56, 3) and media.audio.shape == (64000,)
        for s, square in enumerate(scene["squares"]):  # one second per iteration
            cells = media.frames[2 * s].reshape(2, 28, 2, 28, 3)[:, 10:18, :, 10:18].mean(axis=(1, 3))  # (2, 2, 3)
            spread = cells.reshape(4, 3).std(axis=1)  # grey cells have equal channels
            if square is None:
                assert spread.max() < 10
            else:
                cell, colour = square
                assert spread.argmax() == cell
                assert np.abs(colours - cells.reshape(4, 3)[cell]).sum(1).argmin() == colour
        for s, beep in enumerate(scene["beeps"]):
            window = media.audio[s * 16000:(s + 1) * 16000]
            energy = np.convolve(window ** 2, np.ones(160) / 160, mode="same")
            if beep is None:
                assert energy.max() < 0.01
                continue
            onset, pitch = beep
            loud = np.flatnonzero(energy > 0.02)
            assert abs(loud[0] / 16000 - onset) < 0.02
            segment = window[loud[0]:loud[0] + 1600]
            peak = np.fft.rfftfreq(len(segment), 1 / 16000)[np.abs(np.fft.rfft(segment)).argmax()]
            assert abs(peak - list(PITCHES.values())[pitch]) < 20


def test_cli_writes_jsonl_and_settings(tmp_path):
    main(["--out", str(tmp_path), "--n-train", "4", "--n-test", "4", "--seed", "1"])
    train, test = load_jsonl(tmp_path / "train.jsonl"), load_jsonl(tmp_path / "test.jsonl")
    assert len(train) == len(test) == 4 and all((tmp_path / "videos" / f"{s.id}.mp4").is_file() for s in train + test)
    assert json.loads((tmp_path / "toyworld.json").read_text())["seed"] == 1
    assert {s.id for s in train}.isdisjoint({s.id for s in test})


def test_bad_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="seconds must be >= 4"):
        ToyWorldConfig(seconds=3)
    with pytest.raises(ConfigError, match="inside one second"):
        ToyWorldConfig(onset=(0.5, 0.95))
    with pytest.raises(ConfigError, match="even"):
        generate(tmp_path, 1, 1, cfg=ToyWorldConfig(size=57))


def test_a_validation_split_is_added_beside_the_others_from_its_own_stream(tmp_path):
    main(["--out", str(tmp_path), "--n-train", "2", "--n-test", "4", "--seed", "1"])
    test_before = (tmp_path / "test.jsonl").read_text()
    main(["--out", str(tmp_path), "--n-train", "0", "--n-val", "4", "--n-test", "0", "--seed", "1"])
    assert (tmp_path / "test.jsonl").read_text() == test_before  # a split of size 0 is left alone
    assert len(load_jsonl(tmp_path / "train.jsonl")) == 2
    val, test = load_jsonl(tmp_path / "val.jsonl"), load_jsonl(tmp_path / "test.jsonl")
    assert [s.id for s in val] == [f"val-{i:05d}" for i in range(4)]
    assert [s.extra["scene"] for s in val] != [s.extra["scene"] for s in test]  # not the test clips renamed
    info = json.loads((tmp_path / "toyworld.json").read_text())
    assert (info["n_train"], info["n_val"], info["n_test"]) == (2, 4, 4)


def test_the_harness_reads_the_validation_split_and_says_how_to_make_a_missing_one(tmp_path):
    from eval.config import DataConfig
    from eval.data import load_toyworld

    main(["--out", str(tmp_path), "--n-train", "0", "--n-val", "2", "--n-test", "2", "--seed", "0"])
    cfg = DataConfig()
    cfg.toyworld.dir, cfg.toyworld.split = str(tmp_path), "val"
    assert [s.id for s in load_toyworld(cfg)] == ["val-00000", "val-00001"]
    (tmp_path / "val.jsonl").unlink()
    with pytest.raises(ConfigError, match="--n-val"):
        load_toyworld(cfg)
