"""The models a run needs: one backbone for every training-free method (its compressor is swapped per setting), plus
one PEFT-wrapped copy per trained adapter (LoRA changes the LLM, so it cannot share the plain backbone).

The harness loops sample-major (each batch's media are decoded once and every setting runs on them), so all
models of a run stay loaded: a run with adapters holds one extra backbone copy per adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eval.config import ModelConfig
from eval.matrix import Setting
from fusion.errors import ConfigError


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``auto`` -> cuda when available, else cpu; a data-parallel rank (``local_rank`` given) gets
    ``cuda:local_rank`` for ``auto`` and ``cuda`` (an explicit ``cuda:k`` is kept as asked).

    Raises:
        ConfigError: cuda asked for without CUDA, or ``local_rank`` beyond the visible CUDA devices.
    """
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device: {name} was asked for but CUDA is not available; use model.device=cpu")
    if device.type == "cuda" and local_rank is not None and device.index is None:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are "
                              "visible: start at most that many processes per node (--nproc_per_node / "
                              "--num_processes)")
        device = torch.device("cuda", local_rank)
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on cuda, float32 on cpu."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


@dataclass
class Runtime:
    """Where and how models run (written with every result row)."""

    device: torch.device
    dtype: torch.dtype
    attn_implementation: str

    def describe(self) -> dict:
        """``{"device": "cuda (NVIDIA H100 ...)" | "cpu (N threads)", "dtype": ..., "attn_implementation": ...}``."""
        if self.device.type == "cuda":
            where = f"cuda ({torch.cuda.get_device_name(self.device)})"
        else:
            where = f"cpu ({torch.get_num_threads()} threads)"
        return {"device": where, "dtype": str(self.dtype).replace("torch.", ""),
                "attn_implementation": self.attn_implementation}


class ModelPool:
    """Loads the backbone once and hands out a model with a setting's compressor installed."""

    def __init__(self, cfg: ModelConfig, local_rank: int | None = None) -> None:
        """``local_rank``: this data-parallel rank's index on its node (None for one process), see
        :func:`resolve_device`."""
        self.cfg = cfg
        device = resolve_device(cfg.device, local_rank)
        if device.type == "cuda" and local_rank is not None:
            torch.cuda.set_device(device)  # CUDA events and peak-memory stats of eval.measure use the current device
        self.runtime = Runtime(device, resolve_dtype(cfg.dtype, device), cfg.attn_implementation)
        self._base = None
        self.processor = None
        self._adapted: dict[str, object] = {}

    def _load(self, adapter: str | None = None, retention: float | None = None):
        from fusion import load_model

        rt = self.runtime
        method = "fusion" if adapter else "none"
        return load_model(self.cfg.name, method=method, retention=retention, adapter=adapter, dtype=rt.dtype,
                          attn_implementation=rt.attn_implementation, device=rt.device, seed=self.cfg.seed)

    def base(self):
        """The plain backbone (loaded on first use)."""
        if self._base is None:
            self._base, self.processor = self._load()
            if self.processor is None:
                raise ConfigError(f"model.name: {self.cfg.name!r} has no processor (random weights at a real size); "
                                  "use 'toy', 'tiny-random', 'tiny-random-qwen3' or a real checkpoint")
        return self._base

    @property
    def context(self) -> int | None:
        """The backbone's context (``max_position_embeddings`` tokens): longer samples never reach the model."""
        value = getattr(self.base().config.get_text_config(), "max_position_embeddings", None)
        return int(value) if value else None

    def get(self, setting: Setting):
        """The model for ``setting``, its compressor installed (the adapter's block at the setting's retention)."""
        from fusion.pruners import METHODS

        base = self.base()
        if setting.adapter:
            model = self._adapted.get(setting.adapter)
            if model is None:
                model, _ = self._load(setting.adapter)
                self._adapted[setting.adapter] = model
            if setting.retention is not None:
                model.get_base_model().compressor.set_retention(setting.retention)
            return model
        compressor = METHODS.build(setting.method, **setting.build_kwargs())
        if hasattr(compressor, "bind"):  # the learned block without adapter: an untrained block on this backbone
            compressor = compressor.bind(base.config).to(device=self.runtime.device, dtype=self.runtime.dtype)
        base.set_compressor(compressor)
        return base


def thinker_of(model):
    """The :class:`~fusion.model.thinker.CompressedThinker` inside ``model`` (itself, or a PEFT wrapper's base)."""
    get = getattr(model, "get_base_model", None)
    return get() if get is not None else model
