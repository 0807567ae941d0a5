"""The ``mcq_jsonl`` source: an MCQ JSONL split (ToyWorld, WorldSense or any user set) as training batches.

Rows follow the one MCQ schema ``{id, video, question, options, answer, category}`` (``fusion.data.mcq``;
relative video paths resolve against the JSONL's folder). Every clip is decoded and processed once into a tensor
cache beside the JSONL (``fusion.data.cache.cached_split``: ``<folder>/cache/<stem>-<fingerprint>.safetensors``,
written atomically, refused if built with another processor or prompt style), so training never decodes media.

* ``len(source)`` = number of rows (or ``limit``); ``source.example(i)`` = row index ``i``;
* ``source.collate(indices)`` = prompt (system, media block, question, lettered options) + answer
  (``LETTER <|im_end|>``), right padding, ``labels`` = the answer tokens' ids and -100 everywhere else.

A clip that fails to decode while the cache is built raises the typed ``MediaError`` naming the file.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from fusion.errors import ConfigError
from train.sources import register_source


class McqJsonlSource:
    """See module doc. Args: the ``data.mcq_jsonl`` section, the processor, the thinker config (unused)."""

    def __init__(self, config, processor, model_config) -> None:
        from fusion.data.cache import cached_split

        if not config.path:
            raise ConfigError("data.mcq_jsonl.path: set it to an MCQ JSONL file (e.g. runs/toyworld/train.jsonl; "
                              "generate ToyWorld with `python -m fusion.data.toyworld --out runs/toyworld`)")
        path = Path(config.path)
        if not path.is_file():
            raise ConfigError(f"data.mcq_jsonl.path: no file at {path}; generate ToyWorld with "
                              f"`python -m fusion.data.toyworld --out {path.parent}` or point it at your JSONL")
        self.split = cached_split(path, processor, style=config.style, progress=True)
        self.size = len(self.split) if config.limit is None else min(config.limit, len(self.split))

    def __len__(self) -> int:
        return self.size

    def example(self, index: int) -> int:
        return index

    def collate(self, examples: list[int]) -> dict[str, Tensor]:
        batch = self.split.batch(examples, mode="train")
        batch.pop("answer")
        batch.pop("n_options")
        return batch


@register_source("mcq_jsonl")
def build_mcq_jsonl(config, processor, model_config) -> McqJsonlSource:
    return McqJsonlSource(config, processor, model_config)
