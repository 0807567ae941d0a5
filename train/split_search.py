"""The training signal of the block's searched modality split (``fusion.split: searched``, ``fusion/block/split.py``).

For every sample and every candidate video share ``s`` the current model (LoRA and block as they are now) is run
once with that split -- hard selection, no gradient, the encoders run once for all ``S`` candidates -- and the
answer's cross-entropy ``l_s`` is recorded. The head regresses on them::

    L_split = mean_{b, s} (l^_bs - l_bs)^2                      l^ = the head's predicted losses in the forward

The search costs ``S`` extra language-model passes per step (no backward). Which split the gradient step itself
uses matters (both failures measured on ToyWorld at 10 %):

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

from train.loss import per_sample_cross_entropy, pruned_labels

_TOKEN_INPUTS: frozenset[str] | None = None


def _token_inputs(thinker) -> frozenset[str]:
    """The media/text arguments ``build_tokens`` accepts (the collated batch may hold more)."""
    global _TOKEN_INPUTS
    if _TOKEN_INPUTS is None:
        _TOKEN_INPUTS = frozenset(inspect.signature(thinker.build_tokens).parameters) - {"requires"}
    return _TOKEN_INPUTS


def active_block(blocks: list):
    """The copy of the block PEFT trains (its parameters require grad), else the first one."""
    for block in blocks:
        if any(p.requires_grad for p in block.parameters()):
            return block
    return blocks[0]


@torch.no_grad()
def candidate_losses(thinker, block, batch: dict, labels: Tensor) -> Tensor:
    """``(B, S)`` answer cross-entropy of every sample under every candidate share (the model as it is now)."""
    from fusion.model.keep import apply_keep

    inputs = {k: v for k, v in batch.items() if k in _token_inputs(thinker)}
    tokens = thinker.build_tokens(requires=block.requires, **inputs)
    pad = thinker.config.get_text_config().pad_token_id or 0
    was_training = block.training
    block.eval()  # the hard selection, no straight-through gate
    try:
        selections = block.split_candidates(tokens)
    finally:
        block.train(was_training)
    losses = []
    for selection in selections:  # S (a few) candidate splits
        pruned = apply_keep(tokens, selection, padding_side="right", pad_token_id=pad)
        hidden = thinker.model.language_model(inputs_embeds=pruned.inputs_embeds, attention_mask=pruned.attention_mask,
                                              position_ids=pruned.position_ids, return_dict=True).last_hidden_state
        _, per_sample = per_sample_cross_entropy(thinker.lm_head(hidden), pruned_labels(labels, pruned.source_index))
        losses.append(per_sample)  # (B,)
    return torch.stack(losses, 1)  # (B, S)


def exploring_share(batch_size: int, n_shares: int, explore: float, generator: torch.Generator) -> Tensor:
    """``(B,)`` forced share of the gradient step: uniform over the ``S`` candidates with probability ``explore``,
    else -1 (the head's own choice). Drawn from the trainer's generator, never from the answer."""
    random = torch.randint(0, n_shares, (batch_size,), generator=generator)
    explore_mask = torch.rand(batch_size, generator=generator) < explore
    return torch.where(explore_mask, random, torch.full_like(random, -1))


def split_loss(predicted: Tensor, losses: Tensor) -> Tensor:
    """``mean_{b,s} (l^_bs - l_bs)^2`` for the head's predictions ``l^`` and the searched losses ``l``, ``(B, S)``."""
    return F.mse_loss(predicted.float(), losses.float())
