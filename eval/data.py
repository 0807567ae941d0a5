"""Benchmark questions and their model inputs.

:func:`load_benchmark` gives the questions (ToyWorld's test split, generated with a fixed seed when missing;
WorldSense from a local copy; any MCQ JSONL). :func:`prepare` decodes one batch's media ONCE and builds the
processor batch that every method setting of the run then reuses (the harness loops sample-major), isolating
samples whose media or processing fail so that they are reported instead of taking their batch down.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from eval.config import DataConfig
from fusion.data.mcq import MCQSample, load_jsonl
from fusion.errors import ConfigError, DatasetError


def load_toyworld(cfg: DataConfig, log=print) -> list[MCQSample]:
    """ToyWorld's test split from ``cfg.toyworld.dir``, generated there first when it has no ``test.jsonl``; or its
    validation split (``split: val``), which must exist."""
    from fusion.data.toyworld import ToyWorldConfig, generate

    t = cfg.toyworld
    world = ToyWorldConfig(seconds=t.seconds)
    return _generated_split("fusion.data.toyworld", generate, world, Path(t.dir), t.split, t.n_test, t.seed,
                            "toyworld.json", ("seconds",), log)


def load_toyworld_long(cfg: DataConfig, log=print) -> list[MCQSample]:
    """ToyWorld-Long's test split from ``cfg.toyworld_long.dir`` (generated when missing) or its validation split."""
    from fusion.data.toyworld_long import INFO_NAME, LongWorldConfig, generate

    t = cfg.toyworld_long
    world = LongWorldConfig(min_seconds=t.min_seconds, max_seconds=t.max_seconds)
    return _generated_split("fusion.data.toyworld_long", generate, world, Path(t.dir), t.split, t.n_test, t.seed,
                            INFO_NAME, ("min_seconds", "max_seconds"), log)


def _generated_split(module: str, generate, world, root: Path, split: str, n_test: int, seed: int, info_name: str,
                     checked: tuple[str, ...], log) -> list[MCQSample]:
    """The ``split`` of a generated world in ``root``: a missing test split is generated (``n_test`` clips), a
    missing val split is an error saying how to write it; a folder of another seed or settings is refused."""
    path = root / f"{split}.jsonl"
    if split == "val" and not path.is_file():
        raise ConfigError(f"{split} split: {path} does not exist; write it with `python -m {module} --out {root} "
                          f"--n-train 0 --n-val 500 --n-test 0 --seed {seed}` (clips of other splits are kept)")
    if not path.is_file():
        log(f"generating the test split of {module} ({n_test} clips, seed {seed}) into {root}")
        generate(root, n_train=0, n_test=n_test, seed=seed, cfg=world)
    info = root / info_name
    if info.is_file():
        saved = json.loads(info.read_text())
        want = {k: getattr(world, k) for k in checked}
        got = {k: saved.get("config", {}).get(k) for k in checked}
        if saved.get("seed") != seed or got != want:
            raise ConfigError(f"{root} holds {module} clips of seed {saved.get('seed')} with {got}, not seed {seed} "
                              f"with {want}; point the benchmark's dir elsewhere or match the settings")
    return load_jsonl(path)


def load_benchmark(cfg: DataConfig, log=print) -> list[MCQSample]:
    """The run's questions, in file order, cut to ``cfg.limit``."""
    if cfg.benchmark == "toyworld":
        samples = load_toyworld(cfg, log)
    elif cfg.benchmark == "toyworld_long":
        samples = load_toyworld_long(cfg, log)
    elif cfg.benchmark == "worldsense":
        from fusion.data.worldsense import load_worldsense

        w = cfg.worldsense
        samples = load_worldsense(w.root, w.qa_file, w.video_dir)
    else:
        samples = load_jsonl(cfg.jsonl)
    if not samples:
        raise DatasetError(f"data: the {cfg.benchmark} benchmark has no questions")
    return samples[: cfg.limit] if cfg.limit else samples


def group_value(sample: MCQSample, key: str) -> str:
    """The value of ``key`` (``category`` or an ``extra`` key) for grouping accuracy; ``"?"`` when missing."""
    if key == "category":
        return sample.category
    value = sample.extra.get(key)
    return "?" if value is None else str(value)


@dataclass
class Prepared:
    """A batch's model inputs (for the samples that decoded), plus the samples that failed before the model.

    Attributes:
        samples: the samples in ``inputs``, in batch order.
        inputs: keyword arguments of ``model(...)`` / ``model.generate(...)`` (on the device, floats in the dtype).
        n_options: ``(B,)`` options per sample.
        failed: ``[(sample, "ErrorType: message")]`` for samples whose media or processing failed.
    """

    samples: list[MCQSample]
    inputs: dict | None
    n_options: torch.Tensor | None
    failed: list[tuple[MCQSample, str]] = field(default_factory=list)


def error_text(error: BaseException) -> str:
    """``"ErrorType: message"`` (what samples.jsonl and the tables show)."""
    return f"{type(error).__name__}: {error}"


def to_device(inputs: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Tensors moved to ``device``; floating tensors cast to ``dtype``."""
    out = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            value = value.to(dtype) if value.is_floating_point() else value
        out[key] = value
    return out


def prepare(samples: list[MCQSample], processor, cfg: DataConfig, device: torch.device,
            dtype: torch.dtype, context: int | None = None) -> Prepared:
    """Decode each sample's media (once), render its prompt and build one left-padded eval batch.

    A sample whose media cannot be decoded, whose processing fails on its own, or whose sequence is longer than
    ``context`` tokens (the model's, :func:`fusion.data.batching.context_errors`) goes to ``failed`` with its error;
    the others form the batch.
    """
    from fusion.data.batching import collate, context_errors
    from fusion.data.media import MediaSettings, load_media

    settings = MediaSettings.from_processor(processor, max_frames=cfg.max_frames)
    good, media, failed = [], [], []
    for sample in samples:  # one clip per iteration
        try:
            media.append(load_media(sample.video, settings, audio=cfg.use_audio))
            good.append(sample)
        except Exception as e:  # noqa: BLE001 - reported per sample, never scored
            failed.append((sample, error_text(e)))
    if not good:
        return Prepared([], None, None, failed)
    try:
        batch = collate(good, processor, mode="eval", style=cfg.prompt, media=media, use_audio=cfg.use_audio)
    except Exception:  # noqa: BLE001 - isolate the sample(s) that break the batch
        parts = [prepare_one(s, m, processor, cfg) for s, m in zip(good, media)]
        failed += [(s, err) for s, err in parts if err is not None]
        good_media = [(s, m) for (s, err), m in zip(parts, media) if err is None]
        if not good_media:
            return Prepared([], None, None, failed)
        batch = collate([s for s, _ in good_media], processor, mode="eval", style=cfg.prompt,
                        media=[m for _, m in good_media], use_audio=cfg.use_audio)
    too_long = context_errors(batch, processor, context)
    if too_long:  # rebuild the batch without them (their attention would not fit)
        failed += [(s, error_text(e)) for s, e in too_long]
        dropped = {s.id for s, _ in too_long}
        media_of = {id(s): m for s, m in zip(good, media)}
        kept = [(s, media_of[id(s)]) for s in batch.samples if s.id not in dropped]
        if not kept:
            return Prepared([], None, None, failed)
        batch = collate([s for s, _ in kept], processor, mode="eval", style=cfg.prompt, media=[m for _, m in kept],
                        use_audio=cfg.use_audio)
    inputs = to_device(batch.model_inputs(with_labels=False), device, dtype)
    return Prepared(batch.samples, inputs, batch.n_options, failed)


def prepare_one(sample: MCQSample, media, processor, cfg: DataConfig) -> tuple[MCQSample, str | None]:
    """``(sample, None)`` if the sample processes on its own, else ``(sample, error)``."""
    from fusion.data.batching import collate

    try:
        collate([sample], processor, mode="eval", style=cfg.prompt, media=[media], use_audio=cfg.use_audio)
        return sample, None
    except Exception as e:  # noqa: BLE001
        return sample, error_text(e)
