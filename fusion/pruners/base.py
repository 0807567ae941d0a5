"""What a compression method is: a callable ``AVTokens -> Selection`` with a retention and a name."""

from __future__ import annotations

from fusion.errors import MissingModalityError
from fusion.pruners.budget import Budget, budget_pools, keep_count
from fusion.pruners.ranking import topk_mask
from fusion.tokens import AVTokens, Selection


class Compressor:
    """Base class of every pre-LLM method.

    Subclasses implement :meth:`select`. ``requires`` names extra per-token signals the thinker must compute
    before calling (e.g. ``"audio_attention"``: attention received in the audio encoder's last layer).
    Methods that act inside the language model (FastV, DyCoke stage 2) additionally return a hook from
    :meth:`llm_hook`.
    """

    name: str = "compressor"
    requires: frozenset[str] = frozenset()
    retention: float = 1.0

    def select(self, tokens: AVTokens) -> Selection:
        raise NotImplementedError

    def __call__(self, tokens: AVTokens) -> Selection:
        return self.select(tokens)

    def llm_hook(self):
        """In-LLM hook object, or None for methods that only select before the LLM."""
        return None

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def require_modality(tokens: AVTokens, method: str, video: bool = False, audio: bool = False) -> None:
    """Raise :class:`MissingModalityError` if a sample lacks a modality the method cannot work without."""
    for needed, counts, label in ((video, tokens.n_video, "video"), (audio, tokens.n_audio, "audio")):
        if needed and bool((counts == 0).any()):
            missing = (counts == 0).nonzero().flatten().tolist()
            raise MissingModalityError(
                f"method '{method}' needs {label} tokens, but sample(s) {missing} of the batch have none; "
                f"pair it with a method for the other modality (see fusion.pruners.compose) or drop those samples"
            )


def select_by_scores(tokens: AVTokens, scores, retention: float, budget: Budget) -> Selection:
    """Keep the top ``ceil(r * N)`` AV tokens by ``scores`` per modality or over the joint pool; text stays."""
    if retention >= 1.0:
        return tokens.keep_all()
    keep = tokens.attention_mask.bool() & ~tokens.av_mask
    for pool in budget_pools(tokens, budget):
        keep |= topk_mask(scores, pool, keep_count(pool.sum(1), retention))
    return Selection(keep=keep)
