"""``attention_oracle``: keep the audio/video tokens the uncompressed LLM attends to most from the prompt's end.

The issue's per-token teacher used at test time: ``score_j = sum_l mean_h attention(last prompt token -> j)``
(:mod:`fusion.model.lm_attention`) from one full, uncompressed prefill, then the top ``ceil(r N)`` of the joint
audio+video pool (or of each modality). An oracle row for the table, next to ToyWorld's evidence oracle: it shows
what the backbone's own attention would choose, at the cost of a whole extra prefill (no saving, by design).
Needs a Qwen2.5-Omni thinker (``sdpa`` or ``eager``); it computes the rows itself, so any backend runs the pass.
"""

from __future__ import annotations

from fusion.model.lm_attention import LM_ATTENTION
from fusion.pruners.base import Compressor, required_extra, select_by_scores
from fusion.pruners.budget import Budget
from fusion.pruners.registry import METHODS
from fusion.tokens import AVTokens, Selection


@METHODS.register("attention_oracle")
class AttentionOracle(Compressor):
    """Top ``ceil(r N)`` tokens by the uncompressed LLM's attention from the last prompt token.

    Args:
        retention: fraction of tokens kept, in (0, 1].
        budget: ``"joint"`` (default: one pool of audio + video, as in the issue's probe) or ``"modality"``.
    """

    name = "attention_oracle"
    requires = frozenset({LM_ATTENTION})

    def __init__(self, retention: float, budget: str = "joint") -> None:
        self.retention = retention
        self.budget = Budget.parse(budget, self.name)

    def select(self, tokens: AVTokens) -> Selection:
        if self.retention >= 1.0:
            return tokens.keep_all()
        scores = required_extra(tokens, LM_ATTENTION, self.name,
                                "the uncompressed LLM's attention from the last prompt token")
        return select_by_scores(tokens, scores, self.retention, self.budget)
