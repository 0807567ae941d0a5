"""The training signal of the block's searched modality split (``fusion.split: searched``, ``fusion/block/split.py``).

For every sample and every candidate video share ``s`` the current model (LoRA and block as they are now) is run
once with that split -- hard selection, no gradient, the encoders run once for all ``S`` candidates -- and the
answer's cross-entropy ``l_s`` is recorded. The head regresses on them::

    L_split = mean_{b, s} (l^_bs - l_bs)^2                      l^ = the head's predicted losses in the forward

The search costs up to ``S`` extra language-model passes per step (no backward; fewer where shares keep the same
tokens, ``loss.split_scored`` of them per sample when set; LoRA folded into the base weights,
``train/merged_lora.py``). Which split the gradient step itself uses matters (both failures measured on ToyWorld
at 10 %):

* the head's own choice: LoRA adapts to whatever the head picks and the search keeps confirming it -- the split
  stayed proportional although twice the video tokens cut the shape-count loss from 1.6 to 0;
* each sample's best share (teacher forcing): the choice depends on the answer, and the training loss fell to
  0.01 by step 100 -- LoRA reads the answer from the split, which it cannot at test time;

so it explores: with probability ``loss.split_explore`` a uniformly random share (answer-free), else the head's.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor

from fusion.tokens import AVTokens
from train.loss import IGNORE_INDEX, pruned_labels

_TOKEN_INPUTS: frozenset[str] | None = None


def _token_inputs(thinker) -> frozenset[str]:
    """The media/text arguments ``build_tokens`` accepts (the collated batch may hold more)."""
    global _TOKEN_INPUTS
    if _TOKEN_INPUTS is None:
        _TOKEN_INPUTS = frozenset(inspect.signature(thinker.build_tokens).parameters) - {"requires"}
    return _TOKEN_INPUTS


def token_inputs(thinker, batch: dict) -> dict:
    """The entries of a collated ``batch`` that ``thinker.build_tokens`` takes."""
    return {k: v for k, v in batch.items() if k in _token_inputs(thinker)}


def active_block(blocks: list):
    """The copy of the block PEFT trains (its parameters require grad), else the first one."""
    for block in blocks:
        if any(p.requires_grad for p in block.parameters()):
            return block
    return blocks[0]


@torch.no_grad()
def candidate_losses(thinker, block, batch: dict, labels: Tensor, scored: Tensor | None = None,
                     tokens: AVTokens | None = None) -> tuple[Tensor, AVTokens]:
    """``(B, S)`` answer cross-entropy of every sample under every candidate share (the model as it is now), and
    the batch's unpruned tokens (the gradient step reuses them: ``thinker(**batch, av_tokens=tokens)``; building
    them again -- frozen encoders and the TMRoPE ids -- was ~1/6 of a toy step on 2 CPU cores).

    A sample is not run again under a share that keeps exactly what an earlier share keeps (the same clamped video
    count ``k_v``: at 25 % on ToyWorld the shares >= 5/8 all keep every video token); it gets that share's loss.
    ``scored``: ``(B, S)`` bool, the shares to score per sample (:func:`scored_shares`); the others are NaN (a share
    keeping what a scored one keeps is scored too, for free). None: all. ``tokens``: the batch's unpruned tokens
    when the caller has them (``train.token_cache``), else they are built here.
    """
    from fusion.model.keep import apply_keep
    from train.merged_lora import merged_lora

    if tokens is None:
        tokens = thinker.build_tokens(requires=block.requires, **token_inputs(thinker, batch))
    pad = thinker.config.get_text_config().pad_token_id or 0
    was_training = block.training
    block.eval()  # the hard selection, no straight-through gate
    try:
        selections = block.split_candidates(tokens)
    finally:
        block.train(was_training)
    k_video = block.split_counts(tokens)[0]  # (B, S)
    twins = k_video[:, :, None] == k_video[:, None, :]  # (B, S, S): shares s and s' keep the same tokens
    wanted = torch.ones_like(k_video, dtype=torch.bool) if scored is None else scored.to(k_video.device)
    wanted = (twins & wanted[:, None, :]).any(2)  # (B, S) a twin of a scored share is scored too
    fresh = wanted & ~twins.tril(-1).any(2)  # (B, S) run each kept set once: its first share
    losses = torch.zeros(k_video.shape, device=k_video.device)  # (B, S)
    with merged_lora(thinker.model.language_model):  # LoRA folded into W: one matmul per projection
        for s, selection in enumerate(selections):  # S (a few) candidate splits, each on the samples it is new for
            rows = fresh[:, s].nonzero().squeeze(1)  # (R,)
            if rows.numel() == 0:
                continue
            pruned = apply_keep(tokens, selection, padding_side="right", pad_token_id=pad)  # gathers: cheap
            width = int(pruned.attention_mask[rows].sum(1).max())  # L' of these rows (right padding)
            hidden = thinker.model.language_model(inputs_embeds=pruned.inputs_embeds[rows, :width],
                                                  attention_mask=pruned.attention_mask[rows, :width],
                                                  position_ids=pruned.position_ids[:, rows, :width],
                                                  return_dict=True).last_hidden_state  # (R, L', D)
            targets = pruned_labels(labels[rows], pruned.source_index[rows, :width])  # (R, L')
            predicts = targets[:, 1:] != IGNORE_INDEX  # (R, L' - 1): position t predicts answer token t + 1
            answer_logits = thinker.lm_head(hidden[:, :-1][predicts]).float()  # (n, V): where an answer is predicted
            token_loss = F.cross_entropy(answer_logits, targets[:, 1:][predicts], reduction="none")  # (n,)
            per_row = torch.zeros(len(rows), device=token_loss.device).index_add(0, predicts.nonzero()[:, 0],
                                                                                 token_loss)  # (R,)
            losses[rows, s] = per_row / predicts.sum(1).clamp(min=1)  # 0 for a row without an answer token
    first = twins.int().argmax(2)  # (B, S) the first share keeping the same tokens
    return losses.gather(1, first).masked_fill(~wanted, float("nan")), tokens  # (B, S)


def exploring_share(batch_size: int, n_shares: int, explore: float, generator: torch.Generator) -> Tensor:
    """``(B,)`` forced share of the gradient step: uniform over the ``S`` candidates with probability ``explore``,
    else -1 (the head's own choice). Drawn from the trainer's generator, never from the answer."""
    random = torch.randint(0, n_shares, (batch_size,), generator=generator)
    explore_mask = torch.rand(batch_size, generator=generator) < explore
    return torch.where(explore_mask, random, torch.full_like(random, -1))


def scored_shares(batch_size: int, n_shares: int, n_scored: int | None, generator: torch.Generator) -> Tensor | None:
    """``(B, S)`` bool: ``n_scored`` uniformly drawn shares per sample (answer-free); None when every share is."""
    if n_scored is None or n_scored >= n_shares:
        return None
    ranks = torch.rand(batch_size, n_shares, generator=generator).argsort(1).argsort(1)  # (B, S) a random permutation
    return ranks < n_scored


def split_loss(predicted: Tensor, losses: Tensor) -> Tensor:
    """``mean (l^_bs - l_bs)^2`` over the scored ``(b, s)`` (``l`` not NaN) for the head's predictions ``l^`` and the
    searched losses ``l``, both ``(B, S)``."""
    scored = ~losses.isnan()
    return F.mse_loss(predicted.float()[scored], losses.float()[scored])
