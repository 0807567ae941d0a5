"""Analytic FLOPs of one sample: the language model (DyCoke App. C / FastV form) and the learned block's own cost.

Units follow the papers: one multiply-accumulate counts 1 (``C(n)`` below counts the four ``d x d`` projections as
``4nd^2``). Encoder FLOPs are the same for every method and are not counted. Training-free selection costs (scores,
similarities) are small next to one decoder layer and are not counted either.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fusion.tokens import AVTokens


def layer_prefill(n: Tensor | float, d: int, m: int) -> Tensor:
    """One decoder layer's prefill over ``n`` tokens: ``C(n) = 4nd^2 + 2n^2d + 2ndm`` (float64, elementwise in n)."""
    n = torch.as_tensor(n, dtype=torch.float64)
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def layer_decode(n: Tensor | float, d: int, m: int, steps: int) -> Tensor:
    """One decoder layer decoding ``R = steps`` tokens after a prefix of ``n`` (KV cache):
    ``R(4d^2 + 2dm) + 2 sum_{i=1..R} d(n + i) = R(4d^2 + 2dm) + 2d(Rn + R(R+1)/2)``."""
    n = torch.as_tensor(n, dtype=torch.float64)
    R = steps
    return R * (4 * d * d + 2 * d * m) + 2 * d * (R * n + R * (R + 1) / 2)


def llm_flops(layer_tokens: Tensor, d: int, m: int, steps: int) -> tuple[Tensor, Tensor]:
    """``(prefill, decode)`` per sample, ``(B,)`` float64, from ``layer_tokens`` ``(B, T)`` = real tokens each decoder
    layer saw at prefill; ``m`` = FFN width (:func:`fusion.bench.flops.ffn_width`: a MoE decoder's active width).

    ``prefill = sum_l C(n_l)``; with the same ``n`` in every layer this is DyCoke's ``T C(n)``, with FastV's drop at
    layer ``K`` it is ``K C(n) + (T - K) C(n_hat)``. ``decode = sum_l R(4d^2 + 2dm) + 2d(R n_l + R(R+1)/2)``, i.e.
    ``T R((4d^2 + 2dm) + 2(dn + d(R+1)/2))`` for equal ``n_l`` (DyCoke's formula; R = 100 in the papers).
    """
    n = layer_tokens.to(torch.float64)  # (B, T)
    return layer_prefill(n, d, m).sum(1), layer_decode(n, d, m, steps).sum(1)


def group_counts(tokens: AVTokens, turn_end_token_id: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample and 2-s time group, the video and audio token counts, plus the question length.

    Returns ``(video (B, G), audio (B, G), question (B,))`` long, ``G`` = most groups in a sample (zeros beyond a
    sample's groups); ``question`` counts the text tokens between the last AV token and the end of the user turn (the
    keys instruction pre-fusion adds), see :func:`fusion.block.groups.question_mask`.
    """
    from fusion.block.groups import question_mask

    B = tokens.batch_size
    group = tokens.time_group  # (B, L), -1 off AV tokens
    G = int(group.max().clamp(min=0)) + 1
    flat = (torch.arange(B, device=group.device)[:, None] * G + group.clamp(min=0))  # (B, L)
    counts = []
    for mask in (tokens.video_mask, tokens.audio_mask):  # one modality per iteration
        c = torch.bincount(flat[mask & (group >= 0)], minlength=B * G)  # (B * G,)
        counts.append(c.view(B, G))
    question = question_mask(tokens, turn_end_token_id).sum(1)  # (B,)
    return counts[0], counts[1], question


def window_sums(counts: Tensor, neighbours: int) -> Tensor:
    """``(B, G)``: ``sum_{o=-n..n} counts[b, g + o]`` over groups inside the sample (zero-padded at the ends)."""
    padded = torch.nn.functional.pad(counts.to(torch.float64), (neighbours, neighbours))  # (B, G + 2n)
    return padded.unfold(1, 2 * neighbours + 1, 1).sum(-1)  # (B, G)


def block_flops(config, width: int, video: Tensor, audio: Tensor, question: Tensor) -> Tensor:
    """The learned block's multiply-accumulates per sample, ``(B,)`` float64.

    With ``D`` = backbone width, ``d = config.dim``, ``h = config.scorer_hidden``, ``n = config.neighbours``, per
    group ``g`` the counts ``v_g, a_g``, window sums ``V_g = sum_{|o|<=n} v_{g+o}``, ``A_g = sum_{|o|<=n} a_{g+o}``,
    ``N = sum_g (v_g + a_g)``, ``Q`` question tokens (0 without ``instruction``) and ``G`` groups with tokens:

    * projections (``fused``): ``N D d`` (down) ``+ N d D`` (up) ``+ Q D d`` (question, instruction only);
    * per layer: queries ``N d^2``, keys/values ``2d^2 sum_g (A_g + V_g + 2Q)`` (each group's window projected, as
      the block computes it, padding slots not counted), scores and weighted values
      ``2d sum_g (v_g (A_g + Q) + a_g (V_g + Q))``, output ``N d^2``, MLP ``8 N d^2`` (d -> 4d -> d);
    * scorer (``scorer='learned'``): ``N (D h + h)``.

    A training-free scorer inside the block (``config.scorer != 'learned'``) is not counted.

    Args:
        config: the block's :class:`~fusion.block.config.FusionConfig`.
        width: ``D``.
        video, audio: ``(B, G)`` token counts per group (:func:`group_counts`).
        question: ``(B,)`` question tokens.
    """
    D, d, h = width, config.dim, config.scorer_hidden
    v, a = video.to(torch.float64), audio.to(torch.float64)  # (B, G)
    N = (v + a).sum(1)  # (B,)
    Q = question.to(torch.float64) if config.instruction else torch.zeros_like(N)  # (B,)
    total = torch.zeros_like(N)
    if config.fused:
        total += N * D * d + N * d * D + Q * D * d
        V, A = window_sums(v, config.neighbours), window_sums(a, config.neighbours)  # (B, G)
        occupied = ((v + a) > 0).to(torch.float64)  # (B, G) groups the block builds
        kv = 2 * d * d * ((A + V) * occupied).sum(1) + 2 * d * d * 2 * Q * occupied.sum(1)
        attn = 2 * d * ((v * (A + Q[:, None])) + (a * (V + Q[:, None]))).sum(1)
        total += config.layers * (N * d * d + kv + attn + N * d * d + 8 * N * d * d)
    if config.scorer == "learned":
        total += N * (D * h + h)
    return total
