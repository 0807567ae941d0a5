"""Per-sample cache of the frozen front of the thinker: encoder outputs scattered into the embeddings + TMRoPE ids.

Everything ``build_tokens`` computes before the block is frozen (``train/model.py`` refuses LoRA on the encoders
and the embedding table is never trained) and every sample is deterministic (``DataSource.example``), so a
sample's unpruned tokens are the same at every visit. Recomputing them was ~1/3 of a toy training step on 2 CPU
cores (the vision and audio towers, and transformers' per-sample Python ``get_rope_index``); a run of 2,000 steps
of 16 over 8,000 clips visits each clip 4 times.

On its first visit a sample is built with its whole CHUNK -- the ``chunk`` consecutive indices around it, one
batched call, all of them cached -- so its values depend on its index alone, not on which samples shared its
micro-batch: 1 rank and 2 ranks, and a resumed run, see the same numbers. Building in chunks costs what building
every micro-batch did in the first epoch (built one by one, the toy's 8,000 clips cost ~3x that). The first chunk
sizes the whole set: if ``size x`` its mean bytes per sample exceeds the budget, the cache turns itself off
(``tokens`` returns None: the caller builds every micro-batch as without it), so a partly cached set never pays
for chunks it cannot keep. A micro-batch is assembled from the entries of its samples (right
padding, as every ``DataSource`` collates)::

    embeds[b, :n_b]        = E_b           (n_b, D)  the sample's own embeds, encoders scattered in
    embeds[b, n_b:]        = embed(pad)              what build_tokens puts on padding
    position_ids[:, b, :n_b] = P_b         (3, n_b)  its TMRoPE ids;  1 on padding (as get_rope_index)

Only a block that needs no per-token extras is served (an extra such as the attention teacher's reads the LLM,
which LoRA changes); the budget is ``train.token_cache_gib`` (0 = no cache).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fusion.errors import InputMismatchError
from fusion.model.annotate import annotate_tokens
from fusion.tokens import AVTokens

#: TMRoPE id get_rope_index writes on padding positions
PADDING_POSITION = 1


@dataclass
class CachedSample:
    """One sample's unpruned real tokens: ``input_ids (n,)``, ``embeds (n, D)``, ``position_ids (3, n)``."""

    input_ids: Tensor
    embeds: Tensor
    position_ids: Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.input_ids, self.embeds, self.position_ids))


class TokenCache:
    """``tokens(thinker, indices, batch)``: the micro-batch's :class:`AVTokens`, equal to
    ``thinker.build_tokens(**batch)`` up to float rounding (see module doc).

    ``collate(indices)``: the collated batch of those samples (the recipe's ``batch``); ``size``: the number of
    samples; ``budget_bytes``: entries are added until they hold this much; ``chunk``: samples built together.
    """

    def __init__(self, collate: Callable[[list[int]], dict], token_inputs: Callable[[dict], dict], size: int,
                 budget_bytes: int, chunk: int = 16) -> None:
        self.collate, self.token_inputs, self.size = collate, token_inputs, size
        self.budget, self.chunk = budget_bytes, chunk
        self.entries: dict[int, CachedSample] = {}
        self.bytes = 0
        self.hits = self.misses = 0
        self.off = budget_bytes <= 0
        self.sized = False

    def _build(self, thinker, indices: list[int]) -> list[CachedSample]:
        """The real tokens of ``indices``, built in one batched call."""
        tokens = thinker.build_tokens(**self.token_inputs(self.collate(indices)))
        real = tokens.attention_mask.bool()  # (B, L)
        return [CachedSample(tokens.input_ids[b, real[b]].clone(), tokens.embeds[b, real[b]].clone(),
                             tokens.position_ids[:, b, real[b]].clone()) for b in range(len(indices))]

    @torch.no_grad()
    def entry(self, thinker, index: int) -> CachedSample:
        """Sample ``index``'s real tokens: cached, else built with its whole chunk (the chunk's new samples are
        cached while the budget lasts)."""
        cached = self.entries.get(index)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        first = index - index % self.chunk
        members = list(range(first, min(first + self.chunk, self.size)))
        built = dict(zip(members, self._build(thinker, members)))
        if not self.sized:  # the first chunk sizes the set
            self.sized = True
            self.off = sum(s.nbytes for s in built.values()) / len(built) * self.size > self.budget
        for i, sample in built.items():
            if not self.off and i not in self.entries and self.bytes + sample.nbytes <= self.budget:
                self.entries[i] = sample
                self.bytes += sample.nbytes
        return built[index]

    @torch.no_grad()
    def tokens(self, thinker, indices: list[int], batch: dict) -> AVTokens | None:
        """The micro-batch ``batch`` (samples ``indices``, right-padded) as unpruned tokens, from the cache; None
        when the cache is off (the set does not fit its budget)."""
        if self.off:
            return None
        input_ids, mask = batch["input_ids"], batch["attention_mask"]  # (B, L)
        lengths = mask.sum(1)  # (B,)
        positions = torch.arange(input_ids.shape[1], device=mask.device)  # (L,)
        if not torch.equal(mask.bool(), positions[None, :] < lengths[:, None]):
            raise InputMismatchError("the token cache assembles right-padded micro-batches: the data source must "
                                     "collate with right padding (train/sources.py)")
        embeds = thinker.model.get_input_embeddings()(input_ids)  # (B, L, D)
        position_ids = torch.full((3, *input_ids.shape), PADDING_POSITION, dtype=torch.long,
                                  device=input_ids.device)  # (3, B, L)
        for b, index in enumerate(indices):  # B samples (a micro-batch), each a copy of its entry
            sample = self.entry(thinker, index)
            if self.off:  # the first chunk showed that the set does not fit
                return None
            n = sample.input_ids.shape[0]
            if n != int(lengths[b]) or not torch.equal(sample.input_ids, input_ids[b, :n]):
                raise InputMismatchError(f"sample {index} is not the sample cached under that index; the token "
                                         "cache needs a deterministic data source (DataSource.example)")
            embeds[b, :n] = sample.embeds.to(embeds.dtype)
            position_ids[:, b, :n] = sample.position_ids
        return annotate_tokens(embeds, input_ids, mask, position_ids, batch.get("video_grid_thw"), thinker.config)

    def describe(self) -> str:
        """``"<entries> samples, <MiB> MiB, <hit rate> % hits"`` (or why it is off)."""
        if self.off:
            return (f"off: the {self.size} samples need more than train.token_cache_gib="
                    f"{self.budget / 2**30:g} GiB")
        seen = self.hits + self.misses
        rate = 100.0 * self.hits / seen if seen else 0.0
        return f"{len(self.entries)} samples, {self.bytes / 2**20:.0f} MiB, {rate:.0f} % hits"
