"""Training-free compression methods, one file each, all registered in :data:`METHODS`."""

# importing a method's module registers it (one module per line keeps merges clean)
from fusion.block import method as _fusion_block  # noqa: F401  (registers the learned block as 'fusion')
from fusion.data import evidence as _evidence  # noqa: F401  (registers ToyWorld's 'evidence_oracle')
from fusion.pruners import (
    attention_oracle,  # noqa: F401
    audio_attn,  # noqa: F401
    compose,  # noqa: F401
    divprune,  # noqa: F401
    dycoke,  # noqa: F401
    fastv,  # noqa: F401
    keep_all,  # noqa: F401
    keyframe,  # noqa: F401
    omnizip,  # noqa: F401
    random_tokens,  # noqa: F401
    segment_topk,  # noqa: F401
    uniform,  # noqa: F401
    vidcom2,  # noqa: F401
    xattn,  # noqa: F401
)
from fusion.pruners.base import Compressor
from fusion.pruners.budget import Budget, check_retention, keep_count
from fusion.pruners.registry import METHODS, Registry

__all__ = ["METHODS", "Budget", "Compressor", "Registry", "check_retention", "keep_count"]
