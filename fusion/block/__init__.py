"""The learned V<->A fusion block: config, cross-attention per time group, scorer, straight-through top-k,
the registry entry ``fusion`` and the adapter files it is saved in."""

from fusion.block.adapter import attach_block, export_adapter, load_adapter
from fusion.block.block import FusionBlock, FusionLayer
from fusion.block.config import FUSION_CONFIG_NAME, BaseIdentity, FusionConfig, load_fusion_config, save_fusion_config
from fusion.block.method import FusionMethod

__all__ = [
    "FUSION_CONFIG_NAME", "BaseIdentity", "FusionBlock", "FusionConfig", "FusionLayer", "FusionMethod",
    "attach_block", "export_adapter", "load_adapter", "load_fusion_config", "save_fusion_config",
]
