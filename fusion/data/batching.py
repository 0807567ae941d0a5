"""MCQ samples -> one processor batch, for evaluation (prompt only) or training (prompt + answer, with labels).

``collate(samples, processor, mode)`` decodes each sample's media (:func:`fusion.data.media.load_media`),
renders its conversation (:mod:`fusion.data.prompts`) with the processor's chat template and calls the
processor with the audio track interleaved in the video (``use_audio_in_video``). A clip without an audio
track becomes a video-only input (``Batch.has_audio`` records it).

* ``mode="eval"``: text ends with the generation prompt (``<|im_start|>assistant\\n``); left padding by default,
  so ``model.generate`` and logits scoring both work.
* ``mode="train"``: the answer letter and ``<|im_end|>`` follow; right padding by default;
  ``labels = input_ids`` at those answer tokens and ``-100`` everywhere else (prompt, media, padding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from fusion.data.mcq import MCQSample
from fusion.data.media import DecodedMedia, MediaSettings, load_media
from fusion.data.prompts import answer_text, conversation
from fusion.errors import ConfigError, ContextLengthError, InputMismatchError

IGNORE_INDEX = -100
END_OF_TURN = "<|im_end|>"
MODES = ("eval", "train")


@dataclass
class Batch:
    """A collated batch.

    Attributes:
        inputs: the processor's output (``input_ids``, ``attention_mask``, ``pixel_values_videos``,
            ``video_grid_thw``, ``video_second_per_grid`` and, when some clip has audio, ``input_features``,
            ``feature_attention_mask``).
        labels: ``(B, L)`` training labels (``-100`` except answer tokens), or None in eval mode.
        samples: the samples, in batch order.
        answers: ``(B,)`` index of each correct option.
        n_options: ``(B,)`` options per sample.
        has_audio: per sample, whether its clip had an audio track.
    """

    inputs: dict
    labels: Tensor | None
    samples: list[MCQSample]
    answers: Tensor
    n_options: Tensor
    has_audio: list[bool] = field(default_factory=list)

    def model_inputs(self, with_labels: bool = True) -> dict:
        """Keyword arguments for ``model(**...)`` (``use_audio_in_video`` set, labels included in train mode)."""
        out = dict(self.inputs)
        out["use_audio_in_video"] = any(self.has_audio)
        if with_labels and self.labels is not None:
            out["labels"] = self.labels
        return out


def render(sample: MCQSample, processor, mode: str, style: str) -> tuple[str, str]:
    """``(prompt, full)`` texts: ``full`` = prompt + answer + end of turn in train mode, = prompt in eval mode."""
    prompt = processor.apply_chat_template(conversation(sample, style), add_generation_prompt=True)
    return prompt, (prompt + answer_text(sample) + END_OF_TURN if mode == "train" else prompt)


def answer_label_counts(processor, prompts: list[str], fulls: list[str]) -> list[int]:
    """Tokens the answer adds to each prompt: ``len(tok(full)) - len(tok(prompt))``, checking that the prompt's
    tokens are a prefix of the full text's (so the answer tokens are exactly the last ones)."""
    counts = []
    for prompt, full in zip(prompts, fulls):  # one sample per iteration
        p = processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        f = processor.tokenizer(full, add_special_tokens=False)["input_ids"]
        if f[: len(p)] != p:
            raise InputMismatchError("the tokenizer merges the answer into the prompt's last tokens, so answer labels "
                                     "cannot be placed; end the generation prompt with a separator")
        counts.append(len(f) - len(p))
    return counts


def labels_for(input_ids: Tensor, attention_mask: Tensor, answer_tokens: list[int] | Tensor) -> Tensor:
    """``(B, L)`` labels: ``input_ids`` at each row's last ``answer_tokens[b]`` real positions, -100 elsewhere.

    Position ``j`` of row ``b`` is an answer token when ``last_b - answer_tokens[b] < j <= last_b`` and real.
    """
    L = input_ids.shape[1]
    positions = torch.arange(L, device=input_ids.device).expand_as(input_ids)  # (B, L)
    real = attention_mask.bool()
    last = torch.where(real, positions, torch.full_like(positions, -1)).amax(1, keepdim=True)  # (B, 1)
    n = torch.as_tensor(answer_tokens, device=input_ids.device).view(-1, 1)
    is_answer = real & (positions > last - n) & (positions <= last)
    return torch.where(is_answer, input_ids, torch.full_like(input_ids, IGNORE_INDEX))


def collate(samples: list[MCQSample], processor, mode: str = "eval", style: str = "toy",
            media: list[DecodedMedia] | None = None, settings: MediaSettings | None = None,
            padding_side: str | None = None, use_audio: bool = True) -> Batch:
    """Decode, render and process ``samples`` into one :class:`Batch`.

    Args:
        samples: the questions (one video each).
        processor: an :class:`~fusion.data.processor.OmniProcessor` (toy or Qwen's files).
        mode: ``"eval"`` (prompt only) or ``"train"`` (prompt + answer, labels).
        style: prompt style (:data:`fusion.data.prompts.STYLES`).
        media: already decoded media per sample (skips decoding), e.g. from a cache.
        settings: decoding settings (default: matched to ``processor``).
        padding_side: ``"left"``/``"right"``; default left for eval, right for train.
        use_audio: False drops every audio track (a video-only control).
    """
    if mode not in MODES:
        raise ConfigError(f"collate mode {mode!r} is unknown; use one of {list(MODES)}")
    if not samples:
        raise InputMismatchError("collate needs at least one sample")
    padding_side = padding_side or ("left" if mode == "eval" else "right")
    if media is None:
        settings = settings or MediaSettings.from_processor(processor)
        media = [load_media(s.video, settings, audio=use_audio) for s in samples]
    if len(media) != len(samples):
        raise InputMismatchError(f"{len(media)} decoded media for {len(samples)} samples")
    prompts, fulls = zip(*(render(s, processor, mode, style) for s in samples))
    audio = [m.audio if use_audio else None for m in media]
    inputs = processor(list(fulls), videos=[m.frames for m in media], audio=audio, use_audio_in_video=True,
                       padding_side=padding_side)
    labels = None
    if mode == "train":
        labels = labels_for(inputs["input_ids"], inputs["attention_mask"],
                            answer_label_counts(processor, list(prompts), list(fulls)))
    return Batch(
        inputs=dict(inputs), labels=labels, samples=list(samples),
        answers=torch.tensor([s.answer_index for s in samples]),
        n_options=torch.tensor([len(s.options) for s in samples]),
        has_audio=[a is not None for a in audio],
    )


def context_errors(batch: Batch, processor, context: int | None) -> list[tuple[MCQSample, ContextLengthError]]:
    """``(sample, error)`` for each sample of ``batch`` whose sequence is longer than ``context`` tokens (the model's
    ``max_position_embeddings``); empty when ``context`` is None. Run it after processing, before the model: the
    frames and audio are bounded already (:mod:`fusion.data.media`), the attention over the sequence is not."""
    if context is None:
        return []
    mask, ids = batch.inputs["attention_mask"].bool(), batch.inputs["input_ids"]
    out = []
    for b, sample in enumerate(batch.samples):  # one sample per iteration
        n = int(mask[b].sum())
        if n > context:
            row = ids[b][mask[b]]
            video, audio = int((row == processor.ids.video).sum()), int((row == processor.ids.audio).sum())
            out.append((sample, ContextLengthError(
                f"sample {sample.id!r} ({sample.video}): {n} tokens ({video} video, {audio} audio) exceed the model's "
                f"context of {context} tokens; sample fewer frames (data.max_frames, e.g. 128 as OmniZip and "
                "WorldSense use, or MediaSettings.max_frames / total_pixels) or cut the clip")))
    return out


def check_context(batch: Batch, processor, context: int | None) -> None:
    """Raise the :class:`~fusion.errors.ContextLengthError` of the first sample longer than ``context`` tokens."""
    for _, error in context_errors(batch, processor, context):
        raise error
