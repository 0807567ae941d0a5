"""``xattn``: training-free cross-modal scoring (the seed's own baseline; the parameter-free counterpart of the learned
V<->A fusion block).

Inside every 2-second time group ``g`` (:attr:`AVTokens.time_group`), with the group's video embeddings ``V``
``(n_v, D)`` and audio embeddings ``A`` ``(n_a, D)`` as they reach the LLM (after the projectors), bidirectional
SDPA-style attention without any learned weight::

    P_XY = softmax_rows(scale * X Y^T)                   # queries X, keys Y; scale = 1/sqrt(D) by default
    recv_XY[j] = mean_{i attends j} m_i * P_XY[i, j]     # received, relative to uniform (m_i = keys of row i)
    cross_v = recv_AV,  cross_a = recv_VA                # what a video token receives from the audio, and vice versa
    self_v  = recv_VV,  self_a  = recv_AA                # same modality, a token never attends to itself
    score   = cross + self_weight * self                 # self_weight = 0 by default

``m_i P[i, j]`` is 1 under uniform attention, so scores of both modalities live on one scale (1 = average) and a
joint budget can compare them. ``normalize=True`` L2-normalises the embeddings first (logits ``scale * cos``; note
that the default ``1/sqrt(D)`` then makes the softmax nearly uniform: raise ``scale``, e.g. to 10, for peaked
attention); the default uses the raw embeddings, exactly SDPA's ``q k^T / sqrt(d)`` with ``q = k = x``.

**Groups with one modality** (a trailing video grid, an audio-only or video-only clip): the cross term is undefined,
so it is replaced by the own-modality term (``score = (1 + self_weight) * self``): the selection is then by
attention received from the own modality. A token alone in its pool scores 1. No error is raised: the method works
on video-only and audio-only inputs.

**Budget** per group: ``budget="modality"`` (default): the group's video keeps ``ceil(r n_v)`` and its audio
``ceil(r n_a)`` tokens; ``"joint"``: the group keeps ``ceil(r (n_v + n_a))`` tokens over both, split by score. Ties go
to the earlier token. A sample keeps ``sum_g ceil(r n_g)`` per pool (at most one extra token per group and pool).

**Memory**: every (sample, group) pair of the batch is padded to the largest group and processed at once, in chunks
of groups so that at most ``max_elements`` logits exist (``chunk * (n_v,max + n_a,max)^2``); nothing of size
``N_v x N_a`` over the clip is ever built.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from fusion.errors import MethodConfigError
from fusion.pruners.base import Compressor
from fusion.pruners.budget import Budget, keep_count
from fusion.pruners.group_ranking import rank_in_group
from fusion.pruners.registry import METHODS
from fusion.tokens import AVTokens, Selection

MAX_ELEMENTS = 1 << 24  # attention logits held at once (64 MiB in float32)


def received(q: Tensor, k: Tensor, q_valid: Tensor, k_valid: Tensor, scale: float, exclude_self: bool) -> Tensor:
    """``recv[c, j] = mean_{i: i attends j} m_i softmax_j(scale q_i . k_j)`` for padded groups; 1 where no query
    attends ``j``.

    Args:
        q: ``(C, n_q, D)`` queries; k: ``(C, n_k, D)`` keys (padded groups).
        q_valid: ``(C, n_q)``; k_valid: ``(C, n_k)`` real slots.
        scale: logit scale.
        exclude_self: ``q is k`` and a token must not attend to itself.

    Returns:
        ``(C, n_k)`` float32 (padding slots hold 1).
    """
    logits = scale * (q.float() @ k.float().transpose(1, 2))  # (C, n_q, n_k)
    allowed = q_valid[:, :, None] & k_valid[:, None, :]  # (C, n_q, n_k)
    if exclude_self:
        allowed &= ~torch.eye(q.shape[1], dtype=torch.bool, device=q.device)
    probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)  # NaN on rows with no key
    probs = torch.where(allowed, probs, torch.zeros((), device=q.device))
    relative = probs * allowed.sum(-1, keepdim=True)  # (C, n_q, n_k) m_i * P[i, j]
    queries = allowed.sum(1)  # (C, n_k) how many queries attend j
    return torch.where(queries > 0, relative.sum(1) / queries.clamp(min=1), torch.ones((), device=q.device))


def pack(values: Tensor, group: Tensor, slot: Tensor, n_groups: int, width: int) -> tuple[Tensor, Tensor]:
    """Scatter rows ``values`` ``(n, D)`` into a zero-padded ``(G, width, D)`` tensor and its ``(G, width)`` mask."""
    padded = values.new_zeros(n_groups, width, values.shape[-1])
    padded[group, slot] = values
    valid = torch.zeros(n_groups, width, dtype=torch.bool, device=values.device)
    valid[group, slot] = True
    return padded, valid


def group_scores(video: Tensor, audio: Tensor, video_valid: Tensor, audio_valid: Tensor, scale: float,
                 self_weight: float) -> tuple[Tensor, Tensor]:
    """Scores of padded groups (module doc): ``video`` ``(C, n_v, D)``, ``audio`` ``(C, n_a, D)`` ->
    ``(C, n_v)`` and ``(C, n_a)``. The own-modality terms (the largest products) are computed only when they are
    used: ``self_weight > 0`` or a group of the chunk lacks the other modality."""
    has_v, has_a = video_valid.any(1, keepdim=True), audio_valid.any(1, keepdim=True)  # (C, 1)
    scores = []
    for own, own_valid, other, other_valid, other_present in ((video, video_valid, audio, audio_valid, has_a),
                                                              (audio, audio_valid, video, video_valid, has_v)):
        cross = received(other, own, other_valid, own_valid, scale, exclude_self=False)  # (C, n_own)
        if self_weight > 0 or not bool(other_present.all()):
            own_term = received(own, own, own_valid, own_valid, scale, exclude_self=True)  # (C, n_own)
            cross = torch.where(other_present, cross, own_term) + self_weight * own_term
        scores.append(cross)
    return scores[0], scores[1]


def xattn_scores(tokens: AVTokens, self_weight: float = 0.0, normalize: bool = False, scale: float | None = None,
                 max_elements: int = MAX_ELEMENTS) -> tuple[Tensor, Tensor]:
    """Every AV token's score (module doc).

    Returns:
        ``(scores, group)``: ``(B, L)`` float32 score (NaN off AV tokens) and ``(B, L)`` long id of the token's
        (sample, time group), dense over the batch (-1 off AV tokens).
    """
    B, L, D = tokens.embeds.shape
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    av = tokens.av_mask & tokens.attention_mask.bool()  # (B, L)
    scores = torch.full((B, L), float("nan"), device=tokens.embeds.device)
    group_map = torch.full((B, L), -1, dtype=torch.long, device=tokens.embeds.device)
    if not bool(av.any()):
        return scores, group_map
    b, pos = av.nonzero(as_tuple=True)  # (n,)
    x = tokens.embeds[b, pos].float()  # (n, D)
    if normalize:
        x = F.normalize(x, dim=-1)
    time_group = tokens.time_group[b, pos]  # (n,)
    group = torch.unique(b * (int(time_group.max()) + 1) + time_group, return_inverse=True)[1]  # (n,) dense
    is_audio = tokens.audio_mask[b, pos].long()  # (n,)
    pool = 2 * group + is_audio  # (n,) one pool per (group, modality)
    G = int(group.max()) + 1
    sizes = torch.bincount(pool, minlength=2 * G)  # (2G,)
    order = torch.sort(pool, stable=True).indices  # (n,) sequence order kept inside a pool
    slot = torch.empty_like(pool)
    slot[order] = torch.arange(pool.shape[0], device=pool.device) - (sizes.cumsum(0) - sizes)[pool[order]]
    n_v, n_a = int(sizes[0::2].max()), int(sizes[1::2].max())
    is_v = is_audio == 0
    video, video_valid = pack(x[is_v], group[is_v], slot[is_v], G, max(n_v, 1))  # (G, n_v, D)
    audio, audio_valid = pack(x[~is_v], group[~is_v], slot[~is_v], G, max(n_a, 1))  # (G, n_a, D)
    score_v = torch.empty(G, video.shape[1], device=x.device)
    score_a = torch.empty(G, audio.shape[1], device=x.device)
    per_chunk = max(1, max_elements // (video.shape[1] + audio.shape[1]) ** 2)
    for start in range(0, G, per_chunk):  # chunks of groups bound the logits held at once
        part = slice(start, start + per_chunk)
        score_v[part], score_a[part] = group_scores(video[part], audio[part], video_valid[part], audio_valid[part],
                                                    scale, self_weight)
    token_scores = torch.empty(x.shape[0], device=x.device)  # (n,)
    token_scores[is_v] = score_v[group[is_v], slot[is_v]]
    token_scores[~is_v] = score_a[group[~is_v], slot[~is_v]]
    scores[b, pos] = token_scores
    group_map[b, pos] = group
    return scores, group_map


@METHODS.register("xattn")
class XAttn(Compressor):
    """Training-free cross-modal scoring: per 2-s group, keep the tokens that receive the most attention from the
    other modality (parameter-free softmax attention between the projected embeddings; module doc).

    Args:
        retention: fraction of every group's pool kept, in (0, 1].
        budget: ``"modality"`` (default: video and audio of a group keep ``ceil(r n)`` each) or ``"joint"``.
        self_weight: weight of the attention received from the own modality (default 0: cross-modal only).
        normalize: L2-normalise the embeddings before the dot products (default False: raw SDPA logits).
        scale: logit scale (default None = ``1/sqrt(D)``).
    """

    name = "xattn"

    def __init__(self, retention: float, budget: str = "modality", self_weight: float = 0.0, normalize: bool = False,
                 scale: float | None = None) -> None:
        if isinstance(self_weight, bool) or not isinstance(self_weight, (int, float)) \
                or not math.isfinite(self_weight) or self_weight < 0:
            raise MethodConfigError(f"xattn: self_weight={self_weight!r} must be a finite number >= 0")
        if not isinstance(normalize, bool):
            raise MethodConfigError(f"xattn: normalize={normalize!r} must be true or false")
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                                  or not math.isfinite(scale) or scale <= 0):
            raise MethodConfigError(f"xattn: scale={scale!r} must be a positive number or None (1/sqrt(D))")
        self.retention = retention
        self.budget = Budget.parse(budget, self.name)
        self.self_weight = float(self_weight)
        self.normalize = normalize
        self.scale = None if scale is None else float(scale)

    def select(self, tokens: AVTokens) -> Selection:
        if self.retention >= 1.0:
            return tokens.keep_all()
        scores, group = xattn_scores(tokens, self.self_weight, self.normalize, self.scale)  # (B, L) each
        keep = tokens.attention_mask.bool() & ~tokens.av_mask  # (B, L) text, specials, images
        b, pos = (group >= 0).nonzero(as_tuple=True)  # (n,)
        if b.numel() == 0:
            return Selection(keep=keep)
        pool = group[b, pos]  # (n,)
        if self.budget is Budget.MODALITY:
            pool = 2 * pool + tokens.audio_mask[b, pos].long()
        k = keep_count(torch.bincount(pool), self.retention)  # (n_pools,)
        chosen = rank_in_group(scores[b, pos], pool) < k[pool]  # (n,)
        keep[b[chosen], pos[chosen]] = True
        return Selection(keep=keep)
