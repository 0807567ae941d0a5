"""The pluggable data layer: a :class:`DataSource` turns sample indices into model-ready batches.

The recipe never iterates a source itself: :class:`train.order.SampleOrder` decides which indices each rank
reads at each step (a pure function of the data seed and the step, which makes resume exact), and the source
only has to be indexable. A source is registered under a name (``data.source`` in the YAML) together with the
``data.<name>`` config section it reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from fusion.errors import ConfigError

IGNORE_INDEX = -100


@runtime_checkable
class DataSource(Protocol):
    """What the recipe needs from a dataset.

    * ``len(source)``: number of distinct samples;
    * ``source.example(i)``: sample ``i`` (any object; deterministic: the same ``i`` gives the same sample);
    * ``source.collate(examples)``: one right-padded batch for ``CompressedThinker.forward``: ``input_ids``,
      ``attention_mask``, the media tensors (``pixel_values_videos``, ``video_grid_thw``, ``video_second_per_grid``,
      ``input_features``, ``feature_attention_mask``, ``use_audio_in_video``) and ``labels``: the answer tokens'
      ids at their positions, -100 everywhere else (prompt, media, padding).
    """

    def __len__(self) -> int: ...

    def example(self, index: int) -> Any: ...

    def collate(self, examples: list[Any]) -> dict[str, Tensor]: ...


SOURCES: dict[str, Callable[..., DataSource]] = {}


def register_source(name: str):
    """Decorator: ``@register_source("synthetic")`` on a factory ``(section_config, processor, model_config)``."""

    def add(factory):
        if name in SOURCES:
            raise ConfigError(f"a data source named {name!r} is already registered")
        SOURCES[name] = factory
        return factory

    return add


def build_source(data_config, processor, model_config) -> DataSource:
    """The source named by ``data_config.source``, built from its section ``data_config.<source>``."""
    from train import mcq_source, synthetic  # noqa: F401  (registration)

    name = data_config.source
    if name not in SOURCES:
        raise ConfigError(f"data.source: unknown source {name!r}; known sources: {', '.join(sorted(SOURCES))}")
    section = getattr(data_config, name, None)
    source = SOURCES[name](section, processor, model_config)
    if len(source) < 1:
        raise ConfigError(f"data.source: the {name!r} source is empty; check data.{name}")
    return source
