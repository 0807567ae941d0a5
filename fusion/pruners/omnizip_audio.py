"""OmniZip's audio side: keep the most-attended audio tokens, add contextual anchors, merge dropped tokens into them.

Follows ``omnizip_audio_attn`` and the merge loop of ``omnizip`` in KD-TAO/OmniZip (``omnizip/omnizip_core.py``,
commit 66ef5d7; the older ``omnizip_units.py`` differs only in when anchors are made, see :func:`select_audio`).
Everything here is one sample; cosine products are computed in chunks so no ``N x M`` matrix over a whole clip is held.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fusion.pruners.group_ranking import rank_in_group

_MAX_ENTRIES = 1 << 24  # largest similarity block held at once (64 MiB of float32)
_EPS = 1e-6  # OmniZip's normalisation epsilon: x / (|x| + 1e-6)


@dataclass
class AudioChoice:
    """The audio decision of one sample (indices are ranks among the sample's audio tokens).

    Attributes:
        keep: ``(N_a,)`` bool, dominant tokens and anchors.
        anchors: ``(C,)`` long, ascending.
        pool: ``(P,)`` long, the dropped tokens that are neither dominant nor anchors (merge candidates).
    """

    keep: Tensor
    anchors: Tensor
    pool: Tensor


def select_audio(scores: Tensor, rho_audio: float, contextual_ratio: float, make_anchors: bool) -> AudioChoice:
    """Dominant tokens plus evenly spaced contextual anchors.

    ::

        n_dom = round((1 - rho_a) * N)           # Python round (half to even), as the code
        keep = top-n_dom of scores                # ties -> earlier token (torch.topk's order is unspecified)
        R = dropped tokens, ascending; n_c = min(round(c * N), |R|); step = max(1, |R| // n_c)
        anchors = R[0::step][:n_c]                # only if make_anchors (core: G > 0; units: always) and n_c > 0
        pool = R minus anchors

    Args:
        scores: ``(N_a,)`` attention received per audio token.
        rho_audio: audio pruning ratio rho_a in [0, 1].
        contextual_ratio: c in [0, 1].
        make_anchors: whether anchors are made at all.
    """
    n = scores.shape[0]
    device = scores.device
    keep = torch.zeros(n, dtype=torch.bool, device=device)
    n_dom = int(max(0, min(n, round((1.0 - rho_audio) * n))))
    keep[torch.sort(scores, descending=True, stable=True).indices[:n_dom]] = True
    remaining = (~keep).nonzero().flatten()  # (|R|,) ascending
    n_ctx = int(max(0, round(contextual_ratio * n)))
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if remaining.numel() == 0 or n_ctx == 0 or not make_anchors:
        return AudioChoice(keep, empty, remaining)
    n_ctx = min(n_ctx, remaining.numel())
    step = max(1, remaining.numel() // n_ctx)
    slots = torch.arange(0, remaining.numel(), step, device=device)[:n_ctx]  # (C,)
    anchors = remaining[slots]
    keep[anchors] = True
    in_pool = torch.ones(remaining.numel(), dtype=torch.bool, device=device)
    in_pool[slots] = False
    return AudioChoice(keep, anchors, remaining[in_pool])


def unit(x: Tensor) -> Tensor:
    """``x / (|x| + 1e-6)`` row-wise, in float32 (OmniZip's normalisation)."""
    x = x.float()
    return x / (x.norm(dim=-1, keepdim=True) + _EPS)


def max_cosine(rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
    """``max_j rows_i . cols_j`` and its first arg-max, for unit rows ``(P, D)`` and columns ``(M, D)``.

    Computed in blocks of at most ``2**24`` products (row chunks x column chunks with a running maximum), so memory
    stays bounded however long the clip is. Returns ``(values (P,), index (P,))``.
    """
    p, m = rows.shape[0], cols.shape[0]
    best = torch.full((p,), float("-inf"), device=rows.device)
    arg = torch.zeros(p, dtype=torch.long, device=rows.device)
    col_chunk = max(1, min(m, _MAX_ENTRIES // max(1, min(p, 4096))))
    row_chunk = max(1, _MAX_ENTRIES // col_chunk)
    for r0 in range(0, p, row_chunk):  # blocks of rows
        for c0 in range(0, m, col_chunk):  # blocks of columns
            sim = rows[r0:r0 + row_chunk] @ cols[c0:c0 + col_chunk].T  # (p_chunk, m_chunk)
            value, index = sim.max(dim=1)  # first maximum inside the block
            better = value > best[r0:r0 + row_chunk]  # strict: an earlier block keeps ties (first arg-max)
            best[r0:r0 + row_chunk] = torch.where(better, value, best[r0:r0 + row_chunk])
            arg[r0:r0 + row_chunk] = torch.where(better, index + c0, arg[r0:r0 + row_chunk])
    return best, arg


def consolidate_anchors(audio: Tensor, video: Tensor | None, choice: AudioChoice, g: int) -> Tensor | None:
    """New anchor embeddings ``(C, D)`` after merging up to ``G`` pool tokens into each anchor, or None.

    ::

        Ah = A / (|A| + 1e-6);  Vh = V / (|V| + 1e-6)
        assign_j = argmax_c Ah_j . Ah_c                   # nearest anchor (audio-audio cosine), pool token j
        s_j = max_v Ah_j . Vh_v  over ALL video tokens of the sample (no video: s_j = max_c Ah_j . Ah_c)
        J_c = top-min(G, |{j: assign_j = c}|) of those j by s_j      (ties -> earlier token)
        w = softmax(s_{J_c});  A'_c = (A_c + sum_j w_j A_j) / (1 + sum_j w_j)     # = (A_c + sum w_j A_j) / 2
        # merged pool tokens stay dropped; anchors with no candidate keep A_c

    ``s_j`` is over all video tokens as in the code (the paper says "the paired video segment"); it is computed in
    chunks (:func:`max_cosine`). Arithmetic is float32; the result is cast back to ``audio``'s dtype.

    Args:
        audio: ``(N_a, D)`` the sample's audio embeddings (before any merge).
        video: ``(N_v, D)`` the sample's video embeddings, or None / empty.
        choice: from :func:`select_audio`.
        g: ``G``, the most tokens merged into one anchor (0 = no consolidation).
    """
    if g <= 0 or choice.anchors.numel() == 0 or choice.pool.numel() == 0:
        return None
    a_unit = unit(audio)  # (N_a, D)
    pool = a_unit[choice.pool]  # (P, D)
    sim_anchor, assign = max_cosine(pool, a_unit[choice.anchors])  # (P,), (P,)
    if video is not None and video.numel() > 0:
        score, _ = max_cosine(pool, unit(video))  # (P,) cross-modal score over all video tokens
    else:
        score = sim_anchor
    chosen = rank_in_group(score, assign) < g  # (P,) top-G per anchor
    c, s = assign[chosen], score[chosen]  # (J,)
    n_anchors = choice.anchors.numel()
    peak = torch.full((n_anchors,), float("-inf"), device=audio.device).scatter_reduce(0, c, s, reduce="amax")
    e = torch.exp(s - peak[c])  # (J,) stable softmax numerators
    w = e / torch.zeros(n_anchors, device=audio.device).index_add(0, c, e)[c]  # (J,) softmax within each anchor
    merged = torch.zeros(n_anchors, audio.shape[1], device=audio.device)
    merged.index_add_(0, c, w[:, None] * audio[choice.pool[chosen]].float())  # (C, D) sum_j w_j A_j
    weight = torch.zeros(n_anchors, device=audio.device).index_add(0, c, w)  # (C,) sum_j w_j (1 or 0)
    new = (audio[choice.anchors].float() + merged) / (1.0 + weight[:, None])  # (C, D)
    return new.to(audio.dtype)
