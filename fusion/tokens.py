"""The data every compressor sees (`AVTokens`) and returns (`Selection`), plus what was kept (`KeepStats`).

All tensors are batched over the *unpruned* padded sequence: ``B`` samples, ``L`` positions. A compressor
never slices anything itself; it returns a boolean keep mask (and optionally replacement embeddings) and
:func:`fusion.model.keep.apply_keep` does the slicing in one place.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field

import torch
from torch import Tensor


class Modality(enum.IntEnum):
    """Per-token modality code stored in :attr:`AVTokens.modality`."""

    PAD = -1
    TEXT = 0  # text and every special token (bos/eos markers); never dropped
    VIDEO = 1
    AUDIO = 2
    IMAGE = 3  # still images are passed through untouched


@dataclass
class AVTokens:
    """One batch of the unpruned thinker sequence, annotated per token.

    Attributes:
        embeds: ``(B, L, D)`` inputs_embeds after the projectors' outputs were scattered in.
        input_ids: ``(B, L)`` token ids (placeholders at video/audio positions).
        attention_mask: ``(B, L)`` 1 for real tokens, 0 for padding.
        position_ids: ``(3, B, L)`` full TMRoPE ids computed on the unpruned sequence.
        modality: ``(B, L)`` int8 :class:`Modality` codes.
        special_ids: the placeholder / marker token ids (:class:`fusion.model.layout.SpecialIds`).
        video_grid_thw: ``(n_videos, 3)`` grids as passed to the model (patch units), or None.
        spatial_merge_size: patches merged per side into one video token (2 for Qwen2.5-Omni).
        position_id_per_seconds: TMRoPE ids per second (25 for Qwen2.5-Omni).
        seconds_per_chunk: chunk length in seconds (2 for Qwen2.5-Omni).
        extras: optional per-token signals computed on request (see ``Compressor.requires``), e.g.
            ``"audio_attention_global"``: ``(B, L)`` attention received in the audio encoder's last layer
            (NaN off audio tokens).

    Derived annotations, computed on first access (a method pays only for what it reads):
        time_id: ``(B, L)`` TMRoPE temporal id relative to the start of the token's AV block (25 per second);
            -1 for non-AV tokens.
        time_group: ``(B, L)`` index of the token's 2-second chunk (``time_id // 50`` per AV block, numbered
            densely per sample in (block, chunk) order); -1 for non-AV tokens.
        grid_place: ``(B, L, 3)`` ``(t, h, w)`` place of a video token in its video's merged grid (t counts
            temporal grids, h/w count merged 2x2 patches); -1 elsewhere.
        video_index: ``(B, L)`` index in ``video_grid_thw`` of the video a video token belongs to; -1 elsewhere.
    """

    embeds: Tensor
    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    modality: Tensor
    special_ids: object
    video_grid_thw: Tensor | None = None
    spatial_merge_size: int = 2
    position_id_per_seconds: int = 25
    seconds_per_chunk: int = 2
    extras: dict[str, Tensor] = field(default_factory=dict)

    @functools.cached_property
    def _time(self) -> tuple[Tensor, Tensor]:
        from fusion.model.annotate import block_time_ids, dense_groups

        time_id, block = block_time_ids(self.input_ids, self.position_ids, self.av_mask, self.special_ids)
        return time_id, dense_groups(time_id, block, self.av_mask, self.chunk_ids)

    @functools.cached_property
    def _places(self) -> tuple[Tensor, Tensor]:
        from fusion.model.annotate import video_places

        return video_places(self.input_ids, self.video_grid_thw, self.special_ids, self.spatial_merge_size)

    @property
    def time_id(self) -> Tensor:
        return self._time[0]

    @property
    def time_group(self) -> Tensor:
        return self._time[1]

    @property
    def grid_place(self) -> Tensor:
        return self._places[0]

    @property
    def video_index(self) -> Tensor:
        return self._places[1]

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    @property
    def video_mask(self) -> Tensor:
        """``(B, L)`` bool, True at video tokens."""
        return self.modality == Modality.VIDEO

    @property
    def audio_mask(self) -> Tensor:
        """``(B, L)`` bool, True at audio tokens."""
        return self.modality == Modality.AUDIO

    @property
    def av_mask(self) -> Tensor:
        """``(B, L)`` bool, True at video or audio tokens (the pool compressors choose from)."""
        return self.video_mask | self.audio_mask

    @property
    def n_video(self) -> Tensor:
        """``(B,)`` number of video tokens per sample."""
        return self.video_mask.sum(1)

    @property
    def n_audio(self) -> Tensor:
        """``(B,)`` number of audio tokens per sample."""
        return self.audio_mask.sum(1)

    @property
    def chunk_ids(self) -> int:
        """TMRoPE ids per chunk (``position_id_per_seconds * seconds_per_chunk``)."""
        return int(self.position_id_per_seconds * self.seconds_per_chunk)

    def seconds(self) -> Tensor:
        """``(B, L)`` float time of each AV token in seconds from the start of its block (NaN elsewhere)."""
        t = self.time_id.float() / self.position_id_per_seconds
        return torch.where(self.av_mask, t, torch.full_like(t, float("nan")))

    def keep_all(self) -> Selection:
        """A selection that keeps every real token."""
        return Selection(keep=self.attention_mask.bool().clone())


@dataclass
class Selection:
    """What a compressor returns.

    Attributes:
        keep: ``(B, L)`` bool. True = the token goes to the language model. Must be True at every real
            non-AV token (text, specials, images); padding is ignored.
        embeds: optional ``(B, L, D)`` replacement embeddings in the same layout as ``AVTokens.embeds``
            (merged or fused tokens, or embeddings multiplied by a straight-through gate). Only kept rows matter.
        key_bias: optional ``(B, L)`` float additive attention bias on every kept token's key (``log y`` of a soft
            keep ``y`` in (0, 1], 0 = fully kept): the relaxed selection of training, where every token stays in
            the sequence and a dropped one is one the LLM hardly attends to. None = plain (hard) selection.
    """

    keep: Tensor
    embeds: Tensor | None = None
    key_bias: Tensor | None = None


@dataclass
class KeepStats:
    """Per-sample token counts before and after compression (all ``(B,)`` long tensors).

    ``total`` counts audio + video tokens (the compressible pool); ``sequence`` counts every real token.
    """

    video_before: Tensor
    video_after: Tensor
    audio_before: Tensor
    audio_after: Tensor
    sequence_before: Tensor
    sequence_after: Tensor

    @classmethod
    def from_keep(cls, tokens: AVTokens, keep: Tensor) -> KeepStats:
        real = tokens.attention_mask.bool()
        kept = keep & real
        return cls(
            video_before=tokens.video_mask.sum(1),
            video_after=(tokens.video_mask & kept).sum(1),
            audio_before=tokens.audio_mask.sum(1),
            audio_after=(tokens.audio_mask & kept).sum(1),
            sequence_before=real.sum(1),
            sequence_after=kept.sum(1),
        )

    @property
    def total_before(self) -> Tensor:
        return self.video_before + self.audio_before

    @property
    def total_after(self) -> Tensor:
        return self.video_after + self.audio_after

    def rows(self) -> list[dict[str, int]]:
        """One JSON-friendly dict per sample."""
        names = ("video_before", "video_after", "audio_before", "audio_after", "total_before", "total_after",
                 "sequence_before", "sequence_after")
        columns = [getattr(self, n).tolist() for n in names]
        return [dict(zip(names, values)) for values in zip(*columns)]
