"""Searched modality split: the block learns how much of a sample's joint budget goes to video and how much to audio.

A global top-k over z-scored keep-scores splits the budget about in proportion to the token counts (on ToyWorld's
4-s clips 2 of the 12 tokens kept at 10 % are video, where counting shapes needs 4). The split is a discrete
choice per sample, so here it is a classifier over ``S`` candidate video shares ``f_1 .. f_S`` of the budget::

    a     = SplitHead([q ; mean_v ; mean_a]) + prior        (B, S) logits; q = the question's mean input embedding,
                                                             mean_m = the mean fused embedding of modality m
    f*    = f_{argmax a}
    k_v   = clamp(round(f* K), K - N_a, N_v),   k_a = K - k_v      (K = ceil(r (N_v + N_a)): k_v + k_a = K exactly)
    keep  = top-k_v of the video scores  U  top-k_a of the audio scores

``prior_s = -1e-3 |f_s - N_v / N|``: at initialisation (last layer zero) the head picks the candidate nearest the
proportional split, i.e. the untrained block keeps what a joint top-k of random scores would.

Training signal (no gradient flows through a discrete split): the trainer scores every candidate with the current
model -- hard selection, no gradient, ``l_s`` = the answer's cross-entropy with split ``s`` -- and trains the head
toward the best ones (``train/split_search.py``)::

    L_split = KL( softmax(-(l + lambda d) / T) || softmax(a) )     d_s = |f_s - N_v / N|

``lambda`` (``loss.split_prior``) makes a share far from proportional win only when it lowers the answer loss
by more than ``lambda d_s``: where every split is equally bad (a question the model cannot answer yet), the
target stays at the proportional split instead of a random extreme that would starve one modality.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusion.pruners.budget import keep_count
from fusion.pruners.ranking import topk_mask

PRIOR_SCALE = 1e-3  # small enough that any learned logit difference wins


class SplitHead(nn.Module):
    """``a = W_2 GELU(W_1 LN([q ; mean_v ; mean_a]) + b_1) + b_2`` in R^S; ``W_2, b_2`` start at zero.

    Args:
        width: D, the backbone's hidden size.
        hidden: width of the hidden layer.
        n_shares: S, the number of candidate video shares.
    """

    def __init__(self, width: int, hidden: int, n_shares: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(3 * width)
        self.mlp = nn.Sequential(nn.Linear(3 * width, hidden), nn.GELU(), nn.Linear(hidden, n_shares))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, question: Tensor, video: Tensor, audio: Tensor) -> Tensor:
        """``(B, D)`` each -> ``(B, S)`` logits (without the prior)."""
        return self.mlp(self.norm(torch.cat([question, video, audio], dim=-1)))


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


def proportional_prior(shares: Tensor, n_video: Tensor, n_audio: Tensor) -> Tensor:
    """``(B, S)`` ``-1e-3 |f_s - N_v / (N_v + N_a)|``: ties at init go to the proportional split."""
    return -PRIOR_SCALE * proportional_distance(shares, n_video, n_audio)


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
