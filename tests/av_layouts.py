"""Hand-built AVTokens for golden tests: the exact placeholder layout, with chosen embeddings and audio scores."""

from __future__ import annotations

import torch

from fusion.model.annotate import annotate_tokens
from fusion.model.layout import SpecialIds, av_block_ids

TEXT_ID = 5  # any non-special id; text embeddings are zero


def build_tokens(config, samples: list[dict], dim: int = 64, padding_side: str = "right", key: str = "global"):
    """AVTokens for a batch of samples, each a dict with:

    ``grid_t`` and ``side`` (merged tokens per grid side; 0 grids = no video), ``video`` ``(grid_t*side*side, dim)``,
    ``audio`` ``(N_a, dim)`` and ``scores`` ``(N_a,)`` (empty = no audio; neither = a text-only sample); optional
    ``text`` (tokens each side).
    Video grids are 1 s apart (2 grids per 2-s window); the interleaved layout is Qwen2.5-Omni's.
    """
    ids = SpecialIds.from_config(config)
    rows, embeds, scores, grids = [], [], [], []
    for s in samples:  # one iteration per sample
        n_text = s.get("text", 2)
        n_audio = s["audio"].shape[0]
        block = av_block_ids(ids, s["grid_t"], s["side"] ** 2, 1.0, n_audio) if s["grid_t"] or n_audio else []
        seq = torch.tensor([TEXT_ID] * n_text + block + [TEXT_ID] * n_text)
        e = torch.zeros(len(seq), dim)
        e[seq == ids.video] = s["video"].float()
        e[seq == ids.audio] = s["audio"].float()
        sc = torch.full((len(seq),), float("nan"))
        sc[seq == ids.audio] = s["scores"].float()
        rows.append(seq), embeds.append(e), scores.append(sc)
        if s["grid_t"]:
            grids.append([s["grid_t"], 2 * s["side"], 2 * s["side"]])
    width = max(len(r) for r in rows)
    B = len(rows)
    input_ids = torch.zeros(B, width, dtype=torch.long)
    mask = torch.zeros(B, width, dtype=torch.long)
    emb = torch.zeros(B, width, dim)
    extra = torch.full((B, width), float("nan"))
    for b, (seq, e, sc) in enumerate(zip(rows, embeds, scores)):
        sl = slice(0, len(seq)) if padding_side == "right" else slice(width - len(seq), width)
        input_ids[b, sl], mask[b, sl], emb[b, sl], extra[b, sl] = seq, 1, e, sc
    positions = torch.arange(width).expand(3, B, width).clone()
    grid = torch.tensor(grids, dtype=torch.long) if grids else None
    tokens = annotate_tokens(emb, input_ids, mask, positions, grid, config)
    tokens.extras[f"audio_attention_{key}"] = extra
    return tokens


def ranks_kept(tokens, keep, b: int, modality: str) -> list[int]:
    """Indices (among sample ``b``'s video or audio tokens, in order) of the kept ones."""
    pool = tokens.video_mask[b] if modality == "video" else tokens.audio_mask[b]
    return keep[b][pool].nonzero().flatten().tolist()


def stack_tokens(config, samples: list, padding_side: str = "right"):
    """One padded batch from single-sample AVTokens (e.g. ``synthetic_tokens`` outputs, whose TMRoPE ids are the real
    ones), re-annotated like the thinker does; extras are stacked with NaN padding."""
    width = max(s.seq_len for s in samples)
    B, D = len(samples), samples[0].embeds.shape[-1]
    input_ids = torch.zeros(B, width, dtype=torch.long)
    mask = torch.zeros(B, width, dtype=torch.long)
    emb = torch.zeros(B, width, D, dtype=samples[0].embeds.dtype)
    positions = torch.ones(3, B, width, dtype=samples[0].position_ids.dtype)  # what get_rope_index writes on padding
    keys = sorted({k for s in samples for k in s.extras})
    extras = {k: torch.full((B, width), float("nan")) for k in keys}
    for b, s in enumerate(samples):
        n = s.seq_len
        sl = slice(0, n) if padding_side == "right" else slice(width - n, width)
        input_ids[b, sl], mask[b, sl], emb[b, sl] = s.input_ids[0], 1, s.embeds[0]
        positions[:, b, sl] = s.position_ids[:, 0]
        for k in keys:
            if k in s.extras:
                extras[k][b, sl] = s.extras[k][0]
    grids = [s.video_grid_thw for s in samples if s.video_grid_thw is not None]
    tokens = annotate_tokens(emb, input_ids, mask, positions, torch.cat(grids) if grids else None, config)
    tokens.extras.update(extras)
    return tokens
