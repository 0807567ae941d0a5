"""The ``synthetic`` source: random media in the processor's exact layout and a one-letter answer to learn.

Sample ``i`` (drawn from ``seed`` and ``i`` only, so any order or rank split sees the same sample) is the chat::

    <|im_start|>system ...<|im_end|> <|im_start|>user [interleaved video+audio block] question <|im_end|>
    <|im_start|>assistant LETTER <|im_end|>

with labels on ``LETTER <|im_end|>`` only. ``cue="text"``: the question holds one colour word and the letter is
fixed by it (red -> A, green -> B, blue -> C, yellow -> D), so LoRA learns it in a few steps and the loss
visibly drops; ``cue="media"``: the letter is the index of the 2-s chunk whose pixels and mel features carry a
+2 offset, so only the AV tokens tell the answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fusion.model.layout import SpecialIds, audio_tokens_for_frames, av_block_ids
from fusion.testing import MEL_FRAMES_PER_SECOND, VIDEO_FPS
from train.sources import IGNORE_INDEX, register_source

LETTERS = ("A", "B", "C", "D")
CUE_WORDS = ("red", "green", "blue", "yellow")
QUESTION_TOKENS = 6
MEDIA_OFFSET = 2.0


@dataclass
class SyntheticExample:
    """One sample: token ids and labels (same length), patches and grid of its video, mel features, answer."""

    input_ids: list[int]
    labels: list[int]
    pixel_values: Tensor  # (grid_t * grid_h * grid_w, 3 * 2 * 14 * 14)
    grid: tuple[int, int, int]
    mel: Tensor  # (mel bins, frames)
    answer: int


class SyntheticSource:
    """See module doc. Args: the ``data.synthetic`` section, the processor (its tokenizer), the thinker config."""

    def __init__(self, config, processor, model_config) -> None:
        self.config = config
        self.model_config = model_config
        tok = processor.tokenizer
        self.encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.ids = SpecialIds.from_config(model_config)
        self.letters = [self.encode(letter) for letter in LETTERS]
        self.cues = [self.encode(word) for word in CUE_WORDS]
        banned = {i for ids in self.cues for i in ids} | set(tok.all_special_ids) | set(self.ids.markers) | {
            self.ids.video, self.ids.audio, self.ids.image, self.pad_id}
        pool = torch.arange(len(tok))
        self.filler = pool[~torch.isin(pool, torch.tensor(sorted(banned)))]  # words, never an accidental cue
        self.system = self.encode("<|im_start|>system\nyou are a helpful assistant .<|im_end|>\n<|im_start|>user\n")
        self.user_end = self.encode("<|im_end|>\n<|im_start|>assistant\n")
        self.turn_end = self.encode("<|im_end|>")

    def __len__(self) -> int:
        return self.config.n_samples

    def example(self, index: int) -> SyntheticExample:
        cfg, vc = self.config, self.model_config.vision_config
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index)
        seconds = int(torch.randint(cfg.seconds_min, cfg.seconds_max + 1, (1,), generator=g))
        grid_t = math.ceil(seconds * VIDEO_FPS / vc.temporal_patch_size)
        side = cfg.frame_size // vc.patch_size
        per_grid = side * side // vc.spatial_merge_size ** 2
        second_per_grid = vc.temporal_patch_size / VIDEO_FPS
        n_mel = seconds * MEL_FRAMES_PER_SECOND
        patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
        pixels = torch.randn(grid_t * side * side, patch_dim, generator=g)  # (rows, 1176)
        mel = torch.randn(self.model_config.audio_config.num_mel_bins, n_mel, generator=g)  # (mels, frames)
        filler = self.filler[torch.randint(len(self.filler), (QUESTION_TOKENS,), generator=g)].tolist()
        chunks = math.ceil(seconds / self.model_config.seconds_per_chunk)
        if cfg.cue == "text":
            answer = int(torch.randint(len(LETTERS), (1,), generator=g))
            cut = int(torch.randint(QUESTION_TOKENS + 1, (1,), generator=g))
            question = filler[:cut] + self.cues[answer] + filler[cut:]
        else:
            answer = int(torch.randint(min(len(LETTERS), chunks), (1,), generator=g))
            question = filler
            grids_per_chunk = int(self.model_config.seconds_per_chunk / second_per_grid)
            rows = slice(answer * grids_per_chunk * side * side, (answer + 1) * grids_per_chunk * side * side)
            pixels[rows] += MEDIA_OFFSET
            frames = self.model_config.seconds_per_chunk * MEL_FRAMES_PER_SECOND
            mel[:, answer * frames:(answer + 1) * frames] += MEDIA_OFFSET
        block = av_block_ids(self.ids, grid_t, per_grid, second_per_grid, audio_tokens_for_frames(n_mel),
                             self.model_config.position_id_per_seconds, self.model_config.seconds_per_chunk)
        prompt = self.system + block + question + self.user_end
        answer_ids = self.letters[answer] + self.turn_end
        return SyntheticExample(input_ids=prompt + answer_ids, labels=[IGNORE_INDEX] * len(prompt) + answer_ids,
                                pixel_values=pixels, grid=(grid_t, side, side), mel=mel, answer=answer)

    def collate(self, examples: list[SyntheticExample]) -> dict[str, Tensor]:
        """Right-padded batch (see :class:`train.sources.DataSource`)."""
        B = len(examples)
        width = max(len(e.input_ids) for e in examples)
        frames = max(e.mel.shape[1] for e in examples)
        input_ids = torch.full((B, width), self.pad_id, dtype=torch.long)
        labels = torch.full((B, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros(B, width, dtype=torch.long)
        features = torch.zeros(B, examples[0].mel.shape[0], frames)
        feature_mask = torch.zeros(B, frames, dtype=torch.long)
        for b, e in enumerate(examples):  # one row per sample
            n = len(e.input_ids)
            input_ids[b, :n], labels[b, :n], attention_mask[b, :n] = torch.tensor(e.input_ids), \
                torch.tensor(e.labels), 1
            features[b, :, :e.mel.shape[1]], feature_mask[b, :e.mel.shape[1]] = e.mel, 1
        second_per_grid = self.model_config.vision_config.temporal_patch_size / VIDEO_FPS
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "pixel_values_videos": torch.cat([e.pixel_values for e in examples]),
                "video_grid_thw": torch.tensor([e.grid for e in examples], dtype=torch.long),
                "video_second_per_grid": torch.full((B,), second_per_grid),
                "input_features": features, "feature_attention_mask": feature_mask, "use_audio_in_video": True}


@register_source("synthetic")
def build_synthetic(config, processor, model_config) -> SyntheticSource:
    return SyntheticSource(config, processor, model_config)
