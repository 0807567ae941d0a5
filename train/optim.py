"""AdamW over the trainable parameters (a client torch optimizer: no DeepSpeed JIT op) and the LR schedule."""

from __future__ import annotations

import math

import torch

from train.model import BLOCK_NAME


def parameter_groups(model, lr: float, block_lr: float | None, weight_decay: float,
                     scorer_lr: float | None = None, split_lr: float | None = None) -> list[dict]:
    """AdamW groups: LoRA's parameters at ``lr``, the block's at ``block_lr`` (default ``lr``), its keep-scorer MLP
    at ``scorer_lr`` (default ``block_lr``; 0 freezes it at its initialisation), its split head at ``split_lr``
    (default ``block_lr``); frozen ones out."""
    block, lora, scorer, splitter = [], [], [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        dotted = f".{name}"
        if f".{BLOCK_NAME}." in dotted:  # PEFT names it av_fusion.modules_to_save.default.scorer...
            inside = "." + dotted.split(f".{BLOCK_NAME}.", 1)[1]  # the name within the block
            (scorer if ".scorer." in inside else splitter if ".splitter." in inside else block).append(parameter)
        else:
            lora.append(parameter)
    block_lr = block_lr or lr
    scorer_lr = block_lr if scorer_lr is None else scorer_lr
    if scorer_lr == 0:  # frozen: no gradient is even computed for it
        for parameter in scorer:
            parameter.requires_grad_(False)
        scorer = []
    groups = [{"params": lora, "lr": lr, "weight_decay": weight_decay, "name": "lora"},
              {"params": block, "lr": block_lr, "weight_decay": weight_decay, "name": "block"},
              {"params": scorer, "lr": scorer_lr, "weight_decay": weight_decay, "name": "scorer"},
              {"params": splitter, "lr": split_lr or block_lr, "weight_decay": weight_decay, "name": "splitter"}]
    return [g for g in groups if g["params"]]


def lr_factor(step: int, steps: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based)::

        warm-up:  (step + 1) / warmup                                   for step < warmup
        constant: 1
        cosine:   0.5 * (1 + cos(pi * (step - warmup) / (steps - warmup)))
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model, cfg) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """``(AdamW, LambdaLR)`` for a :class:`train.config.RunConfig` (DeepSpeed steps both and checkpoints both)."""
    o = cfg.optim
    groups = parameter_groups(model, o.lr, o.block_lr, o.weight_decay, o.scorer_lr, o.split_lr)
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.train.steps, o.warmup_steps, o.schedule))
    return optimizer, scheduler
