"""``fastv``: FastV (Chen et al., ECCV 2024, arXiv 2403.06764), attention-guided token dropping inside the LLM."""

from __future__ import annotations

from torch import Tensor

from fusion.errors import MethodConfigError
from fusion.model.llm_hooks import LLMHook
from fusion.pruners.base import Compressor, require_modality
from fusion.pruners.budget import keep_count
from fusion.pruners.ranking import topk_mask
from fusion.pruners.registry import METHODS
from fusion.tokens import AVTokens, Modality, Selection

POOLS = {"av": (Modality.VIDEO, Modality.AUDIO), "video": (Modality.VIDEO,), "audio": (Modality.AUDIO,)}


@METHODS.register("fastv")
class FastV(Compressor):
    """FastV: at LLM layer ``K`` keep the pool tokens the last prompt token attends to most at layer ``K-1``.

    Layers ``0..K-1`` run on the whole sequence (whatever reached the LLM). Then, per sample,
    ``a = mean_h softmax(q_last,h · K_hᵀ / sqrt(d))`` is the attention row of the LAST real prompt token at layer
    ``K-1`` (computed as that single row; the LLM stays on SDPA), and the pool keeps its ``ceil(r · N)`` tokens with
    the highest ``a`` (text and special tokens always stay); hidden states and TMRoPE ids are gathered with the
    same indices and layers ``K..`` run on the kept tokens, so each layer's KV cache has the length its layer saw.
    Decoding continues from those per-layer caches (``model.generate``; greedy).

    The paper's ``R`` is a pruning ratio: ``retention = 1 - R`` over the pool (the official llava-hf code keeps
    ``round(N·(1-R))``; we use the project's ``ceil(r·N)``, at most one token more). Paper defaults: ``K = 2``,
    ``R = 50 %``; OmniZip's Qwen2.5-Omni tables ran FastV at ``K = 5`` over audio + video (pool UNVERIFIED).
    ``model.last_stats`` counts the tokens kept from layer ``K`` on; its ``layer_tokens`` gives every layer's
    length (FLOPs ``K·C(n) + (T-K)·C(n̂)``). At ``retention = 1`` nothing is pruned and the stock path runs.

    Args:
        retention: fraction of pool tokens kept from layer ``k`` on, in (0, 1] (``1 - R``).
        k: the layer ``K`` at which tokens are dropped (default 2; needs ``1 <= K < num_layers``).
        tokens: the pool: ``"av"`` (audio + video, default), ``"video"`` or ``"audio"``.
    """

    name = "fastv"

    def __init__(self, retention: float, k: int = 2, tokens: str = "av") -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise MethodConfigError(f"fastv: k={k!r} must be an int >= 1 (the layer whose input is pruned; paper: 2)")
        if tokens not in POOLS:
            raise MethodConfigError(f"fastv: tokens={tokens!r} is not one of {list(POOLS)}")
        self.retention = retention
        self.k = k
        self.tokens = tokens

    def select(self, tokens: AVTokens) -> Selection:
        """Nothing is dropped before the LLM (FastV acts at layer ``k``)."""
        if self.tokens != "av":
            require_modality(tokens, self.name, video=self.tokens == "video", audio=self.tokens == "audio")
        return tokens.keep_all()

    def llm_hook(self) -> FastVHook | None:
        return None if self.retention >= 1.0 else FastVHook(self.k, self.retention, POOLS[self.tokens])


class FastVHook(LLMHook):
    """FastV's prefill drop: ``keep = (real non-pool) ∪ top_{ceil(r·N)}(row over the pool)`` per sample."""

    name = "fastv"

    def __init__(self, layer: int, retention: float, codes: tuple[Modality, ...]) -> None:
        self.prefill_layer = layer
        self.retention = retention
        self.codes = codes

    def prefill_keep(self, row: Tensor, modality: Tensor, valid: Tensor) -> Tensor:
        pool = valid & (modality[..., None] == modality.new_tensor([int(c) for c in self.codes])).any(-1)  # (B, S)
        return (valid & ~pool) | topk_mask(row, pool, keep_count(pool.sum(1), self.retention))
