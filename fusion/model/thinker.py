"""`CompressedThinker`: Qwen2.5-Omni's HF thinker with one compression hook between projectors and LLM.

The hook itself (encoders -> scatter -> full TMRoPE ids -> AVTokens -> compressor -> Selection -> apply_keep ->
language model) is :class:`fusion.model.compression.CompressionMixin`, shared with Qwen3-Omni
(``fusion.model.qwen3_thinker``).
"""

from __future__ import annotations

from transformers import Qwen2_5OmniThinkerForConditionalGeneration
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from fusion.model.compression import CompressedOutput, CompressionMixin

__all__ = ["CompressedOutput", "CompressedThinker"]


class CompressedThinker(CompressionMixin, Qwen2_5OmniThinkerForConditionalGeneration):
    """Qwen2.5-Omni's thinker with a compressor (see :class:`~fusion.model.compression.CompressionMixin`)."""


# transformers skips its checkpoint key conversions for classes defined outside transformers; give ours the stock
# thinker's (strip `thinker.`, map the hub's legacy `model.layers.*` / `visual.*` / `audio_tower.*` keys)
register_checkpoint_conversion_mapping(
    CompressedThinker.__name__,
    get_checkpoint_conversion_mapping(Qwen2_5OmniThinkerForConditionalGeneration.__name__),
    overwrite=True,
)
