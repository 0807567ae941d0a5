"""Where every audio/video token sits for the block: its 2-s time group, its slot in a padded per-group batch,
the window of neighbour groups it may attend to, and the question tokens used by instruction pre-fusion.

Everything is vectorised over tokens; the only sizes are ``N`` (AV tokens in the batch), ``G`` (time groups
in the batch, numbered sample by sample) and ``M`` (the largest group of one modality).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fusion.tokens import AVTokens, Modality


@dataclass
class Packing:
    """A flat ``(N, d)`` set of rows laid out as a padded ``(G, M, d)`` batch, one batch row per group.

    Attributes:
        group: ``(N,)`` batch row of each flat row.
        slot: ``(N,)`` position inside that batch row (input order is kept within each group).
        mask: ``(G, M)`` bool, True at occupied slots.
    """

    group: Tensor
    slot: Tensor
    mask: Tensor

    def pack(self, values: Tensor) -> Tensor:
        """``(N, d)`` -> ``(G, M, d)`` (zeros at empty slots; differentiable)."""
        G, M = self.mask.shape
        return values.new_zeros(G, M, values.shape[-1]).index_put((self.group, self.slot), values)

    def unpack(self, packed: Tensor) -> Tensor:
        """``(G, M, d)`` -> ``(N, d)``, the inverse of :meth:`pack` on occupied slots."""
        return packed[self.group, self.slot]


def slot_within(group: Tensor, n_groups: int) -> Tensor:
    """``(N,)`` long ``slot_i = #{j < i : group_j = group_i}``: each row's position inside its group, in input order
    (a stable sort by group, minus each group's start). ``[1, 0, 1, 1] -> [0, 0, 1, 2]``."""
    counts = torch.bincount(group, minlength=n_groups)  # (G,)
    order = torch.sort(group, stable=True).indices  # (N,)
    starts = counts.cumsum(0) - counts  # (G,) first sorted index of each group
    slot = torch.empty_like(group)
    slot[order] = torch.arange(group.shape[0], device=group.device) - starts[group[order]]
    return slot


def make_packing(group: Tensor, n_groups: int) -> Packing:
    """Pack rows by ``group`` (``(N,)`` long in ``[0, n_groups)``).

    ``slot_i = #{j < i : group_j = group_i}`` (a stable sort by group, minus each group's start), so
    ``M = max_g |group g|`` (at least 1, so empty batches keep a valid shape).
    """
    n = group.shape[0]
    slot = slot_within(group, n_groups)  # (N,)
    width = max(1, int(slot.max()) + 1) if n else 1
    mask = torch.zeros(n_groups, width, dtype=torch.bool, device=group.device)
    mask[group, slot] = True
    return Packing(group, slot, mask)


def question_mask(tokens: AVTokens, turn_end_token_id: int | None) -> Tensor:
    """``(B, L)`` bool: the question tokens of each sample, for instruction pre-fusion.

    The question is the real text after the sample's last audio/video token, up to (not including) the first
    ``turn_end_token_id`` after it (``<|im_end|>`` closes the user turn, so the assistant's answer, which sits
    after it, is never attended to: no label leak in training, and the same key set at inference). Block markers
    are excluded. Samples without AV tokens get no question.
    """
    B, L = tokens.input_ids.shape
    pos = torch.arange(L, device=tokens.input_ids.device).expand(B, L)  # (B, L)
    last_av = torch.where(tokens.av_mask, pos, torch.full_like(pos, -1)).amax(1)  # (B,)
    after = pos > last_av[:, None]
    if turn_end_token_id is not None:
        is_end = (tokens.input_ids == turn_end_token_id) & after
        first_end = torch.where(is_end, pos, torch.full_like(pos, L)).amin(1)  # (B,)
        after &= pos < first_end[:, None]
    markers = torch.tensor(tokens.special_ids.markers, device=pos.device)
    text = (tokens.modality == Modality.TEXT) & ~torch.isin(tokens.input_ids, markers)
    return after & text & (last_av >= 0)[:, None]


@dataclass
class GroupLayout:
    """The block's view of one batch (see module doc).

    Attributes:
        rows: ``(N, 2)`` (sample, position) of every AV token, in row-major order.
        is_video: ``(N,)`` True for video rows, False for audio rows.
        group_sample: ``(G,)`` sample of each global group (groups of a sample are consecutive).
        window: ``(G, W)`` the ``W = 2n + 1`` groups ``g - n .. g + n`` (clamped into range).
        window_valid: ``(G, W)`` False where ``g + o`` is outside the batch or belongs to another sample.
        video: packing of the video rows (``rows[is_video]``) by global group.
        audio: packing of the audio rows by global group.
        question_rows: ``(Q, 2)`` (sample, position) of the question tokens, or None without pre-fusion.
        question: packing of the question rows by sample (``B`` batch rows), or None.
        group: ``(N,)`` global group of every row.
    """

    rows: Tensor
    is_video: Tensor
    group_sample: Tensor
    window: Tensor
    window_valid: Tensor
    video: Packing
    audio: Packing
    question_rows: Tensor | None = None
    question: Packing | None = None
    group: Tensor | None = None

    @property
    def n_groups(self) -> int:
        return self.group_sample.shape[0]

    @classmethod
    def build(cls, tokens: AVTokens, neighbours: int, instruction: bool = False,
              turn_end_token_id: int | None = None) -> GroupLayout:
        """Number groups globally (``offset[b] + time_group``) and pack both modalities by group."""
        B = tokens.batch_size
        device = tokens.input_ids.device
        av = tokens.av_mask  # (B, L)
        rows = av.nonzero()  # (N, 2) row-major: sample, then position
        local = tokens.time_group[rows[:, 0], rows[:, 1]]  # (N,)
        per_sample = (torch.where(av, tokens.time_group, torch.full_like(tokens.time_group, -1)).amax(1) + 1)
        per_sample = per_sample.clamp(min=0)  # (B,) groups per sample
        offset = per_sample.cumsum(0) - per_sample  # (B,)
        n_groups = int(per_sample.sum())
        group = offset[rows[:, 0]] + local  # (N,) global group
        group_sample = torch.repeat_interleave(torch.arange(B, device=device), per_sample)  # (G,)

        shifts = torch.arange(-neighbours, neighbours + 1, device=device)  # (W,)
        src = torch.arange(n_groups, device=device)[:, None] + shifts[None, :]  # (G, W)
        valid = (src >= 0) & (src < n_groups)
        src = src.clamp(0, max(n_groups - 1, 0))
        valid &= group_sample[src] == group_sample[:, None]

        is_video = tokens.modality[rows[:, 0], rows[:, 1]] == Modality.VIDEO  # (N,)
        layout = cls(rows=rows, is_video=is_video, group_sample=group_sample, window=src, window_valid=valid,
                     video=make_packing(group[is_video], n_groups), audio=make_packing(group[~is_video], n_groups),
                     group=group)
        if instruction:
            q_rows = question_mask(tokens, turn_end_token_id).nonzero()  # (Q, 2)
            layout.question_rows = q_rows
            layout.question = make_packing(q_rows[:, 0], B)
        return layout

    def window_keys(self, packing: Packing, packed: Tensor) -> tuple[Tensor, Tensor]:
        """Keys of every group's window: ``(G, W * M, d)`` and their ``(G, W * M)`` mask (``packed`` ``(G, M, d)`` may
        have any width ``d``, e.g. already projected ``[k | v]`` rows).

        Group ``g``'s keys are the packed rows of groups ``g - n .. g + n`` of the same sample, so a query only
        ever sees ``W * M`` keys: the cost is ``O(N * W * M * d)``, never ``O(N_v * N_a)`` over the clip.
        """
        G, W = self.window.shape
        keys = packed[self.window]  # (G, W, M, d)
        mask = packing.mask[self.window] & self.window_valid[..., None]  # (G, W, M)
        return keys.reshape(G, -1, packed.shape[-1]), mask.reshape(G, -1)
