"""``vidcom2``: VidCom², frame-uniqueness-driven video token compression (Liu et al., EMNLP 2025, arXiv 2505.14454).

Pre-LLM and feature-only (no attention), per video, one frame = one temporal grid of ``M = (h/2)(w/2)`` merged
tokens (2 video frames at Qwen2.5-Omni's fps 2). Only video tokens are compressed: audio, text and image tokens are
all kept, as on the official ``omni`` branch (``token_compressor/vidcom2/models/qwen2_5_omni.py``), which compresses
``video_embeds`` and leaves the audio untouched. So at retention ``R`` the audio-visual total keeps more than
``R`` of its tokens; ``model.last_stats`` reports the measured video/audio/total retention.

Two scorings (``scoring=``):

``"code"`` (default) — what the official code computes (``token_compressor/vidcom2/vidcom2.py``, main branch; the
vLLM port author says it produced the published numbers). With the video's tokens ``X`` ``(T*M, D)``:

1. channels: keep the ``int(D/2)`` channels with the LOWEST population variance over all ``T*M`` tokens;
2. ``F = X[:, channels] / ||X[:, channels]||`` per token, viewed ``(T, M, D/2)``;
3. ``K(x, c) = sum_{a in {1/8, 1/4, 1/2, 1, 2}} exp(-||x - c||^2 / (2a))`` (multi-scale Gaussian similarity);
4. ``vid[t, m] = K(F[t, m], mean_{t,m} F)``; ``frm[t, m] = K(F[t, m], mean_m F[t])``;
5. frame uniqueness ``s_t = -mean_m vid[t, m]``; ``p = softmax((s - max s) / 0.01)``;
6. ``r_t = min(R (1 + p_t - mean p), 1)``, ``k_t = max(1, round(r_t M))`` (round half to even, as torch);
7. keep, per frame, the ``k_t`` tokens with the SMALLEST ``vid + frm`` (least similar = most unique), in order.

``"paper"`` — the paper's §3.3–3.4 cosine formulation on all channels: ``u_vid = -cos(x, g_v)`` with
``g_v = mean_{t,m} x``, ``u_frm = -cos(x, g_{f,t})`` with ``g_{f,t} = mean_m x_t``, ``u_t = mean_m u_vid``,
``sigma_t = exp(u~_t) / (sum_l exp(u~_l) + 1e-8)`` with ``u~ = (u - max u)/tau``, ``r_t = R(1 + sigma_t - 1/T)``
(clamped at 1 here too, since a frame cannot keep more than all its tokens), same ``k_t`` rounding, keep the
``k_t`` tokens with the LARGEST ``u_vid + u_frm``.

The clamp and the rounding make the total only approximately ``R·T·M`` (the temperature 0.01 makes the allocation
peaked: the most unique frame can get up to about ``2R``). Scores are computed in float32 whatever the embeddings'
dtype. ``retention = 1`` keeps everything (the project's identity contract; the official code at ``R = 1`` would
still drop tokens of frames whose ``p_t < mean p``). A sample without video tokens raises
:class:`~fusion.errors.MissingModalityError`: VidCom² has nothing to compress there, and silently keeping every
token would report a retention the user did not ask for (pair it with an audio method instead).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from fusion.errors import InputMismatchError, MethodConfigError
from fusion.pruners.base import Compressor, require_modality
from fusion.pruners.registry import METHODS
from fusion.tokens import AVTokens, Selection

ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)  # 2**k for k = -3..1, the official code's kernel bandwidths
SCORINGS = ("code", "paper")


def low_variance_channels(x: Tensor, ratio: float = 0.5) -> Tensor:
    """Indices of the ``max(1, int(ratio * D))`` channels of ``x`` ``(N, D)`` with the lowest population variance
    ``var_d = mean_n (x[n, d] - mean_n x[n, d])^2`` (ties: whatever ``torch.topk`` returns)."""
    variances = x.var(dim=0, unbiased=False)  # (D,)
    k = max(1, int(x.shape[-1] * ratio))
    return torch.topk(variances, k=k, largest=False).indices


def multiscale_gaussian(x: Tensor, center: Tensor, alphas: tuple[float, ...] = ALPHAS) -> Tensor:
    """``K(x, c) = sum_a exp(-||x - c||^2 / (2a))`` over the last dimension (``x`` and ``center`` broadcast)."""
    dist_sq = ((x - center) ** 2).sum(dim=-1)  # (...,)
    scales = torch.tensor(alphas, dtype=dist_sq.dtype, device=dist_sq.device)  # (S,)
    return torch.exp(-dist_sq[..., None] / (2 * scales)).sum(dim=-1)


def code_scores(frames: Tensor, channel_ratio: float = 0.5) -> tuple[Tensor, Tensor]:
    """The official code's scores for one video ``frames`` ``(T, M, D)`` (steps 1–5 of the module doc).

    Returns ``(redundancy, frame_uniqueness)``: ``(T, M)`` ``vid + frm`` (lower = keep first) and ``(T,)``
    ``s_t = -mean_m vid[t, m]``.
    """
    T, M, D = frames.shape
    channels = low_variance_channels(frames.reshape(T * M, D), channel_ratio)  # (D',)
    f = F.normalize(frames[..., channels], dim=-1)  # (T, M, D')
    vid = multiscale_gaussian(f, f.mean(dim=(0, 1), keepdim=True))  # (T, M)
    frm = multiscale_gaussian(f, f.mean(dim=1, keepdim=True))  # (T, M)
    return vid + frm, -vid.mean(dim=1)


def paper_scores(frames: Tensor) -> tuple[Tensor, Tensor]:
    """The paper's cosine scores for one video ``frames`` ``(T, M, D)``.

    Returns ``(redundancy, frame_uniqueness)``: ``(T, M)`` ``-(u_vid + u_frm) = cos(x, g_v) + cos(x, g_f,t)``
    (lower = keep first) and ``(T,)`` ``u_t = mean_m u_vid[t, m]``.
    """
    g_v = frames.mean(dim=(0, 1), keepdim=True)  # (1, 1, D)
    g_f = frames.mean(dim=1, keepdim=True)  # (T, 1, D)
    u_vid = -F.cosine_similarity(frames, g_v, dim=-1)  # (T, M)
    u_frm = -F.cosine_similarity(frames, g_f, dim=-1)  # (T, M)
    return -(u_vid + u_frm), u_vid.mean(dim=1)


def frame_budgets(uniqueness: Tensor, retention: float, tokens_per_frame: int, temperature: float = 0.01,
                  scoring: str = "code") -> tuple[Tensor, Tensor]:
    """Per-frame retention ``r_t`` and kept count ``k_t`` from the frame uniqueness ``(T,)``.

    ``code``: ``p = softmax((s - max s)/tau)``, ``r_t = min(R (1 + p_t - mean p), 1)``.
    ``paper``: ``p_t = exp(s~_t) / (sum exp(s~) + 1e-8)``, ``r_t = min(R (1 + p_t - 1/T), 1)``.
    Both: ``k_t = max(1, round(r_t M))``. Returns ``(r, k)``, ``(T,)`` float and ``(T,)`` long.
    """
    shifted = (uniqueness - uniqueness.max()) / temperature  # (T,)
    if scoring == "paper":
        e = torch.exp(shifted)
        p = e / (e.sum() + 1e-8)
        mean = 1.0 / uniqueness.shape[0]
    else:
        p = torch.softmax(shifted, dim=0)
        mean = p.mean()
    r = (retention * (1 + p - mean)).clamp(max=1.0)  # (T,)
    k = torch.round(r * tokens_per_frame).long().clamp(min=1, max=tokens_per_frame)  # (T,)
    return r, k


def keep_lowest_per_frame(redundancy: Tensor, k: Tensor) -> Tensor:
    """``(T, M)`` bool: in every frame ``t`` the ``k[t]`` tokens with the lowest redundancy (ties: earlier first)."""
    order = torch.sort(redundancy, dim=1, stable=True).indices  # (T, M) ascending
    slots = torch.arange(redundancy.shape[1], device=redundancy.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, slots)  # rank[t, order[t, i]] = i
    return rank < k[:, None]


def vidcom2_keep(frames: Tensor, retention: float, scoring: str = "code", temperature: float = 0.01,
                 channel_ratio: float = 0.5) -> Tensor:
    """``(T, M)`` bool keep mask of one video ``frames`` ``(T, M, D)`` (the whole method, module doc)."""
    frames = frames.float()
    if scoring == "paper":
        redundancy, uniqueness = paper_scores(frames)
    else:
        redundancy, uniqueness = code_scores(frames, channel_ratio)
    _, k = frame_budgets(uniqueness, retention, frames.shape[1], temperature, scoring)
    return keep_lowest_per_frame(redundancy, k)


@METHODS.register("vidcom2")
class VidCom2(Compressor):
    """VidCom² (EMNLP 2025): per-frame budgets from frame uniqueness, then the most unique tokens of each frame.

    Video tokens only; audio is kept untouched (module doc). Defaults from the official code: ``R = 0.25`` in its
    scripts (here: the registry's ``retention``), temperature 0.01, half of the channels (lowest variance).

    Args:
        retention: ``R``, the mean fraction of each video's tokens kept, in (0, 1].
        scoring: ``"code"`` (default, official code: Gaussian kernels on low-variance channels) or ``"paper"``
            (cosine similarities on all channels).
        temperature: softmax temperature of the frame allocation (0.01).
        channel_ratio: fraction of channels kept for ``scoring="code"`` (0.5).
    """

    name = "vidcom2"

    def __init__(self, retention: float, scoring: str = "code", temperature: float = 0.01,
                 channel_ratio: float = 0.5) -> None:
        if scoring not in SCORINGS:
            raise MethodConfigError(f"vidcom2: scoring={scoring!r} is not one of {SCORINGS}; use 'code' (the official "
                                    "code's Gaussian kernels, default) or 'paper' (the paper's cosine formulas)")
        for label, value in (("temperature", temperature), ("channel_ratio", channel_ratio)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise MethodConfigError(f"vidcom2: {label}={value!r} must be a positive number")
        if channel_ratio > 1:
            raise MethodConfigError(f"vidcom2: channel_ratio={channel_ratio} must be in (0, 1] (fraction of channels)")
        self.retention = retention
        self.scoring = scoring
        self.temperature = float(temperature)
        self.channel_ratio = float(channel_ratio)

    def select(self, tokens: AVTokens) -> Selection:
        if self.retention >= 1.0:
            return tokens.keep_all()
        require_modality(tokens, self.name, video=True)
        if tokens.video_grid_thw is None:
            raise InputMismatchError("vidcom2 needs video_grid_thw to split each video into frames; pass the "
                                     "processor's full output (video_grid_thw comes with pixel_values_videos)")
        keep = tokens.attention_mask.bool() & ~tokens.video_mask  # text, specials, images and audio stay
        merge = tokens.spatial_merge_size
        video_index = tokens.video_index  # (B, L)
        for v, (t, h, w) in enumerate(tokens.video_grid_thw.tolist()):  # one iteration per video
            where = video_index == v  # (B, L), one sample's tokens in (t, h, w) raster order
            M = (h // merge) * (w // merge)
            n = int(where.sum())
            if n != t * M:
                raise InputMismatchError(f"vidcom2: video {v} has {n} tokens but its grid {[t, h, w]} needs {t * M}; "
                                         "rebuild input_ids and video_grid_thw together with the processor")
            frames = tokens.embeds[where].reshape(t, M, -1)  # (T, M, D)
            keep[where] = vidcom2_keep(frames, self.retention, self.scoring, self.temperature,
                                       self.channel_ratio).flatten()
        return Selection(keep=keep)
