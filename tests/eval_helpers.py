"""Small benchmarks for the harness tests: a ToyWorld split, a WorldSense copy in the real layout, a JSONL with a
corrupt clip, and a config builder around the tiny random model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from eval.config import EvalConfig
from fusion.config import load_config
from fusion.data.mcq import load_jsonl, save_jsonl

DOMAINS = ["Tech & Science", "Culture & Politics"]


def toy_split(root: Path, n: int = 8) -> Path:
    """ToyWorld's test split of ``n`` clips (seed 0) in ``root`` (generated once per folder)."""
    from fusion.data.toyworld import generate

    if not (root / "test.jsonl").is_file():
        generate(root, n_train=0, n_test=n, seed=0)
    return root


def corrupt_jsonl(toy: Path, out: Path, n_good: int = 3) -> Path:
    """A JSONL benchmark: ``n_good`` ToyWorld questions plus one whose .mp4 is garbage bytes (id ``broken``)."""
    out.mkdir(parents=True, exist_ok=True)
    samples = load_jsonl(toy / "test.jsonl")[:n_good]
    bad = out / "broken.mp4"
    bad.write_bytes(b"\x00\x01 not an mp4 at all" * 10)
    rows = [s.to_row() for s in samples]
    rows.insert(1, {**rows[0], "id": "broken", "video": str(bad)})
    path = out / "mcq.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def worldsense_copy(toy: Path, root: Path) -> Path:
    """A 2-video, 3-question WorldSense copy in the dataset's real layout (worldsense_qa.json + videos/<id>.mp4)."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    clips = load_jsonl(toy / "test.jsonl")[:2]
    data = {}
    for i, clip in enumerate(clips):  # one video per iteration
        vid = f"ws{i:03d}"
        shutil.copy(clip.video, root / "videos" / f"{vid}.mp4")
        entry = {"video_id": vid, "video_duration": 4.0, "duration": "<1min", "domain": DOMAINS[i],
                 "sub_category": "demo", "audio_class": ["speech"], "video_caption": "a clip"}
        for t in range(2 - i):  # video 0 holds two questions, video 1 one
            entry[f"task{t}"] = {"task_domain": DOMAINS[i], "task_type": ["Audio Counting", "Event Recognition"][t],
                                 "question": "how many beeps are heard ?",
                                 "answer": "ABCD"[(i + t) % 4],
                                 "candidates": ["A. one", "B. two", "C. three", "D. four"]}
        data[vid] = entry
    (root / "worldsense_qa.json").write_text(json.dumps(data, indent=1))
    return root


def tiny_config(tmp: Path, toy: Path, *overrides: str, path: str | None = None) -> EvalConfig:
    """An eval config on the tiny random model (CPU, fp32), ToyWorld in ``toy``, outputs in ``tmp/run``."""
    base = ["model.name=tiny-random", "model.device=cpu", f"data.toyworld.dir={toy}", f"run.output_dir={tmp / 'run'}",
            "run.progress=false", "scoring.warmup=0"]
    return load_config(EvalConfig, path, base + list(overrides))


def save_subset(toy: Path, out: Path, n: int) -> Path:
    """The first ``n`` ToyWorld questions as a JSONL benchmark."""
    return save_jsonl(load_jsonl(toy / "test.jsonl")[:n], out / "subset.jsonl")
