"""Shared by scripts/pretrain_toy.py and scripts/eval_toy.py: ToyWorld data preparation and cached evaluation."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from fusion.data.cache import CachedSplit, cached_split
from fusion.data.scoring import accuracy, letter_token_ids, predict_from_output
from fusion.data.toyworld import generate


def prepare_data(data: Path, processor, n_train: int, n_test: int, seed: int, log=print,
                 generator=generate) -> dict[str, CachedSplit]:
    """Generate ToyWorld (or the world of ``generator``, e.g. ``fusion.data.toyworld_long.generate``) into ``data``
    if it is not there, build the tensor caches once, load them (each split also gets ``.scenes``, the
    generator's scene per sample, for evidence-aware compressors)."""
    if not (data / "train.jsonl").is_file() or not (data / "test.jsonl").is_file():
        start = time.perf_counter()
        log(f"generating {generator.__module__} ({n_train} train + {n_test} test clips, seed {seed}) into {data}")
        generator(data, n_train, n_test, seed, progress=True)
        log(f"  generated in {time.perf_counter() - start:.0f} s")
    splits = {}
    for split in ("train", "test"):
        start = time.perf_counter()
        splits[split] = cached_split(data / f"{split}.jsonl", processor, style="toy", progress=True)
        log(f"  {split}: {len(splits[split])} cached clips ({time.perf_counter() - start:.0f} s)")
        splits[split].scenes = [x.extra["scene"] for x in splits[split].samples]
    return splits


@torch.no_grad()
def evaluate(model, split: CachedSplit, processor, index=None, batch_size: int = 64,
             shuffle_media: bool = False) -> dict:
    """Logits-mode accuracy (%) of ``model`` (with whatever compressor it holds) on a cached split.

    ``shuffle_media`` pairs each question with the media of another sample of the same category (a control:
    what the model gets from the question and the frequency prior alone). Returns the accuracy table of
    :func:`fusion.data.scoring.accuracy` plus ``"kept"``: measured retention per modality (token-weighted).
    """
    was_training = model.training
    model.eval()
    index = torch.arange(len(split)) if index is None else torch.as_tensor(index)
    letters = letter_token_ids(processor.tokenizer, "ABCD")
    correct, categories = [], []
    kept = torch.zeros(4, dtype=torch.long)  # video before/after, audio before/after
    for start in range(0, len(index), batch_size):  # one batch per iteration
        idx = index[start:start + batch_size]
        if hasattr(model.compressor, "set_batch"):  # evidence-aware compressors read the scenes
            model.compressor.set_batch([split.scenes[i] for i in idx.tolist()],
                                       [split.categories[i] for i in idx.tolist()])
        batch = split.batch(idx, mode="eval")
        if shuffle_media:
            batch = _with_shuffled_media(split, idx, batch)
        answer, n_options = batch.pop("answer"), batch.pop("n_options")
        out = model(**batch)
        pred = predict_from_output(out, batch["attention_mask"], letters, n_options)
        correct += (pred == answer).tolist()
        categories += [split.categories[i] for i in idx.tolist()]
        s = model.last_stats
        kept += torch.stack([s.video_before.sum(), s.video_after.sum(), s.audio_before.sum(), s.audio_after.sum()])
    model.train(was_training)
    table = accuracy(correct, categories)
    table["kept"] = {"video": float(kept[1] / kept[0].clamp(min=1)), "audio": float(kept[3] / kept[2].clamp(min=1))}
    return table


def _with_shuffled_media(split: CachedSplit, idx: torch.Tensor, batch: dict) -> dict:
    """The same questions with the media of other samples of the same category (a fixed derangement)."""
    cats = [split.categories[i] for i in idx.tolist()]
    other = idx.clone()
    for c in set(cats):  # one category per iteration
        where = [j for j, x in enumerate(cats) if x == c]
        if len(where) > 1:
            other[where] = idx[where[1:] + where[:1]]
    donor = split.batch(other, mode="eval")
    for key in ("pixel_values_videos", "video_grid_thw", "video_second_per_grid", "input_features",
                "feature_attention_mask"):
        if key in donor:
            batch[key] = donor[key]
    return batch


def format_table(rows: dict[str, dict], categories: list[str]) -> str:
    """A markdown table: one row per setting, one column per category, then all/mean and kept retention."""
    head = "| setting | " + " | ".join(categories) + " | all | mean | video kept | audio kept |"
    lines = [head, "|" + "---|" * (len(categories) + 5)]
    for name, t in rows.items():
        cells = [f"{t[c]:.1f}" for c in categories] + [f"{t['all']:.1f}", f"{t['mean']:.1f}"]
        cells += [f"{t['kept']['video']:.2f}", f"{t['kept']['audio']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
