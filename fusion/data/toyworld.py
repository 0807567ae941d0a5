"""ToyWorld: a generator of short real .mp4 clips (coloured squares, short tones) with multiple-choice questions.

``python -m fusion.data.toyworld --out DIR --n-train 8000 --n-val 500 --n-test 1000 --seed 0`` writes
``DIR/videos/{train,val,test}-NNNNN.mp4``, ``DIR/train.jsonl``, ``DIR/val.jsonl``, ``DIR/test.jsonl`` (the MCQ
schema of :mod:`fusion.data.mcq`) and ``DIR/toyworld.json`` (the settings). ``val`` is for choosing recipes and
hyper-parameters; ``test`` is reported once. The three splits draw from disjoint random streams.

The world, per clip of ``seconds`` (default 4) seconds:

* video (56 x 56 px, 10 fps, grey background with pixel noise): in some seconds one filled square of one of
  4 colours sits in one of the 4 cells of 28 x 28 px (one cell = one merged video token of Qwen2.5-Omni);
  squares are static within their second;
* audio (16 kHz, white noise): in some seconds one short tone ("beep", 250 ms, 10 ms ramps, a fundamental of one of
  4 pitches plus its 2nd and 3rd harmonics at half and quarter amplitude)
  starts at ``s + U(0.05, 0.35)`` s, so it ends by ``s + 0.6``; a beep spans ~6 of the 25 audio tokens of its
  second.

Categories (equally many, answers balanced over A-D within each; option order fixed per category):

==================  ============  ====================================================================
category            needs         clip and answer
==================  ============  ====================================================================
``colour_at_beep``  audio->video  a square every second, each colour equally often; one beep, in second
                                  s*; answer = colour of the square in s*
``tone_at_shape``   video->audio  a beep every second, each pitch equally often; one square, in second s*;
                                  answer = pitch of the beep in s*
``beep_count``      audio         k in 1..4 beeps in distinct seconds; squares random (each second p=0.5)
``shape_count``     video         k in 1..4 squares in distinct seconds; beeps random (each second p=0.5)
==================  ============  ====================================================================

In the two cross-modal categories every colour (pitch) occurs equally often in the clip (a permutation for
4 s), so the other modality alone gives no majority to guess from: with colours drawn i.i.d. instead, the most
frequent colour was the answer about half the time (measured: a backbone deaf to audio scored 50 % on
``colour_at_beep``). The price is an exclusion cue (the answer is the colour absent from the other seconds),
usable only by a model that sees every other second's square but not the key one.

Each sample's ``extra`` holds its scene (per second: square ``[cell, colour]`` or null, beep ``[onset_s, pitch]``
or null) for evidence-aware analyses.

Generation is deterministic: clip ``i`` of a split draws from ``numpy.random.default_rng([seed, split, i])``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fusion.data.mcq import LETTERS, MCQSample, save_jsonl
from fusion.data.mp4 import write_clip
from fusion.errors import ConfigError
from fusion.progress import progress as progress_bar

COLOURS = {"red": (215, 40, 40), "green": (40, 190, 60), "blue": (45, 75, 225), "yellow": (225, 205, 40)}
PITCHES = {"lowest": 300.0, "low": 600.0, "high": 1200.0, "highest": 2400.0}
COUNTS = ("one", "two", "three", "four")
SPLITS = {"train": 0, "test": 1, "val": 2}  # the stream code of each split (train/test kept from v1)


@dataclass(frozen=True)
class Category:
    """One question type: its text, its fixed option list and what it needs."""

    name: str
    question: str
    options: tuple[str, ...]
    needs: str


CATEGORIES = (
    Category("colour_at_beep", "what colour is the shape when the beep sounds ?", tuple(COLOURS), "audio->video"),
    Category("tone_at_shape", "which tone plays when the shape appears ?", tuple(PITCHES), "video->audio"),
    Category("beep_count", "how many beeps are heard ?", COUNTS, "audio"),
    Category("shape_count", "how many shapes are shown ?", COUNTS, "video"),
)


@dataclass
class ToyWorldConfig:
    """Rendering settings.

    Attributes:
        seconds: clip length (>= 4, so that counts 1-4 fit in distinct seconds).
        size: frame side in px (2 x 2 cells).
        fps: frame rate of the written video.
        sample_rate: audio rate in Hz.
        square: square side in px (centred in its cell).
        beep: beep length in seconds (100 ms pure tones, shorter than the 160 ms between the tokens uniform 25 %
            audio pruning keeps, stayed at chance for 4000 steps of pre-training; 250 ms with harmonics reached
            100 % beep counting by step 1000).
        ramp: beep fade in/out in seconds.
        onset: range of a beep's start within its second.
        amplitude: range of beep amplitudes.
        audio_noise: std of the white noise floor.
        video_noise: std of the pixel noise (0-255 scale).
        background: grey level of the background.
    """

    seconds: int = 4
    size: int = 56
    fps: int = 10
    sample_rate: int = 16000
    square: int = 20
    beep: float = 0.25
    ramp: float = 0.01
    onset: tuple[float, float] = (0.05, 0.35)
    amplitude: tuple[float, float] = (0.3, 0.5)
    audio_noise: float = 0.01
    video_noise: float = 4.0
    background: int = 110

    def __post_init__(self) -> None:
        if self.seconds < 4:
            raise ConfigError(f"toyworld seconds must be >= 4 (counts 1-4 need distinct seconds), got {self.seconds}")
        if self.size % 2 or self.size < 4:
            raise ConfigError(f"toyworld size must be even and >= 4, got {self.size}")
        if not (0 <= self.onset[0] <= self.onset[1] and self.onset[1] + self.beep <= 1.0):
            raise ConfigError(f"toyworld onset {self.onset} + beep {self.beep} must stay inside one second")


@dataclass
class Scene:
    """What happens in each second: ``squares[s] = (cell, colour index)`` or None, ``beeps[s] = (onset in s within
    the second, pitch index)`` or None."""

    squares: list[tuple[int, int] | None]
    beeps: list[tuple[float, int] | None]

    def to_json(self) -> dict:
        return {"squares": [list(x) if x else None for x in self.squares],
                "beeps": [[round(x[0], 4), x[1]] if x else None for x in self.beeps]}


def make_scene(category: str, answer: int, rng: np.random.Generator, cfg: ToyWorldConfig) -> Scene:
    """A scene of ``category`` whose correct option index is ``answer`` (see module doc for the rules)."""
    T = cfg.seconds

    def square() -> tuple[int, int]:
        return int(rng.integers(4)), int(rng.integers(len(COLOURS)))

    def beep(pitch: int | None = None) -> tuple[float, int]:
        onset = float(rng.uniform(*cfg.onset))
        return onset, int(rng.integers(len(PITCHES))) if pitch is None else pitch

    squares: list = [None] * T
    beeps: list = [None] * T
    if category == "colour_at_beep":
        colours = balanced_answers(T, len(COLOURS), rng)  # every colour equally often: no majority to guess
        s = int(rng.choice(np.flatnonzero(colours == answer)))
        squares = [(int(rng.integers(4)), int(c)) for c in colours]
        beeps[s] = beep()
    elif category == "tone_at_shape":
        pitches = balanced_answers(T, len(PITCHES), rng)
        s = int(rng.choice(np.flatnonzero(pitches == answer)))
        beeps = [beep(int(p)) for p in pitches]
        squares[s] = square()
    elif category == "beep_count":
        for s in rng.choice(T, size=answer + 1, replace=False):
            beeps[int(s)] = beep()
        squares = [square() if rng.random() < 0.5 else None for _ in range(T)]
    elif category == "shape_count":
        for s in rng.choice(T, size=answer + 1, replace=False):
            squares[int(s)] = square()
        beeps = [beep() if rng.random() < 0.5 else None for _ in range(T)]
    else:
        raise ConfigError(f"unknown ToyWorld category {category!r}; known: {[c.name for c in CATEGORIES]}")
    return Scene(squares, beeps)


def render_video(scene: Scene, cfg: ToyWorldConfig, rng: np.random.Generator) -> np.ndarray:
    """``(seconds * fps, size, size, 3)`` uint8 frames: background + noise, the second's square (if any)."""
    n, half = cfg.seconds * cfg.fps, cfg.size // 2
    frames = np.full((n, cfg.size, cfg.size, 3), float(cfg.background), dtype=np.float32)  # (N, H, W, 3)
    margin = (half - cfg.square) // 2
    for s, sq in enumerate(scene.squares):  # one second per iteration
        if sq is None:
            continue
        cell, colour = sq
        top, left = (cell // 2) * half + margin, (cell % 2) * half + margin
        frames[s * cfg.fps:(s + 1) * cfg.fps, top:top + cfg.square, left:left + cfg.square] = \
            list(COLOURS.values())[colour]
    frames += rng.normal(0.0, cfg.video_noise, frames.shape).astype(np.float32)
    return np.clip(frames.round(), 0, 255).astype(np.uint8)


def render_audio(scene: Scene, cfg: ToyWorldConfig, rng: np.random.Generator) -> np.ndarray:
    """``(seconds * sample_rate,)`` float32: white noise + each beep
    ``a * ramp(t) * (sin(2 pi f t) + sin(4 pi f t) / 2 + sin(6 pi f t) / 4) / 1.75`` (``seconds = len(scene.beeps)``;
    ``cfg`` needs ``sample_rate``, ``audio_noise``, ``beep``, ``ramp`` and ``amplitude``)."""
    sr = cfg.sample_rate
    wave = rng.normal(0.0, cfg.audio_noise, len(scene.beeps) * sr)
    n, ramp = int(round(cfg.beep * sr)), int(round(cfg.ramp * sr))
    t = np.arange(n) / sr
    envelope = np.minimum(1.0, np.minimum(np.arange(n) + 1, n - np.arange(n)) / max(ramp, 1))
    for s, b in enumerate(scene.beeps):  # one second per iteration
        if b is None:
            continue
        onset, pitch = b
        start = int(round((s + onset) * sr))
        amplitude = rng.uniform(*cfg.amplitude)
        phase = 2 * np.pi * list(PITCHES.values())[pitch] * t
        tone = (np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.25 * np.sin(3 * phase)) / 1.75
        wave[start:start + n] += amplitude * envelope * tone
    return wave.astype(np.float32)


def balanced_answers(n: int, n_options: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` option indices, each used ``floor`` or ``ceil`` of ``n / n_options`` times, in random order."""
    return rng.permutation(np.arange(n) % n_options)


def generate_split(out: str | Path, split: str, n: int, seed: int, cfg: ToyWorldConfig | None = None,
                   progress: bool = False) -> list[MCQSample]:
    """Write ``n`` clips of ``split`` under ``out/videos`` and return their samples (category ``i % 4``)."""
    cfg = cfg or ToyWorldConfig()
    out = Path(out)
    code = SPLITS[split]
    per_category = [balanced_answers(len(range(c, n, len(CATEGORIES))), len(cat.options),
                                     np.random.default_rng([seed, code, 10**6 + c]))
                    for c, cat in enumerate(CATEGORIES)]
    samples = []
    bar = progress_bar(total=n, desc=f"generating {split}", unit="clip", disable=not progress)
    for i in range(n):  # one clip per iteration
        c = i % len(CATEGORIES)
        cat, answer = CATEGORIES[c], int(per_category[c][i // len(CATEGORIES)])
        rng = np.random.default_rng([seed, code, i])
        scene = make_scene(cat.name, answer, rng, cfg)
        path = out / "videos" / f"{split}-{i:05d}.mp4"
        write_clip(path, render_video(scene, cfg, rng), cfg.fps, render_audio(scene, cfg, rng), cfg.sample_rate)
        samples.append(MCQSample(id=f"{split}-{i:05d}", video=str(path), question=cat.question,
                                 options=list(cat.options), answer=LETTERS[answer], category=cat.name,
                                 extra={"needs": cat.needs, "seconds": cfg.seconds, "scene": scene.to_json()}))
        bar.update(1)
    bar.close()
    return samples


def generate(out: str | Path, n_train: int, n_test: int, seed: int = 0, cfg: ToyWorldConfig | None = None,
             progress: bool = False, n_val: int = 0) -> dict[str, Path]:
    """Write the splits of non-zero size and their JSONL files (a split of size 0 is left as it is on disk, so a
    validation split can be added to an existing folder); return ``{split: path}`` of the written ones."""
    if min(n_train, n_test, n_val) < 0:
        raise ConfigError(f"split sizes must be >= 0, got n_train={n_train}, n_val={n_val}, n_test={n_test}")
    cfg = cfg or ToyWorldConfig()
    out = Path(out)
    paths = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        if n > 0:
            paths[split] = save_jsonl(generate_split(out, split, n, seed, cfg, progress), out / f"{split}.jsonl")
    info_path = out / "toyworld.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if info and (info.get("seed"), info.get("config")) != (seed, json.loads(json.dumps(asdict(cfg)))):
        info = {}  # another world: the old counts do not describe these clips
    info.update({"seed": seed, "config": asdict(cfg), "categories": [asdict(c) for c in CATEGORIES]})
    info.update({f"n_{split}": n for split, n in (("train", n_train), ("val", n_val), ("test", n_test)) if n > 0})
    out.mkdir(parents=True, exist_ok=True)
    info_path.write_text(json.dumps(info, indent=2))
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fusion.data.toyworld", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n-train", type=int, default=8000)
    parser.add_argument("--n-val", type=int, default=0,
                        help="validation clips (val.jsonl), for choosing recipes; the test split is reported once")
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=int, default=4, help="clip length in seconds (>= 4)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    paths = generate(args.out, args.n_train, args.n_test, args.seed, ToyWorldConfig(seconds=args.seconds),
                     progress=True, n_val=args.n_val)
    print(f"wrote {args.n_train} train + {args.n_val} val + {args.n_test} test clips to {args.out} "
          f"({time.perf_counter() - start:.1f} s): {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    main()
