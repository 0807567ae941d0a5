"""A trained run's adapter directory: LoRA + the block (PEFT ``modules_to_save=["av_fusion"]``) + fusion_config.json.

Two ways to load it, with identical outputs::

    model, processor = fusion.load_model(base, method="fusion", adapter="runs/x/adapter")

    thinker = ...                                   # the same backbone (a CompressedThinker)
    attach_block(thinker, "runs/x/adapter")         # builds av_fusion from fusion_config.json, checks the backbone
    model = PeftModel.from_pretrained(thinker, "runs/x/adapter")
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fusion.block.config import check_base, load_fusion_config, save_fusion_config
from fusion.errors import AdapterMismatchError
from fusion.pruners.budget import check_retention

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def attach_block(thinker, adapter_dir: str | Path, retention: float | None = None):
    """Build the block described by ``adapter_dir/fusion_config.json`` and install it as ``thinker.av_fusion``.

    Raises :class:`AdapterMismatchError` when the adapter was trained on a backbone of another size. The
    block's weights are placeholders until ``PeftModel.from_pretrained`` loads the trained ones.
    ``retention`` (optional) evaluates the block at another retention than it was trained at.
    """
    from fusion.block.block import FusionBlock

    adapter_dir = Path(adapter_dir)
    if retention is not None:
        check_retention(retention)
    config, base = load_fusion_config(adapter_dir)
    check_base(base, thinker.config, where=f"the adapter {adapter_dir}")
    block = FusionBlock(config, base)
    if retention is not None:
        block.set_retention(retention)
    parameter = next(thinker.parameters())
    thinker.set_compressor(block.to(device=parameter.device, dtype=parameter.dtype))
    return block


def load_adapter(thinker, adapter_dir: str | Path, retention: float | None = None, is_trainable: bool = False):
    """``attach_block`` + ``PeftModel.from_pretrained``; returns the PEFT-wrapped thinker."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    missing = [name for name in ADAPTER_FILES if not (adapter_dir / name).is_file()]
    if missing:
        raise AdapterMismatchError(
            f"{adapter_dir} lacks {missing}; pass the adapter/ directory a training run wrote (run_dir/adapter)"
        )
    attach_block(thinker, adapter_dir, retention)
    # autocast_adapter_dtype=False: keep a bf16 backbone's adapter in bf16, so outputs match the trained engine
    return PeftModel.from_pretrained(thinker, str(adapter_dir), is_trainable=is_trainable,
                                     autocast_adapter_dtype=False)


def export_adapter(peft_model, directory: str | Path, state_dict: dict | None = None) -> Path:
    """Write ``directory/`` = PEFT's adapter files (LoRA + ``av_fusion``) + ``fusion_config.json``, atomically.

    Files go to ``directory.tmp`` first, which then replaces ``directory`` (a crash leaves the old export).
    ``state_dict`` lets a ZeRO-3 caller pass gathered weights.
    """
    directory = Path(directory)
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(str(tmp), state_dict=state_dict)
    block = peft_model.get_base_model().compressor  # the ModulesToSaveWrapper forwards attributes to the block
    save_fusion_config(tmp, block.config, block.base)
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory
