"""A cache of model-ready tensors for an MCQ split: decode and process every clip once, batch from memory.

:func:`build_cache` runs each sample through :func:`fusion.data.batching.collate` in train mode (prompt +
answer) and stores the processor's per-sample outputs in one safetensors file:

====================  ========================  ===============================================
key                   shape / dtype             meaning
====================  ========================  ===============================================
input_ids             (N, L_max) int32          prompt + answer ids, right-padded with the pad id
length                (N,) int64                real tokens per row
answer_tokens         (N,) int64                trailing answer tokens (letter + end of turn)
pixel_values_videos   (R, 1176) float16         every sample's patches, concatenated
video_rows            (N + 1,) int64            row offsets of each sample's patches
video_grid_thw        (N, 3) int64              grids
video_second_per_grid (N,) float32              seconds per temporal grid
input_features        (N, mels, F_max) float16  log-mel features, right-padded
feature_length        (N,) int64                mel frames per sample (0: no audio track)
answer, n_options     (N,) int64                correct option index, options per sample
====================  ========================  ===============================================

plus metadata (sample ids and categories as JSON, the prompt style, and a fingerprint of the processor
settings so a cache built for another processor is refused). :class:`CachedSplit` rebuilds training batches
(prompt + answer, labels) or evaluation batches (the prompt only: the answer tokens are cut off the end).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from fusion.data.batching import labels_for
from fusion.data.mcq import MCQSample
from fusion.errors import DatasetError, InputMismatchError

FORMAT_VERSION = "1"


def processor_fingerprint(processor, style: str) -> str:
    """A short hash of everything that changes the cached tensors (tokenizer vocabulary, video/audio settings,
    layout constants and family, prompt style)."""
    fields = {"vocab": sorted(processor.tokenizer.get_vocab().items()), "video": asdict(processor.video),
              "audio": asdict(processor.audio), "system": processor.default_system, "style": style,
              "pps": processor.position_id_per_seconds, "spc": processor.seconds_per_chunk, "format": FORMAT_VERSION}
    family = getattr(processor, "family", "qwen2_5")
    if family != "qwen2_5":  # another layout; Qwen2.5 caches keep the fingerprint they were built with
        fields.update(family=family, n_window=processor.n_window)
    payload = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _row(sample: MCQSample, processor, style: str) -> dict:
    """One sample's processor outputs (train mode: prompt + answer), as the cache stores them."""
    from fusion.data.batching import collate

    batch = collate([sample], processor, mode="train", style=style)
    x = batch.inputs
    return {
        "ids": x["input_ids"][0], "answer_tokens": int((batch.labels[0] != -100).sum()),
        "pixels": x["pixel_values_videos"].half(), "grid": x["video_grid_thw"][0],
        "spg": float(x["video_second_per_grid"][0]),
        "features": x["input_features"][0].half() if "input_features" in x else None,
        "answer": sample.answer_index, "n_options": len(sample.options),
    }


#: consecutive samples per task of the decoding pool (fewer than two shards' worth decode in this process)
SHARD_SIZE = 32

#: what a forked decoding worker reads (set by the pool's initializer; fork shares the processor, no pickling)
_WORKER: dict = {}


def _worker_init(processor, style: str) -> None:
    torch.set_num_threads(1)  # one core per worker: the workers are the parallelism
    _WORKER.update(processor=processor, style=style)


def _worker_rows(shard: list[MCQSample]) -> list[dict]:
    """A shard's rows with numpy arrays: they pickle by value back to the parent (torch tensors would travel
    through /dev/shm, which containers often cap at 64 MB)."""
    rows = [_row(sample, _WORKER["processor"], _WORKER["style"]) for sample in shard]  # one clip per iteration
    return [{k: v.numpy() if isinstance(v, Tensor) else v for k, v in r.items()} for r in rows]


def default_workers() -> int:
    """Decoding processes for :func:`build_cache`: the cores this process may use, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


def _decode_rows(samples: list[MCQSample], processor, style: str, workers: int, bar) -> list[dict]:
    """Every sample's row, in order: in this process (``workers`` <= 1, few samples, or no ``fork``), else in a
    pool of forked processes over shards of ``SHARD_SIZE`` consecutive samples (decoding is per clip and CPU-bound)."""
    import multiprocessing as mp

    if workers <= 1 or len(samples) < 2 * SHARD_SIZE or "fork" not in mp.get_all_start_methods():
        rows = []
        for sample in samples:  # one clip per iteration
            rows.append(_row(sample, processor, style))
            bar.update(1)
        return rows
    shards = [samples[i: i + SHARD_SIZE] for i in range(0, len(samples), SHARD_SIZE)]
    rows = []
    with mp.get_context("fork").Pool(workers, initializer=_worker_init, initargs=(processor, style)) as pool:
        for shard_rows in pool.imap(_worker_rows, shards):  # in order, as each shard finishes
            rows.extend({k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in r.items()}
                        for r in shard_rows)
            bar.update(len(shard_rows))
    return rows


def build_cache(samples: list[MCQSample], processor, path: str | Path, style: str = "toy",
                progress: bool = False, workers: int | None = None) -> Path:
    """Decode + process every sample once (train-mode sequences) and save the tensors to ``path``.

    ``workers``: decoding processes (None: :func:`default_workers`; 1: in this process). The file is the same for
    any number of workers (the rows keep the samples' order).
    """
    from fusion.progress import progress as progress_bar

    bar = progress_bar(total=len(samples), desc=f"caching {Path(path).name}", unit="clip", disable=not progress)
    rows = _decode_rows(samples, processor, style, default_workers() if workers is None else workers, bar)
    bar.close()
    pad = processor.tokenizer.pad_token_id
    n, width = len(rows), max(len(r["ids"]) for r in rows)
    input_ids = torch.full((n, width), pad, dtype=torch.int32)
    for i, r in enumerate(rows):
        input_ids[i, : len(r["ids"])] = r["ids"]
    mels = next((r["features"].shape[0] for r in rows if r["features"] is not None), processor.audio.num_mel_bins)
    frames = max((r["features"].shape[1] for r in rows if r["features"] is not None), default=0)
    features = torch.zeros((n, mels, frames), dtype=torch.float16)
    for i, r in enumerate(rows):
        if r["features"] is not None:
            features[i, :, : r["features"].shape[1]] = r["features"]
    counts = torch.tensor([r["pixels"].shape[0] for r in rows])
    tensors = {
        "input_ids": input_ids,
        "length": torch.tensor([len(r["ids"]) for r in rows]),
        "answer_tokens": torch.tensor([r["answer_tokens"] for r in rows]),
        "pixel_values_videos": torch.cat([r["pixels"] for r in rows]),
        "video_rows": torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
        "video_grid_thw": torch.stack([r["grid"] for r in rows]).long(),
        "video_second_per_grid": torch.tensor([r["spg"] for r in rows], dtype=torch.float32),
        "input_features": features,
        "feature_length": torch.tensor([0 if r["features"] is None else r["features"].shape[1] for r in rows]),
        "answer": torch.tensor([r["answer"] for r in rows]),
        "n_options": torch.tensor([r["n_options"] for r in rows]),
    }
    metadata = {"ids": json.dumps([s.id for s in samples]), "categories": json.dumps([s.category for s in samples]),
                "style": style, "pad_token_id": str(pad), "fingerprint": processor_fingerprint(processor, style),
                "format": FORMAT_VERSION}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)  # atomic: a reader (or another rank) never sees a half-written cache
    return path


def cache_path(jsonl: str | Path, processor, style: str = "toy") -> Path:
    """Where the cache of an MCQ JSONL lives: ``<its folder>/cache/<stem>-<processor fingerprint>.safetensors``."""
    jsonl = Path(jsonl)
    return jsonl.parent / "cache" / f"{jsonl.stem}-{processor_fingerprint(processor, style)}.safetensors"


def cached_split(jsonl: str | Path, processor, style: str = "toy", progress: bool = False) -> CachedSplit:
    """The cached tensors of an MCQ JSONL split, built once (decoding every clip) on first use.

    The samples are attached as ``split.samples`` (their ids are checked against the cache's, so a JSONL edited
    after caching is refused rather than silently mismatched).
    """
    from fusion.data.mcq import load_jsonl

    samples = load_jsonl(jsonl)
    path = cache_path(jsonl, processor, style)
    if not path.is_file():
        build_cache(samples, processor, path, style=style, progress=progress)
    split = CachedSplit(path, processor, style=style)
    if [x.id for x in samples] != split.ids:
        raise DatasetError(f"{path} was built from another version of {jsonl}; delete {path.parent} and rerun")
    split.samples = samples
    return split


class CachedSplit:
    """A split's cached tensors (see module doc), batched on demand.

    Args:
        path: the cache file written by :func:`build_cache`.
        processor: if given, the cache must have been built with the same settings (else
            :class:`~fusion.errors.DatasetError`).
        style: the prompt style the cache must have.
    """

    def __init__(self, path: str | Path, processor=None, style: str = "toy") -> None:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"no tensor cache at {path}; build it with fusion.data.cache.build_cache")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT_VERSION:
            raise DatasetError(f"{path} is not a tensor cache of format {FORMAT_VERSION}; rebuild it")
        if processor is not None and meta.get("fingerprint") != processor_fingerprint(processor, style):
            raise DatasetError(f"{path} was built with another processor or prompt style; delete it and rebuild")
        self.path = path
        self.t = load_file(str(path))
        self.ids: list[str] = json.loads(meta["ids"])
        self.categories: list[str] = json.loads(meta["categories"])
        self.pad_token_id = int(meta["pad_token_id"])

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def answers(self) -> Tensor:
        return self.t["answer"]

    def batch(self, index: list[int] | Tensor, mode: str = "train", padding_side: str | None = None,
              dtype: torch.dtype = torch.float32) -> dict:
        """Model inputs for the samples at ``index``.

        ``mode="train"``: prompt + answer, right padding by default, with ``labels``.
        ``mode="eval"``: the prompt only (last ``answer_tokens`` ids removed), left padding by default.
        Returns a dict for ``model(**batch)`` plus ``"answer"`` and ``"n_options"`` (pop them before the call).
        """
        if mode not in ("train", "eval"):
            raise InputMismatchError(f"mode must be 'train' or 'eval', got {mode!r}")
        index = torch.as_tensor(index, dtype=torch.long).view(-1)
        t = self.t
        padding_side = padding_side or ("right" if mode == "train" else "left")
        lengths = t["length"][index] - (0 if mode == "train" else t["answer_tokens"][index])
        width = int(lengths.max())
        ids = torch.full((len(index), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(index), width), dtype=torch.long)
        pixels = []
        for row, (i, n) in enumerate(zip(index.tolist(), lengths.tolist())):  # one sample per iteration
            sl = slice(0, n) if padding_side == "right" else slice(width - n, width)
            ids[row, sl] = t["input_ids"][i, :n].long()
            mask[row, sl] = 1
            pixels.append(t["pixel_values_videos"][t["video_rows"][i]: t["video_rows"][i + 1]])
        out = {
            "input_ids": ids, "attention_mask": mask, "pixel_values_videos": torch.cat(pixels).to(dtype),
            "video_grid_thw": t["video_grid_thw"][index], "video_second_per_grid": t["video_second_per_grid"][index],
            "answer": t["answer"][index], "n_options": t["n_options"][index],
        }
        feature_length = t["feature_length"][index]
        with_audio = feature_length > 0
        if bool(with_audio.any()):
            frames = int(feature_length.max())
            out["input_features"] = t["input_features"][index[with_audio], :, :frames].to(dtype)
            out["feature_attention_mask"] = (torch.arange(frames)[None, :] < feature_length[with_audio, None]).long()
        out["use_audio_in_video"] = bool(with_audio.any())
        if mode == "train":
            out["labels"] = labels_for(ids, mask, t["answer_tokens"][index])
        return out
