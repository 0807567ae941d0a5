"""av-fusion: audio-visual token compression for omni-modal LLMs (Qwen2.5-Omni first).

Public entry points::

    from fusion import load_model, METHODS
    model, processor = load_model("tiny-random", method="uniform", retention=0.25)

Nothing heavy happens at import: transformers is imported lazily by the attributes that need it.
"""

from __future__ import annotations

from fusion.errors import (
    AdapterMismatchError,
    AVFusionError,
    ConfigError,
    DatasetError,
    InputMismatchError,
    MediaError,
    MethodConfigError,
    MissingModalityError,
    NonFiniteFeaturesError,
    RetentionError,
    SelectionError,
    UnknownMethodError,
)
from fusion.tokens import AVTokens, KeepStats, Modality, Selection

__version__ = "0.1.0"

_LAZY = {
    "METHODS": ("fusion.pruners", "METHODS"),
    "load_model": ("fusion.model.loading", "load_model"),
    "CompressedThinker": ("fusion.model.thinker", "CompressedThinker"),
    "apply_keep": ("fusion.model.keep", "apply_keep"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'fusion' has no attribute {name!r}")


__all__ = [
    "AVFusionError", "AVTokens", "AdapterMismatchError", "CompressedThinker", "ConfigError", "DatasetError",
    "InputMismatchError", "KeepStats", "METHODS", "MediaError", "MethodConfigError", "MissingModalityError",
    "Modality", "NonFiniteFeaturesError", "RetentionError", "Selection", "SelectionError", "UnknownMethodError",
    "apply_keep", "load_model",
]
