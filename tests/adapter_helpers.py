"""A real tiny adapter directory (LoRA + the block + fusion_config.json) for tests of what loading refuses."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, get_peft_model

from fusion import METHODS, load_model
from fusion.block import export_adapter
from train.config import LLM_LORA_REGEX


def tiny_adapter(directory: Path, r: int = 4) -> Path:
    """Export an (untrained) adapter of the tiny random thinker to ``directory``, as a training run writes one."""
    thinker, _ = load_model("tiny-random")
    block = METHODS.build("fusion", retention=0.3, dim=32, heads=4, scorer_hidden=16)
    thinker.set_compressor(block.bind(thinker.config))
    model = get_peft_model(thinker, LoraConfig(r=r, lora_alpha=2 * r, target_modules=LLM_LORA_REGEX,
                                               modules_to_save=["av_fusion"]))
    return export_adapter(model, directory)
