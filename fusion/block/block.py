"""`FusionBlock`: the learned V<->A fusion block with keep-scores (EchoingPixels-style, light, on a frozen backbone).

Between the projectors and the LLM, for the ``N = N_v + N_a`` audio/video tokens ``x_i`` in R^D::

    h_i   = W_down LN(x_i)                                         (d-space, d << D)
    h     <- FusionLayer(h)  x layers                              (bidirectional cross-attention per 2-s group)
    x'_i  = x_i + gamma * W_up LN(h_i)                             (gamma in R^D starts at exactly 0)
    s_i   = Scorer(x'_i)                                           (keep-score)
    s_i   <- (s_i - mu_m) / sigma_m      over modality m of the sample (when ``standardise``)
    keep  = top-k(s) with k = ceil(r * N) over the joint pool (or ceil(r * N_m) per modality)
    out_i = x'_i * y_i,   y = y_hard + (y_soft - stopgrad(y_soft)) (straight-through; forward value 1 on kept)

With ``allocation`` the pool's budget is first split over its cells (modality x 2-s group) by a learned head and
the top-``k_c`` scores of each cell are kept (``fusion/block/allocation.py``). With ``relaxation: soft`` training
keeps every token and biases its key by ``log y_i`` (a sigmoid soft top-k, ``fusion/block/relaxed.py``), so the LM
loss reaches every score and every cell's budget; evaluation is the hard selection in both cases.

At initialisation ``gamma = 0``, so the fused tokens equal the inputs exactly and the block starts as a pure
learned-score selector. Text tokens are never changed or dropped; kept tokens keep their original TMRoPE ids and
order (``apply_keep`` does the slicing).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor, nn

from fusion.block.allocation import (
    AllocationHead,
    CellLayout,
    cell_means,
    continuous_allocation,
    integer_allocation,
    marginal_keep,
    rank_in_cells,
    topk_within_cells,
)
from fusion.block.config import BaseIdentity, FusionConfig
from fusion.block.cross_attention import CrossAttention
from fusion.block.groups import GroupLayout, question_mask
from fusion.block.relaxed import budget_logits, key_bias
from fusion.block.scorer import Scorer, standardise_within
from fusion.block.split import (
    SplitHead,
    modality_means,
    proportional_distance,
    split_cost,
    split_counts,
    split_keep,
)
from fusion.block.straight_through import straight_through_gate, straight_through_topk
from fusion.errors import MethodConfigError
from fusion.pruners.base import Compressor
from fusion.tokens import AVTokens, Selection


class Gate(nn.Module):
    """``gamma * x`` with ``gamma`` in R^D starting at exactly zero (a submodule rather than a bare parameter of the
    block, so that ZeRO-3's hooks, which gather a module's own parameters around tensor outputs, see it)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width))

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * x


class FusionLayer(nn.Module):
    """One bidirectional step in the d-space (pre-norm, residual)::

        c_v = CA_{v<-a}(LN(h_v), LN(h_a in the window) [; question])
        c_a = CA_{a<-v}(LN(h_a), LN(h_v in the window) [; question])
        h  <- h + c;   h <- h + MLP(LN(h))           (MLP: d -> 4d -> d, GELU)

    Both directions read the same pre-layer states, so the result does not depend on an order of updates.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.video_from_audio = CrossAttention(dim, heads)
        self.audio_from_video = CrossAttention(dim, heads)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, h: Tensor, layout: GroupLayout, question: Tensor | None) -> Tensor:
        """``h (N, d)`` AV states in ``layout.rows`` order, ``question (Q, d)`` or None -> ``(N, d)``."""
        n = self.norm(h)  # (N, d)
        video_rows = layout.is_video.nonzero().squeeze(1)  # (N_v,)
        audio_rows = (~layout.is_video).nonzero().squeeze(1)  # (N_a,)
        packed_v = layout.video.pack(n[video_rows])  # (G, M_v, d)
        packed_a = layout.audio.pack(n[audio_rows])  # (G, M_a, d)
        # keys/values projected once per token, then gathered into the windows (W x fewer projections; k/v have no
        # bias, so empty slots stay 0 as if the zero rows had been projected)
        kv_a, mask_a = layout.window_keys(layout.audio, self.video_from_audio.kv(packed_a))  # (G, W * M_a, 2d)
        kv_v, mask_v = layout.window_keys(layout.video, self.audio_from_video.kv(packed_v))  # (G, W * M_v, 2d)
        if question is not None:
            packed_q = layout.question.pack(self.norm(question))  # (B, M_q, d)
            mask_q = layout.question.mask[layout.group_sample]  # (G, M_q)
            kv_qa = self.video_from_audio.kv(packed_q)[layout.group_sample]  # (G, M_q, 2d)
            kv_qv = self.audio_from_video.kv(packed_q)[layout.group_sample]  # (G, M_q, 2d)
            kv_a, mask_a = torch.cat([kv_a, kv_qa], 1), torch.cat([mask_a, mask_q], 1)
            kv_v, mask_v = torch.cat([kv_v, kv_qv], 1), torch.cat([mask_v, mask_q], 1)
        context = torch.zeros_like(h)  # (N, d)
        if video_rows.numel():
            c_v = self.video_from_audio.attend(packed_v, kv_a, mask_a)  # (G, M_v, d)
            context = context.index_put((video_rows,), layout.video.unpack(c_v))
        if audio_rows.numel():
            c_a = self.audio_from_video.attend(packed_a, kv_v, mask_v)  # (G, M_a, d)
            context = context.index_put((audio_rows,), layout.audio.unpack(c_a))
        h = h + context
        return h + self.mlp(self.mlp_norm(h))


class FusionBlock(nn.Module, Compressor):
    """The learned compressor (see module doc). Installed on a thinker as the submodule ``av_fusion``.

    Args:
        config: hyper-parameters (:class:`FusionConfig`).
        base: the backbone it is built for (its width D; recorded with the adapter).
    """

    name = "fusion"

    def __init__(self, config: FusionConfig, base: BaseIdentity) -> None:
        nn.Module.__init__(self)
        self.config, self.base = config, base
        self.retention = config.retention
        self.method = self._training_free_method(config)
        width, dim = base.hidden_size, config.dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.init_seed)
            if config.fused:
                self.norm_in = nn.LayerNorm(width)
                self.down = nn.Linear(width, dim)
                self.question_in = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim)) \
                    if config.instruction else None
                self.layers = nn.ModuleList(FusionLayer(dim, config.heads) for _ in range(config.layers))
                self.norm_out = nn.LayerNorm(dim)
                self.up = nn.Linear(dim, width)
                self.gate = Gate(width)  # gamma: exactly zero at init -> identity
            self.scorer = Scorer(width, config.scorer_hidden) if config.scorer == "learned" else None
            self.allocator = AllocationHead(width, config.scorer_hidden) if config.allocation else None
            self.splitter = SplitHead(width, config.scorer_hidden, len(config.split_shares)) \
                if config.split == "searched" else None
        self.temperature = config.temperature  # the recipe anneals it (set_temperature)
        self.last_scores: Tensor | None = None  # (B, L) scores of the last call, for inspection
        self.last_cells: CellLayout | None = None  # cells of the last coverage-aware call
        self.last_allocation: Tensor | None = None  # (C,) its budgets: kappa (soft training) or k_c (hard)
        self.last_split_prediction: Tensor | None = None  # (B, S) predicted answer loss per share (grad in training)
        self.last_split_choice: Tensor | None = None  # (B,) index of the chosen video share
        self.forced_split: Tensor | None = None  # (B,) share index the next training forward uses (-1: the head's)

    @staticmethod
    def _training_free_method(config: FusionConfig):
        if config.scorer == "learned":
            return None
        from fusion.pruners import METHODS

        method = METHODS.build(config.scorer, retention=config.retention, **config.scorer_params)
        if method.llm_hook() is not None:
            raise MethodConfigError(
                f"fusion.scorer={config.scorer!r} acts inside the language model, so it cannot choose the block's "
                "tokens; use 'learned' or a pre-LLM method"
            )
        return method

    @property
    def requires(self) -> frozenset[str]:
        """Extra per-token signals the thinker must compute (those of a training-free scorer)."""
        return self.method.requires if self.method is not None else frozenset()

    def set_retention(self, retention: float) -> None:
        """Evaluate at another retention (the weights do not depend on it)."""
        self.config = dataclasses.replace(self.config, retention=retention)
        self.retention = self.config.retention
        self.method = self._training_free_method(self.config)

    def set_temperature(self, temperature: float) -> None:
        """tau of the relaxed selection for the next training steps (the recipe's annealing schedule)."""
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    # ------------------------------------------------------------------ fusion
    def fuse(self, tokens: AVTokens, layout: GroupLayout | None = None) -> Tensor:
        """``(B, L, D)`` embeddings with every AV token replaced by ``x + gamma * W_up LN(h)``; text untouched."""
        cfg = self.config
        layout = layout or GroupLayout.build(tokens, cfg.neighbours, cfg.instruction, self.base.turn_end_token_id)
        b, pos = layout.rows.unbind(1)
        x = tokens.embeds[b, pos]  # (N, D)
        h = self.down(self.norm_in(x))  # (N, d)
        question = None
        if cfg.instruction:
            qb, qpos = layout.question_rows.unbind(1)
            question = self.question_in(tokens.embeds[qb, qpos])  # (Q, d)
        for layer in self.layers:
            h = layer(h, layout, question)
        fused = x + self.gate(self.up(self.norm_out(h)))  # (N, D)
        return tokens.embeds.index_put((b, pos), fused.to(tokens.embeds.dtype))

    # ------------------------------------------------------------------ selection
    def scores(self, embeds: Tensor, tokens: AVTokens) -> Tensor:
        """``(B, L)`` keep-scores of the AV tokens (0 elsewhere, never read)."""
        av = tokens.av_mask
        out = torch.zeros(av.shape, dtype=torch.float32, device=embeds.device)
        out = out.index_put(av.nonzero(as_tuple=True), self.scorer(embeds[av]).float())  # (B, L)
        if self.config.standardise:
            out = standardise_within(out, [tokens.video_mask, tokens.audio_mask])
        return out

    def select(self, tokens: AVTokens) -> Selection:
        return self(tokens)

    def forward(self, tokens: AVTokens) -> Selection:
        """Fuse, score, keep ``ceil(r * N)`` (joint or per modality); return the keep mask and the new embeds."""
        av = tokens.av_mask
        if not bool(av.any()):
            return tokens.keep_all()
        cfg = self.config
        layout = GroupLayout.build(tokens, cfg.neighbours, cfg.instruction, self.base.turn_end_token_id)
        embeds = self.fuse(tokens, layout) if cfg.fused else tokens.embeds  # (B, L, D)
        text = tokens.attention_mask.bool() & ~av
        if self.method is not None:  # a training-free method chooses among the (fused) tokens
            view = copy.copy(tokens)  # shares the cached annotations (time groups, places)
            view.embeds = embeds
            chosen = self.method(view)
            new = chosen.embeds if chosen.embeds is not None else (embeds if self.config.fused else None)
            return Selection(keep=chosen.keep, embeds=new)
        scores = self.scores(embeds, tokens)  # (B, L)
        self.last_scores = scores.detach()
        pools = [av] if cfg.budget == "joint" else [tokens.video_mask, tokens.audio_mask]
        if self.splitter is not None:
            return self._select_split(tokens, embeds, scores, text)
        if not (cfg.allocation or cfg.relaxation == "soft"):
            kept, gate = straight_through_topk(scores, pools, self.retention, self.temperature)
            return Selection(keep=text | kept, embeds=embeds * gate[..., None].to(embeds.dtype))
        return self._select_in_cells(tokens, layout, embeds, scores, pools, text)

    # ------------------------------------------------------------------ coverage-aware / relaxed selection
    def _select_in_cells(self, tokens: AVTokens, layout: GroupLayout, embeds: Tensor, scores: Tensor,
                         pools: list[Tensor], text: Tensor) -> Selection:
        """Split each pool's budget over its cells (``allocation``; else one cell = the whole pool), then keep the
        top-``k_c`` of every cell; in training with ``relaxation: soft``, the soft keep ``y`` as a key bias."""
        cfg = self.config
        cells = CellLayout.build(layout, tokens.batch_size, self.retention, joint=cfg.budget == "joint")
        b, pos = layout.rows.unbind(1)
        s = scores[b, pos]  # (N,)
        if cfg.allocation:
            unit, n_units = cells.token_cell, cells.n_cells  # (N,) cell of each token
            logits = self.allocator(cell_means(embeds[b, pos], unit, n_units),
                                    self._question_means(tokens)[cells.cell_pool_sample(layout)],
                                    cells.cell_is_audio)  # (C,)
            kappa = continuous_allocation(logits.float(), cells)  # (C,) sums to K_p
        else:
            unit, n_units = cells.cell_pool[cells.token_cell], cells.n_pools  # (N,) pool of each token
            kappa = cells.pool_budget.float()
        self.last_cells = cells
        if self.training and torch.is_grad_enabled() and cfg.relaxation == "soft":  # never under no_grad (eval)
            x = budget_logits(s, unit, n_units, kappa, temperature=self.temperature)  # (N,) sigmoid sums to kappa
            self.last_allocation = kappa.detach()
            bias = torch.zeros_like(scores).index_put((b, pos), key_bias(x))  # (B, L) log y
            return Selection(keep=text | tokens.av_mask, embeds=embeds, key_bias=bias)
        if self.training and torch.is_grad_enabled() and cfg.relaxation == "marginal":
            y = marginal_keep(rank_in_cells(s, unit, n_units), unit, kappa)  # (N,) 1 / fraction / 0
            self.last_allocation = kappa.detach()
            kept = torch.zeros_like(text).index_put((b, pos), y > 0)  # (B, L)
            bias = torch.zeros_like(scores).index_put((b, pos), y.clamp(min=1e-3).log())  # (B, L) log y on kept
            gate = straight_through_gate(scores, kept, pools, self.temperature)  # the scores learn through it
            return Selection(keep=text | kept, embeds=embeds * gate[..., None].to(embeds.dtype), key_bias=bias)
        k = integer_allocation(kappa, cells) if cfg.allocation else cells.pool_budget  # (C,) or (P,)
        self.last_allocation = k
        kept = torch.zeros_like(text).index_put((b, pos), topk_within_cells(s, unit, k))  # (B, L)
        if not self.training:
            return Selection(keep=text | kept, embeds=embeds)
        gate = straight_through_gate(scores, kept, pools, self.temperature)  # (B, L) forward 1 on kept
        return Selection(keep=text | kept, embeds=embeds * gate[..., None].to(embeds.dtype))

    # ------------------------------------------------------------------ searched modality split
    def split_prediction(self, tokens: AVTokens, embeds: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, S)`` predicted answer loss of every candidate share and its cost (``fusion/block/split.py``)."""
        # detached: the head learns from the search alone, the fusion layers from the LM loss alone
        video_mean, audio_mean = modality_means(embeds.detach(), tokens.video_mask, tokens.audio_mask)  # (B, D)
        predicted = self.splitter(self._question_means(tokens), video_mean, audio_mean, self.retention).float()
        shares = torch.tensor(self.config.split_shares, device=predicted.device)
        distance = proportional_distance(shares, tokens.video_mask.sum(1), tokens.audio_mask.sum(1))  # (B, S)
        return predicted, split_cost(predicted.detach(), distance, self.config.split_prior)

    def split_counts(self, tokens: AVTokens) -> tuple[Tensor, Tensor]:
        """``(B, S)`` video and audio keep counts of every candidate share at the current retention."""
        shares = torch.tensor(self.config.split_shares, device=tokens.embeds.device)
        return split_counts(shares, tokens.video_mask.sum(1), tokens.audio_mask.sum(1), self.retention)

    def split_candidates(self, tokens: AVTokens) -> list[Selection]:
        """The hard selection of every candidate share, fused and scored once (the trainer's search; no gate)."""
        cfg = self.config
        layout = GroupLayout.build(tokens, cfg.neighbours, cfg.instruction, self.base.turn_end_token_id)
        embeds = self.fuse(tokens, layout) if cfg.fused else tokens.embeds  # (B, L, D)
        scores = self.scores(embeds, tokens)  # (B, L)
        text = tokens.attention_mask.bool() & ~tokens.av_mask
        k_video, k_audio = self.split_counts(tokens)  # (B, S) each
        return [Selection(keep=text | split_keep(scores, tokens.video_mask, tokens.audio_mask, k_video[:, s],
                                                 k_audio[:, s]), embeds=embeds)
                for s in range(k_video.shape[1])]

    def force_split(self, choice: Tensor) -> None:
        """Make the next training forward keep the share ``choice (B,)`` instead of the head's argmax where
        ``choice >= 0`` (the trainer's exploration: the LM and fusion layers also learn on splits the head does not
        pick yet)."""
        self.forced_split = choice.detach().long()

    def _select_split(self, tokens: AVTokens, embeds: Tensor, scores: Tensor, text: Tensor) -> Selection:
        """Keep the top-``k_v`` video and top-``k_a`` audio tokens with the cheapest share (lowest predicted loss), or
        in training the share forced by :meth:`force_split`."""
        predicted, cost = self.split_prediction(tokens, embeds)  # (B, S) each
        choice = cost.argmin(1)  # (B,)
        if self.training and self.forced_split is not None:  # the trainer's exploration, for this forward only
            forced, self.forced_split = self.forced_split.to(choice.device), None
            choice = torch.where(forced >= 0, forced, choice)
        self.last_split_prediction, self.last_split_choice = predicted, choice
        k_video, k_audio = self.split_counts(tokens)  # (B, S)
        pick = choice[:, None]
        kept = split_keep(scores, tokens.video_mask, tokens.audio_mask, k_video.gather(1, pick).squeeze(1),
                          k_audio.gather(1, pick).squeeze(1))  # (B, L)
        if not self.training:
            return Selection(keep=text | kept, embeds=embeds)
        gate = straight_through_gate(scores, kept, [tokens.video_mask, tokens.audio_mask], self.temperature)
        return Selection(keep=text | kept, embeds=embeds * gate[..., None].to(embeds.dtype))

    def _question_means(self, tokens: AVTokens) -> Tensor:
        """``(B, D)`` mean input embedding of each sample's question tokens (0 without a question)."""
        q = question_mask(tokens, self.base.turn_end_token_id).to(tokens.embeds.dtype)  # (B, L)
        total = torch.einsum("bl,bld->bd", q, tokens.embeds)
        return total / q.sum(1, keepdim=True).clamp(min=1)

    def extra_repr(self) -> str:
        c = self.config
        return (f"retention={c.retention}, budget={c.budget}, scorer={c.scorer}, fused={c.fused}, "
                f"instruction={c.instruction}, standardise={c.standardise}, dim={c.dim}, heads={c.heads}, "
                f"layers={c.layers}, neighbours={c.neighbours}, allocation={c.allocation}, relaxation={c.relaxation}, "
                f"split={c.split}")
