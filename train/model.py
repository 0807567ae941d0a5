"""The trainable model: frozen backbone + the fusion block (``av_fusion``, trained in full) + LoRA on the LLM."""

from __future__ import annotations

import re

import torch

from fusion.block.block import FusionBlock
from fusion.block.config import BaseIdentity
from fusion.errors import ConfigError
from fusion.model.loading import load_model

BLOCK_NAME = "av_fusion"
FROZEN_TOWERS = ("model.audio_tower.", "model.visual.")


def build_model(cfg, dtype: torch.dtype | None = None):
    """``(peft_model, processor)`` for a :class:`train.config.RunConfig` (``dtype``: e.g. bf16 for a bf16 run, so
    the frozen backbone is never materialised in fp32).

    The backbone (encoders, projectors, LLM, lm_head) is frozen; the block is installed as ``av_fusion`` and
    saved through PEFT ``modules_to_save``; LoRA goes on the modules matching ``cfg.lora.target_modules``.
    LoRA's A matrices are drawn from ``cfg.train.seed``.
    """
    from peft import LoraConfig, get_peft_model

    thinker, processor = load_model(cfg.model.name, seed=cfg.model.seed, dtype=dtype,
                                    attn_implementation=cfg.model.attn_implementation)
    thinker.requires_grad_(False)
    block = FusionBlock(cfg.fusion, BaseIdentity.from_config(thinker.config))
    thinker.set_compressor(block.to(dtype=next(thinker.parameters()).dtype))
    names = [name for name, _ in thinker.named_modules()]
    pattern = re.compile(cfg.lora.target_modules)
    targets = [n for n in names if pattern.fullmatch(n)]
    if not targets:
        raise ConfigError(f"lora.target_modules matches no module of {cfg.model.name!r}; it is full-matched "
                          "against names such as model.language_model.layers.0.self_attn.q_proj")
    reaching = [n for n in targets if n.startswith(FROZEN_TOWERS) or n.startswith(BLOCK_NAME)]
    if reaching:
        raise ConfigError(f"lora.target_modules must only match the LLM's projections; it matches {reaching[:3]} "
                          "(anchor it on model\\.language_model\\.layers)")
    # no task_type: the plain PeftModel passes every keyword (media tensors) through to the thinker unchanged
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, modules_to_save=[BLOCK_NAME])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = get_peft_model(thinker, lora)
    if not cfg.lora.enabled:  # LoRA B stays 0: the LLM is exactly the base model
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.requires_grad_(False)
    return model, processor


def trainable_summary(model) -> dict[str, int]:
    """Trainable parameter counts: ``{"lora": n, "block": n, "frozen": n}``."""
    out = {"lora": 0, "block": 0, "frozen": 0}
    for name, parameter in model.named_parameters():
        key = "frozen" if not parameter.requires_grad else "block" if f".{BLOCK_NAME}." in f".{name}" else "lora"
        out[key] += getattr(parameter, "ds_numel", parameter.numel())  # ZeRO-3 partitions hold 0 elements
    return out
