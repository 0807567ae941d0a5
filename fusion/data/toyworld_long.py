"""ToyWorld-Long: long, redundant, video-heavy clips, where token compression matters as it does on real video.

``python -m fusion.data.toyworld_long --out DIR --n-train 4000 --n-val 400 --n-test 800 --seed 0`` writes
``DIR/videos/{split}-NNNNN.mp4``, ``DIR/{train,val,test}.jsonl`` (the MCQ schema of :mod:`fusion.data.mcq`) and
``DIR/toyworld_long.json`` (the settings). The three splits draw from disjoint random streams; clip ``i`` of a split
draws from ``numpy.random.default_rng([seed, split code, i])``, so the output is deterministic for a seed.

Why a second world: ToyWorld's 4-s clips are 86 % audio tokens and show a new square every second (no temporal
redundancy). Real inputs are the opposite (a 60-s clip at 2 fps and 336 px is 8,640 video + 1,500 audio tokens,
and consecutive frames are nearly equal). Here, per clip:

* length ``T`` drawn uniformly from ``[min_seconds, max_seconds]`` (8-16 s by default, configurable upward);
* video (``size`` = 84 px square, ``fps`` 4 written, sampled at the processor's 2 fps): a STATIC background (each
  14 x 14 px cell its own grey level, drawn per clip) plus a little pixel noise; with the long processor's 7-px
  patches and 2 x 2 merge one cell is one merged video token, so a frame is 6 x 6 = 36 tokens per second against
  the audio tower's 25: video is 59 % of the AV tokens. Objects are squares that PERSIST for runs of 2-4 s in one
  cell (then move to a neighbouring cell, possibly changing colour), so most tokens repeat the previous second's;
* audio (16 kHz): white noise, a continuous distractor hum (a ``hum_hz`` sine whose amplitude drifts slowly) and
  sparse 250-ms beeps (one of 4 pitches, with harmonics, as in ToyWorld) among silences.

Categories (equally many, answers balanced within each; option order fixed per category):

==================  ============  ====================================================================
category            needs         clip and answer
==================  ============  ====================================================================
``colour_at_beep``  audio->video  one object present all clip, moving/recolouring every 2-4 s (every colour
                                  used about equally); one beep; answer = the object's colour in the beep's
                                  second (an object's attribute at the moment of a sound)
``beep_order``      audio+video   one object shown for one 2-4 s run, one beep outside it; answer = whether
                                  the beep comes before or after the object (time order of two events)
``beep_count``      audio         1-4 beeps in distinct, non-adjacent seconds over the whole clip; a moving
                                  object as a video distractor (counting events over the whole clip)
``shape_colour``    video         one object shown for one 2-4 s run; beeps as distractors (p = 0.3 per
                                  second); answer = its colour (a video-only fact)
==================  ============  ====================================================================

Each sample's ``extra`` holds ``seconds``, ``length_bucket`` (for accuracy vs clip length), ``needs`` and the scene
in ToyWorld's schema (per second: square ``[cell, colour]`` or null, beep ``[onset_s, pitch]`` or null) plus
``grid`` (cells per row) and ``beep`` (seconds), which :mod:`fusion.data.evidence` reads.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fusion.data.mcq import LETTERS, MCQSample, save_jsonl
from fusion.data.mp4 import write_clip
from fusion.data.toyworld import COLOURS, COUNTS, PITCHES, SPLITS, Category, Scene, balanced_answers, render_audio
from fusion.errors import ConfigError
from fusion.progress import progress as progress_bar

INFO_NAME = "toyworld_long.json"
ORDER = ("before", "after")

CATEGORIES = (
    Category("colour_at_beep", "what colour is the shape when the beep sounds ?", tuple(COLOURS), "audio->video"),
    Category("beep_order", "does the beep come before or after the shape ?", ORDER, "audio+video"),
    Category("beep_count", "how many beeps are heard ?", COUNTS, "audio"),
    Category("shape_colour", "what colour is the shape ?", tuple(COLOURS), "video"),
)


@dataclass
class LongWorldConfig:
    """Rendering settings of ToyWorld-Long.

    Attributes:
        min_seconds, max_seconds: range of clip lengths (uniform over whole seconds; min >= 8 so four
            non-adjacent beeps and a before/after layout always fit).
        size: frame side in px; ``size / cell`` cells per row (one merged token each with the long processor).
        cell: cell side in px (= patch 7 x merge 2 of the long processor).
        fps: frame rate of the written video (the processor samples 2 fps).
        square: object side in px (centred in its cell).
        run: range of an object's stay in one cell, in seconds.
        hum_hz, hum_amplitude: the continuous distractor hum and its amplitude range (drifting linearly).
        background: range of the per-cell background grey levels (static over the clip).
        video_noise: std of the per-frame pixel noise (0-255 scale).
        The audio fields (``sample_rate``, ``beep``, ``ramp``, ``onset``, ``amplitude``, ``audio_noise``) are
        ToyWorld's.
    """

    min_seconds: int = 8
    max_seconds: int = 16
    size: int = 84
    cell: int = 14
    fps: int = 4
    square: int = 10
    run: tuple[int, int] = (2, 4)
    hum_hz: float = 110.0
    hum_amplitude: tuple[float, float] = (0.03, 0.12)
    background: tuple[int, int] = (85, 135)
    video_noise: float = 2.0
    sample_rate: int = 16000
    beep: float = 0.25
    ramp: float = 0.01
    onset: tuple[float, float] = (0.05, 0.35)
    amplitude: tuple[float, float] = (0.3, 0.5)
    audio_noise: float = 0.01

    def __post_init__(self) -> None:
        if not 8 <= self.min_seconds <= self.max_seconds:
            raise ConfigError(f"toyworld_long needs 8 <= min_seconds <= max_seconds, got {self.min_seconds}, "
                              f"{self.max_seconds}")
        if self.size % self.cell or self.cell % 2 or self.size // self.cell < 2:
            raise ConfigError(f"toyworld_long size {self.size} must be a multiple (>= 2x) of the even cell {self.cell}")
        if not 1 <= self.run[0] <= self.run[1]:
            raise ConfigError(f"toyworld_long run must be 1 <= lo <= hi seconds, got {self.run}")

    @property
    def grid(self) -> int:
        """Cells (merged video tokens) per row and per column."""
        return self.size // self.cell

    def bucket(self, seconds: int) -> str:
        """The length bucket of a ``seconds``-long clip: the range split into 3 equal spans, e.g. ``"08-10 s"``."""
        span = max(1, math.ceil((self.max_seconds - self.min_seconds + 1) / 3))
        lo = self.min_seconds + (seconds - self.min_seconds) // span * span
        hi = min(lo + span - 1, self.max_seconds)
        return f"{lo:02d}-{hi:02d} s"


def neighbour(cell: int, grid: int, rng: np.random.Generator) -> int:
    """A random 4-neighbour of ``cell`` inside the ``grid x grid`` frame."""
    r, c = divmod(cell, grid)
    moves = [(r + dr, c + dc) for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))
             if 0 <= r + dr < grid and 0 <= c + dc < grid]
    r, c = moves[int(rng.integers(len(moves)))]
    return r * grid + c


def run_lengths(total: int, cfg: LongWorldConfig, rng: np.random.Generator) -> list[int]:
    """Stays of ``cfg.run`` seconds covering ``total`` seconds exactly (the last one cut short if needed)."""
    runs: list[int] = []
    while sum(runs) < total:  # one run per iteration (a handful per clip)
        runs.append(min(int(rng.integers(cfg.run[0], cfg.run[1] + 1)), total - sum(runs)))
    return runs


def moving_object(runs: list[int], colours: list[int], cfg: LongWorldConfig, rng: np.random.Generator
                  ) -> list[tuple[int, int]]:
    """An object present for ``sum(runs)`` seconds: ``(cell, colour)`` per second; run ``k`` keeps one cell and
    ``colours[k]``, the next run moves to a neighbouring cell."""
    cell = int(rng.integers(cfg.grid ** 2))
    squares = []
    for k, n in enumerate(runs):  # one run per iteration
        if k:
            cell = neighbour(cell, cfg.grid, rng)
        squares += [(cell, int(colours[k]))] * n
    return squares


def make_scene(category: str, answer: int, T: int, rng: np.random.Generator, cfg: LongWorldConfig) -> Scene:
    """A ``T``-second scene of ``category`` whose correct option index is ``answer`` (rules in the module doc)."""

    def beep(pitch: int | None = None) -> tuple[float, int]:
        onset = float(rng.uniform(*cfg.onset))
        return onset, int(rng.integers(len(PITCHES))) if pitch is None else pitch

    squares: list = [None] * T
    beeps: list = [None] * T
    if category == "colour_at_beep":
        runs = run_lengths(T, cfg, rng)
        colours = [int(c) for c in balanced_answers(len(runs), len(COLOURS), rng)]
        if answer not in colours:
            colours[int(rng.integers(len(runs)))] = answer
        squares = moving_object(runs, colours, cfg, rng)
        seconds = [s for s in range(T) if squares[s][1] == answer]
        beeps[int(rng.choice(seconds))] = beep()
    elif category in ("beep_order", "shape_colour"):
        length = int(rng.integers(cfg.run[0], cfg.run[1] + 1))
        if category == "beep_order":
            # the beep at least one silent second away from the object: before needs start >= 2, after needs
            # end <= T - 2; the object's run is placed uniformly where that fits
            if answer == 0:
                start = int(rng.integers(2, T - length + 1))
                b = int(rng.integers(0, start - 1))
            else:
                start = int(rng.integers(0, T - length - 1))
                b = int(rng.integers(start + length + 1, T))
            beeps[b] = beep()
            colour = int(rng.integers(len(COLOURS)))
        else:
            start = int(rng.integers(0, T - length + 1))
            colour = answer
            beeps = [beep() if rng.random() < 0.3 else None for _ in range(T)]
        cell = int(rng.integers(cfg.grid ** 2))
        for s in range(start, start + length):  # the object's seconds
            squares[s] = (cell, colour)
    elif category == "beep_count":
        # answer + 1 distinct seconds, no two adjacent: choose from T - answer slots, then spread them out
        picks = np.sort(rng.choice(T - answer, size=answer + 1, replace=False)) + np.arange(answer + 1)
        for s in picks:
            beeps[int(s)] = beep()
        runs = run_lengths(T, cfg, rng)
        squares = moving_object(runs, [int(c) for c in balanced_answers(len(runs), len(COLOURS), rng)], cfg, rng)
    else:
        raise ConfigError(f"unknown ToyWorld-Long category {category!r}; known: {[c.name for c in CATEGORIES]}")
    return Scene(squares, beeps)


def render_video(scene: Scene, cfg: LongWorldConfig, rng: np.random.Generator) -> np.ndarray:
    """``(T * fps, size, size, 3)`` uint8 frames: the clip's static cell background, the object of each second,
    per-frame noise."""
    T, g, c = len(scene.squares), cfg.grid, cfg.cell
    levels = rng.integers(cfg.background[0], cfg.background[1] + 1, size=(g, g)).astype(np.float32)  # (g, g)
    background = np.repeat(np.repeat(levels, c, 0), c, 1)[..., None].repeat(3, -1)  # (size, size, 3)
    frames = np.broadcast_to(background, (T * cfg.fps, *background.shape)).copy()  # (N, H, W, 3)
    margin = (c - cfg.square) // 2
    palette = list(COLOURS.values())
    for s, sq in enumerate(scene.squares):  # one second per iteration
        if sq is None:
            continue
        cell, colour = sq
        top, left = (cell // g) * c + margin, (cell % g) * c + margin
        frames[s * cfg.fps:(s + 1) * cfg.fps, top:top + cfg.square, left:left + cfg.square] = palette[colour]
    frames += rng.normal(0.0, cfg.video_noise, frames.shape).astype(np.float32)
    return np.clip(frames.round(), 0, 255).astype(np.uint8)


def render_long_audio(scene: Scene, cfg: LongWorldConfig, rng: np.random.Generator) -> np.ndarray:
    """ToyWorld's noise + beeps (:func:`fusion.data.toyworld.render_audio`) plus the hum
    ``a(t) sin(2 pi hum_hz t)``, ``a`` drifting linearly between two draws from ``hum_amplitude``."""
    wave = render_audio(scene, cfg, rng)  # (T * sr,)
    t = np.arange(wave.size) / cfg.sample_rate
    a0, a1 = rng.uniform(*cfg.hum_amplitude, size=2)
    drift = a0 + (a1 - a0) * t / max(t[-1], 1e-9)
    return (wave + drift * np.sin(2 * np.pi * cfg.hum_hz * t)).astype(np.float32)


def generate_split(out: str | Path, split: str, n: int, seed: int, cfg: LongWorldConfig | None = None,
                   progress: bool = False) -> list[MCQSample]:
    """Write ``n`` clips of ``split`` under ``out/videos`` and return their samples (category ``i % 4``)."""
    cfg = cfg or LongWorldConfig()
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
        T = int(rng.integers(cfg.min_seconds, cfg.max_seconds + 1))
        scene = make_scene(cat.name, answer, T, rng, cfg)
        path = out / "videos" / f"{split}-{i:05d}.mp4"
        write_clip(path, render_video(scene, cfg, rng), cfg.fps, render_long_audio(scene, cfg, rng), cfg.sample_rate)
        samples.append(MCQSample(
            id=f"{split}-{i:05d}", video=str(path), question=cat.question, options=list(cat.options),
            answer=LETTERS[answer], category=cat.name,
            extra={"needs": cat.needs, "seconds": T, "length_bucket": cfg.bucket(T),
                   "scene": {**scene.to_json(), "grid": cfg.grid, "beep": cfg.beep}}))
        bar.update(1)
    bar.close()
    return samples


def generate(out: str | Path, n_train: int, n_test: int, seed: int = 0, cfg: LongWorldConfig | None = None,
             progress: bool = False, n_val: int = 0) -> dict[str, Path]:
    """Write the splits of non-zero size and their JSONL files (a split of size 0 is left as it is on disk);
    return ``{split: path}`` of the written ones. A folder holding another world (seed or settings) is refused."""
    if min(n_train, n_test, n_val) < 0:
        raise ConfigError(f"split sizes must be >= 0, got n_train={n_train}, n_val={n_val}, n_test={n_test}")
    cfg = cfg or LongWorldConfig()
    out = Path(out)
    settings = json.loads(json.dumps(asdict(cfg)))
    info_path = out / INFO_NAME
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if info and (info.get("seed"), info.get("config")) != (seed, settings):
        raise ConfigError(f"{out} holds ToyWorld-Long of seed {info.get('seed')} with other settings; write this "
                          "world to another folder (clips of two worlds must not mix)")
    paths = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        if n > 0:
            paths[split] = save_jsonl(generate_split(out, split, n, seed, cfg, progress), out / f"{split}.jsonl")
    info.update({"seed": seed, "config": settings, "categories": [asdict(c) for c in CATEGORIES]})
    info.update({f"n_{split}": n for split, n in (("train", n_train), ("val", n_val), ("test", n_test)) if n > 0})
    out.mkdir(parents=True, exist_ok=True)
    info_path.write_text(json.dumps(info, indent=2))
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fusion.data.toyworld_long", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-val", type=int, default=400,
                        help="validation clips (val.jsonl), for choosing recipes; the test split is reported once")
    parser.add_argument("--n-test", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-seconds", type=int, default=8)
    parser.add_argument("--max-seconds", type=int, default=16)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    cfg = LongWorldConfig(min_seconds=args.min_seconds, max_seconds=args.max_seconds)
    paths = generate(args.out, args.n_train, args.n_test, args.seed, cfg, progress=True, n_val=args.n_val)
    print(f"wrote {args.n_train} train + {args.n_val} val + {args.n_test} test clips to {args.out} "
          f"({time.perf_counter() - start:.1f} s): {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    main()
