"""What a compression method is: a callable ``AVTokens -> Selection`` with a retention and a name."""

from __future__ import annotations

from torch import Tensor

from fusion.errors import InputMismatchError, MissingModalityError
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


def required_extra(tokens: AVTokens, key: str, method: str, what: str) -> Tensor:
    """``tokens.extras[key]``, or a typed error saying how to get it (the thinker computes an extra only on request)."""
    value = tokens.extras.get(key)
    if value is None:
        raise InputMismatchError(
            f"{method} needs tokens.extras[{key!r}] ({what}), which the thinker computes only when the compressor's "
            f"`requires` names it; run the method through CompressedThinker (set_compressor / load_model) or add "
            f"that extra when building AVTokens by hand"
        )
    return value

