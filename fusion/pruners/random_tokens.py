"""``random``: keep a seeded random subset of the audio/video tokens (the control every paper reports)."""

from __future__ import annotations

import hashlib

import torch

from fusion.pruners.base import Compressor, select_by_scores
from fusion.pruners.budget import Budget
from fusion.pruners.registry import METHODS
from fusion.tokens import AVTokens, Selection


def sample_seed(seed: int, input_ids: torch.Tensor) -> int:
    """A 63-bit seed from the method seed and the sample's (unpadded) token ids.

    Seeding per sample from its own ids makes the kept set independent of batch composition and padding,
    and differs between samples whose prompts differ.
    """
    digest = hashlib.blake2b(input_ids.to(torch.int64).cpu().numpy().tobytes(), digest_size=8,
                             key=int(seed).to_bytes(8, "little", signed=True)).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@METHODS.register("random")
class RandomTokens(Compressor):
    """Keep ``ceil(r * N)`` uniformly random tokens per modality (or over the joint AV pool).

    Each sample draws from its own ``torch.Generator`` seeded with ``sample_seed(seed, ids)``, so results are
    reproducible, batch-invariant, and change with ``seed`` (report several seeds: OmniZip issue #12 shows
    Random is a strong, seed-sensitive baseline).

    Args:
        retention: fraction of tokens kept, in (0, 1].
        budget: ``"modality"`` (default) or ``"joint"``.
        seed: base seed (default 0).
    """

    name = "random"

    def __init__(self, retention: float, budget: str = "modality", seed: int = 0) -> None:
        self.retention = retention
        self.budget = Budget.parse(budget, self.name)
        self.seed = int(seed)

    def select(self, tokens: AVTokens) -> Selection:
        if self.retention >= 1.0:
            return tokens.keep_all()
        B, L = tokens.input_ids.shape
        scores = torch.zeros(B, L)
        real = tokens.attention_mask.bool()
        for b in range(B):  # one generator per sample (batch-invariant); the draw itself is vectorised
            g = torch.Generator().manual_seed(sample_seed(self.seed, tokens.input_ids[b][real[b]]))
            scores[b, real[b]] = torch.rand(int(real[b].sum()), generator=g)
        return select_by_scores(tokens, scores.to(tokens.embeds.device), self.retention, self.budget)
