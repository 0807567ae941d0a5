"""Build :class:`~fusion.tokens.AVTokens` from the thinker's unpruned inputs (vectorised, no loop over tokens)."""

from __future__ import annotations

import torch
from torch import Tensor

from fusion.errors import InputMismatchError
from fusion.model.layout import SpecialIds
from fusion.tokens import AVTokens, Modality


def modality_codes(input_ids: Tensor, attention_mask: Tensor, ids: SpecialIds) -> Tensor:
    """``(B, L)`` int8 :class:`Modality` code of every position."""
    modality = torch.full_like(input_ids, int(Modality.TEXT), dtype=torch.int8)
    modality[input_ids == ids.video] = int(Modality.VIDEO)
    modality[input_ids == ids.audio] = int(Modality.AUDIO)
    modality[input_ids == ids.image] = int(Modality.IMAGE)
    modality[~attention_mask.bool()] = int(Modality.PAD)
    return modality


def block_time_ids(input_ids: Tensor, position_ids: Tensor, av: Tensor, ids: SpecialIds) -> tuple[Tensor, Tensor]:
    """Temporal id of each AV token relative to its block start, and the block's index in the sample.

    A block starts right after its opening marker(s): ``st = t(last bos before the token) + 1`` (the two
    bos markers of an interleaved block share one id). Returns ``(time_id, block)``, both ``(B, L)``, -1 off AV.
    """
    B, L = input_ids.shape
    is_bos = (input_ids == ids.vision_bos) | (input_ids == ids.audio_bos)  # (B, L)
    positions = torch.arange(L, device=input_ids.device).expand(B, L)
    last_bos = torch.where(is_bos, positions, torch.full_like(positions, -1)).cummax(dim=1).values  # (B, L)
    if bool((av & (last_bos < 0)).any()):
        raise InputMismatchError(
            "audio/video placeholder tokens appear before any <|vision_bos|>/<|audio_bos|> marker; build input_ids "
            "with the processor (or fusion.testing.random_inputs), which writes the markers around every media block"
        )
    t = position_ids[0]  # (B, L) temporal row
    start = t.gather(1, last_bos.clamp(min=0)) + 1  # (B, L)
    # Qwen3-Omni's ids are floats (grid g at g * second_per_grid * 13): floor them to whole ids
    time_id = torch.where(av, (t - start).floor().long(), torch.full(t.shape, -1, device=t.device))
    # a block opens at a bos that does not directly follow another bos (<|vision_bos|><|audio_bos|> is one block)
    opens = is_bos & ~torch.nn.functional.pad(is_bos[:, :-1], (1, 0), value=False)
    block = torch.where(av, opens.long().cumsum(1) - 1, torch.full_like(t, -1))
    return time_id, block


def dense_groups(time_id: Tensor, block: Tensor, av: Tensor, ids_per_chunk: int) -> Tensor:
    """``(B, L)`` 2-second group index, numbered 0.. per sample in (block, chunk) order; -1 off AV."""
    B = time_id.shape[0]
    local = torch.div(time_id.clamp(min=0), ids_per_chunk, rounding_mode="floor")
    span = int(local.max().item()) + 1 if bool(av.any()) else 1
    n_blocks = int(block.max().item()) + 1 if bool(av.any()) else 1
    sample = torch.arange(B, device=time_id.device)[:, None].expand_as(time_id)
    key = (sample * n_blocks + block.clamp(min=0)) * span + local  # unique per (sample, block, chunk)
    groups = torch.full_like(time_id, -1)
    if not bool(av.any()):
        return groups
    _, rank = torch.unique(key[av], return_inverse=True)  # dense over the whole batch, sorted by key
    first = torch.full((B,), torch.iinfo(torch.long).max, device=time_id.device)
    first = first.scatter_reduce(0, sample[av], rank, reduce="amin")
    groups[av] = rank - first[sample[av]]
    return groups


def video_places(
    input_ids: Tensor, video_grid_thw: Tensor | None, ids: SpecialIds, merge: int
) -> tuple[Tensor, Tensor]:
    """``(B, L, 3)`` (t, h, w) merged-grid place and ``(B, L)`` video index of every video token (-1 elsewhere).

    Video tokens are numbered in row-major (sample, position) order, the order in which the thinker scatters
    the concatenated video features, so video ``v`` owns the next ``t * (h/merge) * (w/merge)`` of them.
    """
    B, L = input_ids.shape
    places = torch.full((B, L, 3), -1, dtype=torch.long, device=input_ids.device)
    video_index = torch.full((B, L), -1, dtype=torch.long, device=input_ids.device)
    is_video = input_ids == ids.video
    if video_grid_thw is None or not bool(is_video.any()):
        return places, video_index
    per_video = []
    for v, (t, h, w) in enumerate(video_grid_thw.tolist()):  # one iteration per video, not per token
        hm, wm = h // merge, w // merge
        flat = torch.arange(t * hm * wm, device=input_ids.device)
        tt, rest = flat // (hm * wm), flat % (hm * wm)
        per_video.append(torch.stack([tt, rest // wm, rest % wm, torch.full_like(flat, v)], dim=1))
    table = torch.cat(per_video)  # (N_video_total, 4)
    if table.shape[0] != int(is_video.sum()):
        raise InputMismatchError(
            f"video_grid_thw describes {table.shape[0]} video tokens but input_ids holds {int(is_video.sum())} video "
            "placeholders; rebuild input_ids and video_grid_thw together with the processor"
        )
    places[is_video] = table[:, :3]
    video_index[is_video] = table[:, 3]
    return places, video_index


def annotate_tokens(
    embeds: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    position_ids: Tensor,
    video_grid_thw: Tensor | None,
    config,
) -> AVTokens:
    """Annotate the unpruned batch (modality now; time ids, 2-s groups and grid places on first access)."""
    ids = SpecialIds.from_config(config)
    tokens = AVTokens(
        embeds=embeds,
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        modality=modality_codes(input_ids, attention_mask, ids),
        special_ids=ids,
        video_grid_thw=video_grid_thw,
        spatial_merge_size=config.vision_config.spatial_merge_size,
        position_id_per_seconds=int(config.position_id_per_seconds),
        seconds_per_chunk=int(getattr(config, "seconds_per_chunk", 2)),  # Qwen3-Omni has no chunks: 2-s groups
    )
    if video_grid_thw is not None:  # cheap consistency check of grids vs placeholders, before any method runs
        merge = config.vision_config.spatial_merge_size
        expected = int((video_grid_thw.prod(-1) // merge**2).sum())
        found = int(tokens.video_mask.sum())
        if expected != found:
            raise InputMismatchError(
                f"video_grid_thw describes {expected} video tokens but input_ids holds {found} video placeholders; "
                "rebuild input_ids and video_grid_thw together with the processor"
            )
    return tokens
