"""A trained run's adapter directory: LoRA + the block (PEFT ``modules_to_save=["av_fusion"]``) + fusion_config.json.

Two ways to load it, with identical outputs::

    model, processor = fusion.load_model(base, method="fusion", adapter="runs/x/adapter")

    thinker = ...                                   # the same backbone (a CompressedThinker)
    attach_block(thinker, "runs/x/adapter")         # builds av_fusion from fusion_config.json, checks the backbone
    model = PeftModel.from_pretrained(thinker, "runs/x/adapter")

Trust boundary: an adapter is read from safetensors and JSON only. Both ways above first check the directory
(:func:`check_adapter_files`): a pickle-bearing file (``adapter_model.bin``, ``*.pt``, ``*.pkl`` ...), which PEFT
would ``torch.load`` when the safetensors file is absent, is refused with :class:`~fusion.errors.UnsafeWeightsError`
before anything is read.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fusion.block.config import check_base, load_fusion_config, save_fusion_config
from fusion.errors import AdapterMismatchError, UnsafeWeightsError
from fusion.pruners.budget import check_retention

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
"""Suffixes of files that torch.load / pickle would unpickle (and so could run code)."""
REEXPORT = ("re-export it with safetensors (fusion.block.export_adapter, or PeftModel.save_pretrained(dir, "
            "safe_serialization=True)) and remove the pickle files")


def check_adapter_files(adapter_dir: str | Path) -> Path:
    """Refuse an adapter directory that holds pickle files or lacks its safetensors weights; nothing is unpickled.

    Raises:
        UnsafeWeightsError: a ``.bin``/``.pt``/``.pth``/``.pkl``/``.pickle``/``.ckpt`` file is in the directory, or
            ``adapter_model.safetensors`` is not a safetensors file (e.g. a renamed pickle).
        AdapterMismatchError: ``adapter_config.json`` or ``adapter_model.safetensors`` is missing.
    """
    from safetensors import SafetensorError, safe_open

    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise AdapterMismatchError(f"{adapter_dir} is not a directory; pass the adapter/ directory a training run "
                                   "wrote (run_dir/adapter)")
    pickles = sorted(p.name for p in adapter_dir.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeWeightsError(f"{adapter_dir} holds {pickles}: pickle files, which can run code when loaded; "
                                 f"adapters are read from safetensors + JSON only: {REEXPORT}")
    missing = [name for name in ADAPTER_FILES if not (adapter_dir / name).is_file()]
    if missing:
        raise AdapterMismatchError(
            f"{adapter_dir} lacks {missing}; pass the adapter/ directory a training run wrote (run_dir/adapter)"
        )
    weights = adapter_dir / "adapter_model.safetensors"
    try:
        with safe_open(str(weights), "pt"):
            pass
    except (SafetensorError, OSError, ValueError) as e:
        raise UnsafeWeightsError(f"{weights} is not a safetensors file ({e}); {REEXPORT}") from e
    return adapter_dir


def attach_block(thinker, adapter_dir: str | Path, retention: float | None = None):
    """Build the block described by ``adapter_dir/fusion_config.json`` and install it as ``thinker.av_fusion``.

    Raises :class:`AdapterMismatchError` when the adapter was trained on a backbone of another size. The
    block's weights are placeholders until ``PeftModel.from_pretrained`` loads the trained ones.
    ``retention`` (optional) evaluates the block at another retention than it was trained at.
    """
    from fusion.block.block import FusionBlock

    adapter_dir = check_adapter_files(adapter_dir)
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

    adapter_dir = check_adapter_files(adapter_dir)
    attach_block(thinker, adapter_dir, retention)
    try:
        # autocast_adapter_dtype=False: keep a bf16 backbone's adapter in bf16, so outputs match the trained engine
        return PeftModel.from_pretrained(thinker, str(adapter_dir), is_trainable=is_trainable,
                                         autocast_adapter_dtype=False)
    except RuntimeError as e:  # load_state_dict's "size mismatch for ...": the files of two exports mixed
        lines = [line.strip().rstrip(".") for line in str(e).splitlines() if "size mismatch" in line]
        if not lines:
            raise
        raise AdapterMismatchError(
            f"the weights of {adapter_dir} do not have the shapes its adapter_config.json (LoRA rank r) and "
            f"fusion_config.json (block dim) describe: {len(lines)} tensor(s), e.g. {lines[0]}; the files come from "
            "different exports or were edited: copy one run's whole adapter/ directory, or re-export it"
        ) from None


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
