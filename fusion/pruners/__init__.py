"""Training-free compression methods, one file each, all registered in :data:`METHODS`."""

from fusion.pruners import dycoke, fastv, keep_all, random_tokens, uniform  # noqa: F401  (registration side effects)
from fusion.pruners.base import Compressor
from fusion.pruners.budget import Budget, check_retention, keep_count
from fusion.pruners.registry import METHODS, Registry

__all__ = ["METHODS", "Budget", "Compressor", "Registry", "check_retention", "keep_count"]
