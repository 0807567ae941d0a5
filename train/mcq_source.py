"""The ``mcq_jsonl`` source: the interface it implements once the ToyWorld media path lands (not wired yet).

Contract (the same :class:`train.sources.DataSource` as ``synthetic``):

* rows follow the MCQ schema ``{id, video, question, options, answer, category}`` read by
  ``fusion.data.mcq.load_jsonl(path)`` (relative video paths resolved against the JSONL's folder);
* ``len(source)`` = number of rows; ``source.example(i)`` = row ``i`` (media decoded lazily, through a cache of
  model-ready tensors, so training does not decode every epoch);
* ``source.collate(examples)`` = ``fusion.data.batching.collate(samples, processor, mode="train")``: the prompt
  (system, media block, question, options) plus the answer (``LETTER <|im_end|>``), right padding, ``labels``
  = the answer tokens' ids and -100 everywhere else;
* the order comes from :class:`train.order.SampleOrder` like every source; a row whose media fails to decode
  raises a typed ``MediaError`` naming the file (never a silently skipped sample).
"""

from __future__ import annotations

from fusion.errors import ConfigError
from train.sources import register_source


@register_source("mcq_jsonl")
def build_mcq_jsonl(config, processor, model_config):
    """Not available in this version (see module doc); raises a :class:`ConfigError` saying what to use."""
    raise ConfigError(
        f"data.source: 'mcq_jsonl' (path={config.path!r}) is defined but not wired yet: it needs the ToyWorld "
        "media path (fusion.data.mcq / fusion.data.batching). Use data.source=synthetic for now"
    )
