"""AdamW over the trainable parameters (a client torch optimizer: no DeepSpeed JIT op) and the LR schedule."""

from __future__ import annotations

import math

import torch

from train.model import BLOCK_NAME


def parameter_groups(model, lr: float, block_lr: float | None, weight_decay: float) -> list[dict]:
    """AdamW groups: LoRA's parameters at ``lr``, the block's at ``block_lr`` (default ``lr``); frozen ones out."""
    block, lora = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (block if f".{BLOCK_NAME}." in f".{name}" else lora).append(parameter)
    groups = [{"params": lora, "lr": lr, "weight_decay": weight_decay, "name": "lora"},
              {"params": block, "lr": block_lr or lr, "weight_decay": weight_decay, "name": "block"}]
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
    groups = parameter_groups(model, o.lr, o.block_lr, o.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.train.steps, o.warmup_steps, o.schedule))
    return optimizer, scheduler
