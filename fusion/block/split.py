"""Searched modality split: the block learns how much of a sample's joint budget goes to video and how much to audio.

A global top-k over z-scored keep-scores splits the budget about in proportion to the token counts (on ToyWorld's
4-s clips 2 of the 12 tokens kept at 10 % are video, where counting shapes needs 4). The split is a discrete
choice per sample among ``S`` candidate video shares ``f_1 .. f_S`` of the budget. A head predicts, for each
candidate, the answer loss the model would have with it, and the block takes the cheapest::

    l^_s  = SplitHead(q, mean_v, mean_a, r)_s               (B, S) predicted answer loss; q = the question's mean
                                                             input embedding, mean_m = the mean fused embedding of
                                                             modality m, r = the retention
    c_s   = l^_s + (lambda + 1e-3) d_s,   d_s = |f_s - N_v / N|       (lambda = fusion.split_prior)
    f*    = f_{argmin c}
    k_v   = clamp(round(f* K), K - N_a, N_v),   k_a = K - k_v      (K = ceil(r (N_v + N_a)): k_v + k_a = K exactly)
    keep  = top-k_v of the video scores  U  top-k_a of the audio scores

At initialisation (last layer zero) ``l^ = 0``: the block picks the candidate nearest the proportional split, i.e.
it keeps what a joint top-k of random scores would. ``lambda`` makes a share far from proportional win only when
it is predicted to lower the answer loss by more than ``lambda d_s``.

Training signal (no gradient flows through a discrete split): the trainer scores every candidate with the current
model -- hard selection, no gradient, ``l_s`` = the answer's cross-entropy with split ``s`` -- and regresses the
head on them (``train/split_search.py``): ``L_split = mean_{b,s} (l^_bs - l_bs)^2``. A classifier trained toward
softmax(-l / T) was tried first: where several shares are equally good (any share >= 3/8 for counting shapes)
its probability spreads over them and its argmax fell back on the one share that is second-best everywhere
(measured on ToyWorld val: the proportional share for every category). Predicting the loss of each share and
taking the minimum does not have that failure.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fusion.pruners.budget import keep_count
from fusion.pruners.ranking import topk_mask

TIE_BREAK = 1e-3  # added to lambda: with lambda = 0, equal predictions still go to the proportional share


class SplitHead(nn.Module):
    """``l^ = W_2 GELU(W_1 [LN(q) ; LN(mean_v) ; LN(mean_a)] + w_r log r + b_1) + b_2`` in R^S (the predicted answer
    loss of each candidate share); ``W_2, b_2`` start at zero. Each input has its own LayerNorm: the question's mean
    token embedding is ~10x smaller than the media means, and one shared norm left the head nearly blind to it
    (it could not tell "how many beeps" from "how many shapes" on ToyWorld).

    Args:
        width: D, the backbone's hidden size.
        hidden: width of the hidden layer.
        n_shares: S, the number of candidate video shares.
    """

    def __init__(self, width: int, hidden: int, n_shares: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(3))  # question, video, audio
        self.inputs = nn.Linear(3 * width, hidden)
        self.retention = nn.Linear(1, hidden, bias=False)
        self.out = nn.Linear(hidden, n_shares)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, question: Tensor, video: Tensor, audio: Tensor, retention: float) -> Tensor:
        """``(B, D)`` each and the retention r -> ``(B, S)`` predicted answer losses."""
        x = self.inputs(torch.cat([norm(v) for norm, v in zip(self.norms, (question, video, audio))], dim=-1))
        log_r = torch.full((x.shape[0], 1), math.log(retention), dtype=x.dtype, device=x.device)
        return self.out(nn.functional.gelu(x + self.retention(log_r)))


def modality_means(embeds: Tensor, video_mask: Tensor, audio_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, D)`` mean embedding of each sample's video tokens and of its audio tokens (0 for an absent modality)."""
    means = []
    for mask in (video_mask, audio_mask):
        m = mask.to(embeds.dtype)  # (B, L)
        means.append(torch.einsum("bl,bld->bd", m, embeds) / m.sum(1, keepdim=True).clamp(min=1))
    return means[0], means[1]


def proportional_distance(shares: Tensor, n_video: Tensor, n_audio: Tensor) -> Tensor:
    """``(B, S)`` ``|f_s - N_v / (N_v + N_a)|``: how far each candidate share is from the proportional split."""
    proportion = n_video.double() / (n_video + n_audio).clamp(min=1).double()  # (B,)
    return (shares.double()[None, :] - proportion[:, None]).abs().float()


def split_cost(predicted: Tensor, distance: Tensor, prior: float) -> Tensor:
    """``(B, S)`` ``c = l^ + (lambda + 1e-3) d``: the block keeps the share of lowest cost."""
    return predicted + (prior + TIE_BREAK) * distance


def split_counts(shares: Tensor, n_video: Tensor, n_audio: Tensor, retention: float) -> tuple[Tensor, Tensor]:
    """Video and audio keep counts for every sample and every candidate share, each ``(B, S)`` long.

    ``K = ceil(r (N_v + N_a))``, ``k_v = clamp(round(f K), K - N_a, N_v)``, ``k_a = K - k_v``: the two always sum
    to ``K`` and never exceed a modality's tokens (a clip without audio gives its whole budget to video).
    """
    total = keep_count(n_video + n_audio, retention)  # (B,)
    wanted = torch.round(shares.double()[None, :] * total.double()[:, None]).long()  # (B, S)
    low = (total - n_audio).clamp(min=0)[:, None]  # (B, 1)
    k_video = torch.maximum(torch.minimum(wanted, n_video[:, None]), low)
    return k_video, total[:, None] - k_video


def split_keep(scores: Tensor, video_mask: Tensor, audio_mask: Tensor, k_video: Tensor, k_audio: Tensor) -> Tensor:
    """``(B, L)`` bool: the top-``k_video[b]`` video and top-``k_audio[b]`` audio tokens of every sample."""
    return topk_mask(scores, video_mask, k_video) | topk_mask(scores, audio_mask, k_audio)
