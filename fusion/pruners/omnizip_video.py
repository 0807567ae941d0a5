"""OmniZip's video side: interleaved spatio-temporal compression (ISTC) of the frames of one window.

Follows ``omnizip_istm`` in KD-TAO/OmniZip (``omnizip/omnizip_core.py``, commit 66ef5d7, and the older
``omnizip_units.py``). Inside a window, frame ``t`` (``tpf`` consecutive video tokens) with ratio ``rho`` keeps
``n_k = int(tpf * (1 - rho))`` tokens (``n_k >= tpf`` keeps all):

* even ``t`` (spatial): the ``n_k`` best by density-peak clustering on the frame (:func:`dpc_knn_scores`; the units
  variant keeps the most isolated tokens instead, :func:`isolation_scores`);
* odd ``t`` (temporal): the ``n_k`` tokens least similar to the same place in frame ``t - 1`` (pruning, no averaging).

Frames are processed in batches (``(F, tpf, tpf)`` blocks of at most ``2**24`` entries): memory is per frame, never
quadratic in the clip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_MAX_ENTRIES = 1 << 24


def _cosine_distances(frames: Tensor) -> Tensor:
    """``(F, n, n)`` ``1 - cos`` between the tokens of each frame ``(F, n, D)``, float32."""
    unit = F.normalize(frames.float(), dim=-1)
    return 1.0 - unit @ unit.transpose(1, 2)


def dpc_knn_scores(frames: Tensor, k: int) -> Tensor:
    """Density-peak score ``delta * rho`` of every token of every frame (core variant, as coded).

    ::

        d_ij = 1 - cos(x_i, x_j), d_ii = +inf
        rho_i = exp(-mean of the k' smallest d_ij)          k' = min(k, n - 1)
        delta_i = min_{j: rho_j > rho_i} d_ij;  for the densest token(s): max_j d_ij (d_ii = 0)
        score_i = delta_i * rho_i

    (The paper's Eq. 7 uses Euclidean distance and ``exp(-mean d^2)``; the code, followed here, uses cosine.)

    Args:
        frames: ``(F, n, D)``.
        k: neighbours for the density (paper: 5).

    Returns:
        ``(F, n)`` float32.
    """
    n = frames.shape[1]
    dist = _cosine_distances(frames)  # (F, n, n)
    eye = torch.eye(n, dtype=torch.bool, device=frames.device)
    dist = dist.masked_fill(eye, float("inf"))
    kk = min(k, n - 1)
    if kk > 0:
        rho = torch.exp(-dist.topk(kk, dim=-1, largest=False).values.mean(-1))  # (F, n)
    else:  # a one-token frame: density is irrelevant (it keeps 0 or 1 token)
        rho = torch.ones(dist.shape[:2], device=frames.device)
    higher = rho[:, None, :] > rho[:, :, None]  # (F, n, n) [f, i, j]: rho_j > rho_i
    delta = dist.masked_fill(~higher, float("inf")).amin(-1)  # (F, n)
    farthest = dist.masked_fill(eye, 0.0).amax(-1)  # (F, n)
    delta = torch.where(torch.isinf(delta), farthest, delta)
    return delta * rho


def isolation_scores(frames: Tensor, k: int) -> Tensor:
    """Units variant's simplified "DPC-KNN": ``-mean of the k' largest cos(x_i, x_j), j != i`` (most isolated first).

    ``k' = min(k, n - 1)`` (the code would fail for ``n - 1 < k``). Returns ``(F, n)`` float32.
    """
    n = frames.shape[1]
    unit = F.normalize(frames.float(), dim=-1)
    sim = unit @ unit.transpose(1, 2)  # (F, n, n)
    sim = sim.masked_fill(torch.eye(n, dtype=torch.bool, device=frames.device), float("-inf"))
    kk = min(k, n - 1)
    if kk == 0:
        return torch.zeros(sim.shape[:2], device=frames.device)
    return -sim.topk(kk, dim=-1).values.mean(-1)


def temporal_scores(frames: Tensor, previous: Tensor) -> Tensor:
    """``-cos(x_p(t), x_p(t-1))`` per place ``p``: the tokens that changed most score highest. ``(F, n)``."""
    return -F.cosine_similarity(frames.float(), previous.float(), dim=-1)


def top_per_row(scores: Tensor, counts: Tensor) -> Tensor:
    """``(F, n)`` bool: the ``counts[f]`` highest scores of every row (ties -> earlier place)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (F, n)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(scores.shape[1], device=scores.device)
                                            .expand_as(order).contiguous())
    return rank < counts[:, None]


def istc_keep(
    video: Tensor, starts: Tensor, tpf: int, counts: Tensor, temporal: Tensor, k: int, variant: str
) -> Tensor:
    """Keep mask ``(N_v,)`` over one sample's video tokens from a table of frames.

    Args:
        video: ``(N_v, D)`` the sample's video embeddings.
        starts: ``(F,)`` first token (rank among the sample's video tokens) of each frame to compress.
        tpf: tokens per frame.
        counts: ``(F,)`` tokens to keep per frame (``int(tpf * (1 - rho))`` of its window, capped at ``tpf``).
        temporal: ``(F,)`` bool, odd frame of its window (compared with the frame just before it).
        k: DPC-KNN neighbours.
        variant: ``"core"`` (density peaks) or ``"units"`` (most isolated) for the spatial frames.

    Tokens of the sample that belong to no frame in the table are not kept (callers add whole-kept runs).
    """
    keep = torch.zeros(video.shape[0], dtype=torch.bool, device=video.device)
    if starts.numel() == 0:
        return keep
    places = starts[:, None] + torch.arange(tpf, device=video.device)  # (F, tpf)
    scores = torch.empty(starts.shape[0], tpf, device=video.device)  # (F, tpf)
    spatial_score = dpc_knn_scores if variant == "core" else isolation_scores
    spatial = (~temporal).nonzero().flatten()
    chunk = max(1, _MAX_ENTRIES // (tpf * tpf))
    for i in range(0, spatial.numel(), chunk):  # batches of frames
        rows = spatial[i:i + chunk]
        scores[rows] = spatial_score(video[places[rows]], k)  # (f, tpf)
    rows = temporal.nonzero().flatten()
    if rows.numel():
        scores[rows] = temporal_scores(video[places[rows]], video[places[rows] - tpf])
    chosen = top_per_row(scores, counts.clamp(max=tpf))  # (F, tpf)
    keep[places[chosen]] = True
    return keep
