"""The registry entry ``fusion``: the learned block, before it knows the backbone it sits on.

``METHODS.build("fusion", retention=0.25, dim=128)`` returns a :class:`FusionMethod`; its parameters are the
fields of :class:`~fusion.block.config.FusionConfig`. ``fusion.load_model(..., method="fusion")`` binds it to the
loaded thinker (a trainable :class:`~fusion.block.block.FusionBlock` registered as ``av_fusion``), and
``load_model(..., method="fusion", adapter=run_dir/adapter)`` loads a trained one. Used on its own (e.g. by a
benchmark that iterates the registry), it builds an untrained block with seeded weights at the width of the
tokens it sees, and runs it without gradients.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch

from fusion.block.config import BaseIdentity, FusionConfig
from fusion.errors import ConfigError, MethodConfigError
from fusion.pruners.base import Compressor
from fusion.pruners.registry import METHODS
from fusion.tokens import AVTokens, Selection


class FusionMethod(Compressor):
    """A :class:`FusionConfig` waiting for a backbone (see module doc)."""

    name = "fusion"

    def __init__(self, config: FusionConfig) -> None:
        self.config = config
        self.retention = config.retention
        self._block = None

    @property
    def requires(self) -> frozenset[str]:
        from fusion.block.block import FusionBlock  # lazy: fusion.pruners imports this module at registration

        return FusionBlock._training_free_method(self.config).requires if self.config.scorer != "learned" \
            else frozenset()

    def bind(self, model_config):
        """A fresh trainable :class:`FusionBlock` for the thinker whose config is ``model_config``."""
        from fusion.block.block import FusionBlock

        return FusionBlock(self.config, BaseIdentity.from_config(model_config))

    def select(self, tokens: AVTokens) -> Selection:
        from fusion.block.block import FusionBlock

        width = tokens.embeds.shape[-1]
        if self._block is None or self._block.base.hidden_size != width:
            base = BaseIdentity(model_type="unbound", hidden_size=width, num_hidden_layers=0, num_attention_heads=0,
                                num_key_value_heads=0, intermediate_size=0, vocab_size=0)
            self._block = FusionBlock(self.config, base).eval()
        self._block.to(device=tokens.embeds.device, dtype=tokens.embeds.dtype)
        with torch.no_grad():
            return self._block(tokens)


def build_fusion(retention: float, **params) -> FusionMethod:
    """Factory of the ``fusion`` method: ``FusionConfig(retention=retention, **params)``."""
    try:
        return FusionMethod(FusionConfig(retention=retention, **params))
    except ConfigError as e:
        raise MethodConfigError(f"method 'fusion': {e}") from None


# the registry reports (and checks) the FusionConfig fields as the method's parameters
build_fusion.__signature__ = inspect.Signature(
    [inspect.Parameter("retention", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                         default=f.default if f.default is not dataclasses.MISSING else f.default_factory())
       for f in dataclasses.fields(FusionConfig) if f.name != "retention"]
)
METHODS.register("fusion", build_fusion)
