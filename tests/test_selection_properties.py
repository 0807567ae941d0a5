"""Property-based tests (hypothesis) of the selection contract, for every registered pre-LLM method.

Each example draws a layout: 1-3 samples padded left or right, each holding video only, audio only, or both
(interleaved in 2-s chunks as with ``use_audio_in_video``, or as two separate blocks), with random durations, frame
sizes and text lengths, and a retention in ``[Case.min_retention, 1]`` (1.0 drawn on purpose). The
:class:`~fusion.tokens.AVTokens` are built directly (:func:`fusion.model.synthetic.synthetic_tokens`: the processor's
token ids, TMRoPE ids from transformers' ``get_rope_index``, the thinker's annotation; random embeddings and
audio-attention scores), so no encoder runs. For every case of ``CASES`` (a method and its parameters) the test asserts:

* a method that needs a modality raises ``MissingModalityError`` when r < 1 and a sample lacks it; otherwise:
* no real text / special token is dropped; at r = 1.0 every real token is kept and ``apply_keep`` returns the batch
  untouched;
* ``apply_keep``: kept tokens in their original order, their TMRoPE ids, ids and embeddings = the full ones gathered,
  no padding kept, the pruned batch padded on the input's side;
* the kept counts follow the method's promised budget (``Case.budget``: ``ceil(r N)`` per modality or joint, per 2-s
  group, per keyframe block, ...; None where the method promises no count, with the reason);
* each row's selection equals that sample's selection alone (the batch is only padding).

``test_every_method_has_a_case`` fails when a registered method has neither a case nor a reason in ``EXCLUDED``.

Examples (hypothesis ``max_examples``, derandomised so every run checks the same examples): ``EXAMPLES`` = 100 per
case of ``test_selection_contract`` (20 cases -> 2000 examples) and 100 for ``test_fastv_prefill_keep_budget``; the
file runs in about 15-20 s on 2 loaded cores (``pytest --hypothesis-show-statistics`` prints the counts and how
many examples hit r = 1.0, a refusal or a missing modality; raise ``EXAMPLES`` locally to search harder).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from av_layouts import stack_tokens
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fusion import METHODS
from fusion.errors import MissingModalityError, RetentionError
from fusion.model.keep import apply_keep
from fusion.model.lm_attention import LM_ATTENTION
from fusion.model.padding import padded_on
from fusion.model.synthetic import synthetic_tokens
from fusion.pruners.budget import Budget, budget_pools
from fusion.pruners.compose import take_samples
from fusion.tokens import AVTokens

EXAMPLES = 100
PROPERTY_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SCORE_KEYS = ("audio_attention_global", "audio_attention_window")  # what the audio-scoring methods may require
KINDS = ("video", "audio", "interleaved", "separate")


# ---------------------------------------------------------------------------------------------- budget checks
def _ceil(n: torch.Tensor, r: float) -> torch.Tensor:
    """The documented count rule, written out here (not imported): ``ceil(r n - 1e-9)`` tokens of a pool of ``n``."""
    return torch.ceil(n.double() * r - 1e-9).long()


def _cells(tokens: AVTokens, keep: torch.Tensor, where: torch.Tensor, cell: torch.Tensor):
    """``(n, kept)`` per (sample, cell) among the ``where`` ``(B, L)`` positions; ``cell`` ``(B, L)`` ints >= 0."""
    b, pos = where.nonzero(as_tuple=True)  # (n,)
    key = b * (int(cell.max()) + 1) + cell[b, pos]
    _, index = torch.unique(key, return_inverse=True)
    return torch.bincount(index), torch.bincount(index, weights=keep[b, pos].double()).long()


def all_kept(modality: str):
    def check(tokens, keep, r):
        pool = tokens.video_mask if modality == "video" else tokens.audio_mask
        assert torch.equal(keep & pool, pool), f"{modality} tokens must all stay"
    return check


def per_pool(budget: str, only: str | None = None):
    """``ceil(r N)`` of every sample's pool: video and audio apart (``modality``) or together (``joint``);
    ``only="audio"``: the audio pool alone (an audio method)."""
    def check(tokens, keep, r):
        pools = [tokens.audio_mask] if only == "audio" else budget_pools(tokens, Budget(budget))
        for pool in pools:
            assert torch.equal((keep & pool).sum(1), _ceil(pool.sum(1), r))
    return check


def per_group(budget: str, pool: str = "av"):
    """``ceil(r n_g)`` of every 2-s time group's pool (its video and its audio apart, or together)."""
    def check(tokens, keep, r):
        where = {"av": tokens.av_mask, "video": tokens.video_mask, "audio": tokens.audio_mask}[pool]
        if not bool(where.any()):
            return
        cell = tokens.time_group.clamp(min=0) * 2 + (tokens.audio_mask.long() if budget == "modality" else 0)
        n, kept = _cells(tokens, keep, where, cell)
        assert torch.equal(kept, _ceil(n, r))
    return check


def segments(n_segments: int):
    """segment_topk: ``S floor(ceil(r N_a) / S)`` audio tokens (the remainder is not kept, as in the paper)."""
    def check(tokens, keep, r):
        if r == 1.0:  # the identity (checked for every method) wins over the segment rule
            return
        n = tokens.audio_mask.sum(1)
        assert torch.equal((keep & tokens.audio_mask).sum(1), n_segments * (_ceil(n, r) // n_segments))
    return check


def frames_keep_one_to_all(tokens, keep, r):
    """vidcom2: every frame (temporal grid of one video) keeps between 1 and all of its ``M`` tokens."""
    if not bool(tokens.video_mask.any()):
        return
    cell = tokens.video_index.clamp(min=0) * 1000 + tokens.grid_place[..., 0].clamp(min=0)
    n, kept = _cells(tokens, keep, tokens.video_mask, cell)
    assert bool((kept >= 1).all()) and bool((kept <= n).all())


def both(*checks):
    def check(tokens, keep, r):
        for c in checks:
            c(tokens, keep, r)
    return check


def on_samples_with(modality: str, check):
    """``check`` on the samples holding ``modality`` only (a pair runs a side only where its modality is)."""
    def run(tokens, keep, r):
        counts = tokens.n_video if modality == "video" else tokens.n_audio
        rows = (counts > 0).nonzero().flatten()
        if rows.numel():
            check(take_samples(tokens, rows), keep[rows], r)
    return run


@dataclass(frozen=True)
class Case:
    """A method with its parameters; ``budget(tokens, keep, r)`` asserts its count promise (None: none promised)."""

    method: str
    params: dict = field(default_factory=dict)
    budget: Callable | None = None
    needs: str | None = None  # "video" / "audio": raises MissingModalityError without it (below r = 1)
    min_retention: float = 0.001
    refuses: type | None = None  # an error the method raises on purpose for a retention < 1 it cannot reach


CASES = {
    "none": Case("none", budget=both(all_kept("video"), all_kept("audio")), min_retention=1.0),  # r = 1.0 only
    "uniform": Case("uniform", budget=per_pool("modality")),
    "uniform-joint": Case("uniform", {"budget": "joint"}, per_pool("joint")),
    "random": Case("random", {"seed": 3}, per_pool("modality")),
    "random-joint": Case("random", {"budget": "joint"}, per_pool("joint")),
    "divprune": Case("divprune", budget=per_group("modality")),
    "divprune-joint": Case("divprune", {"budget": "joint"}, per_group("joint")),
    "xattn": Case("xattn", budget=per_group("modality")),
    "xattn-joint": Case("xattn", {"budget": "joint"}, per_group("joint")),
    "audio_attn": Case("audio_attn", budget=both(per_pool("modality", "audio"), all_kept("video")), needs="audio"),
    "segment_topk": Case("segment_topk", budget=both(segments(10), all_kept("video")), needs="audio"),
    "keyframe": Case("keyframe", budget=both(per_group("modality", "video"), all_kept("audio")), needs="video"),
    # VidCom²'s frame budgets are softmax-allocated and rounded: only 1 <= kept <= M per frame is promised
    "vidcom2": Case("vidcom2", budget=both(frames_keep_one_to_all, all_kept("audio")), needs="video"),
    "pair": Case("pair", budget=both(on_samples_with("video", per_group("modality", "video")),
                                     on_samples_with("audio", per_pool("modality", "audio")))),
    # OmniZip solves its ratios for a NOMINAL retention (rounding per frame and window): no exact count promised;
    # a retention its clipped ratios cannot reach on a layout is refused with a RetentionError naming the range
    "omnizip": Case("omnizip", refuses=RetentionError),
    # DyCoke stage 1 (TTM) promises (1 + 3(1-K))/4 on a clean layout only (last-window quirk, odd frames, audio
    # tails); retention must be >= 0.25. Stage 2 acts while decoding (a stateful hook): tests/test_dycoke.py
    "dycoke": Case("dycoke", budget=None, min_retention=0.25),
    # FastV drops inside the LLM: select keeps everything; its prefill keep is checked in test_fastv_prefill_keep_budget
    "fastv": Case("fastv", budget=both(all_kept("video"), all_kept("audio"))),
    "fusion": Case("fusion", {"dim": 32, "scorer_hidden": 32}, per_pool("joint")),
    "fusion-modality": Case("fusion", {"budget": "modality", "dim": 32, "scorer_hidden": 32}, per_pool("modality")),
    "fusion-allocation": Case("fusion", {"allocation": True, "dim": 32, "scorer_hidden": 32}, per_pool("joint")),
    "attention_oracle": Case("attention_oracle", budget=per_pool("joint")),
    "attention_oracle-modality": Case("attention_oracle", {"budget": "modality"}, per_pool("modality")),
}
EXCLUDED = {
    "evidence_oracle": "needs ToyWorld scene annotations (which tokens hold the evidence), not a random layout",
}


# ---------------------------------------------------------------------------------------------- layouts
@st.composite
def samples(draw) -> dict:
    kind = draw(st.sampled_from(KINDS))
    return dict(
        grid_t=draw(st.integers(1, 6)) if kind != "audio" else 0,  # 1 s per grid
        grid_hw=draw(st.sampled_from([(4, 4), (4, 6), (6, 6)])),  # 4, 6 or 9 merged tokens per grid
        n_audio=draw(st.integers(1, 160)) if kind != "video" else 0,  # 25 per second
        interleaved=kind != "separate",
        prompt_tokens=draw(st.integers(1, 6)),
        question_tokens=draw(st.integers(1, 6)),
        seed=draw(st.integers(0, 2 ** 16)),
    )


def retentions(low: float):
    """Retentions in [low, 1], 1.0 itself in about a quarter of the examples (the identity is a property too)."""
    below = st.floats(min_value=low, max_value=1.0, exclude_max=low < 1.0, allow_nan=False)
    return st.tuples(st.integers(0, 3), below).map(lambda pick: 1.0 if pick[0] == 0 else pick[1])


def _sample_tokens(config, spec: dict) -> AVTokens:
    tokens = synthetic_tokens(config, **spec)
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    for key in SCORE_KEYS:  # attention received in the audio encoder, NaN off audio
        scores = torch.rand(tokens.input_ids.shape, generator=g)
        tokens.extras[key] = torch.where(tokens.audio_mask, scores, torch.full_like(scores, float("nan")))
    tokens.extras[LM_ATTENTION] = torch.rand(tokens.input_ids.shape, generator=g)  # the LLM's attention teacher
    return tokens


@pytest.fixture(scope="module")
def config(tiny):
    return tiny[0].config


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tensors here are tiny: with 2 threads on a loaded 2-core machine, thread hand-offs cost ~100x the math."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_method_has_a_case():
    covered = {case.method for case in CASES.values()} | set(EXCLUDED)
    assert set(METHODS) == covered, f"give these methods a Case (or a reason in EXCLUDED): {set(METHODS) - covered}"


@pytest.mark.parametrize("name", list(CASES))
@PROPERTY_SETTINGS
@given(specs=st.lists(samples(), min_size=1, max_size=3), side=st.sampled_from(["left", "right"]), data=st.data())
def test_selection_contract(config, name, specs, side, data):
    case = CASES[name]
    r = data.draw(retentions(case.min_retention), label="retention")
    alone = [_sample_tokens(config, s) for s in specs]
    tokens = stack_tokens(config, alone, side)
    method = METHODS.build(case.method, retention=r, **case.params)
    counts = {"video": tokens.n_video, "audio": tokens.n_audio}
    if case.needs is not None and r < 1.0 and bool((counts[case.needs] == 0).any()):
        with pytest.raises(MissingModalityError):
            method(tokens)
        event("raised MissingModalityError")
        return
    try:
        selection = method(tokens)
    except Exception as e:  # only the documented refusal, and never at r = 1.0
        if case.refuses is None or r == 1.0 or not isinstance(e, case.refuses):
            raise
        event(f"refused: {type(e).__name__}")
        return
    event("r = 1.0" if r == 1.0 else "r < 1")
    real = tokens.attention_mask.bool()
    keep = selection.keep & real  # (B, L): padding is ignored by contract
    assert not bool((real & ~tokens.av_mask & ~keep).any()), "a text / special token was dropped"
    if r == 1.0:
        assert torch.equal(keep, real), "r = 1.0 must keep every token"
    if case.budget is not None:
        case.budget(tokens, keep, r)
    _check_apply_keep(tokens, selection, keep, side, r)
    for b, single in enumerate(alone):  # the batch is only padding: each row = that sample alone
        assert torch.equal(keep[b][real[b]], method(single).keep[0]), f"row {b} differs from the sample alone"


def _check_apply_keep(tokens: AVTokens, selection, keep: torch.Tensor, side: str, r: float) -> None:
    """Kept order, TMRoPE ids, ids and embeddings gathered from the full batch; no padding; the input's side."""
    pruned = apply_keep(tokens, selection, padding_side=side)
    valid = pruned.attention_mask.bool()  # (B, L')
    assert torch.equal(valid.sum(1), keep.sum(1)), "the pruned batch holds exactly the kept real tokens"
    assert padded_on(pruned.attention_mask, side)
    src = pruned.source_index
    b = torch.arange(src.shape[0])[:, None].expand_as(src)
    assert bool(keep[b[valid], src[valid]].all()), "only kept real tokens reach the LLM"
    later = torch.where(valid, src, torch.full_like(src, -1)).cummax(1).values  # (B, L') running max of sources
    assert bool((src[:, 1:][valid[:, 1:]] > later[:, :-1][valid[:, 1:]]).all()), "kept tokens left their order"
    full = tokens.position_ids[:, b[valid], src[valid]]  # (3, n)
    assert torch.equal(pruned.position_ids[:, valid], full), "TMRoPE ids must be the full ids gathered"
    assert torch.equal(pruned.input_ids[valid], tokens.input_ids[b[valid], src[valid]])
    embeds = tokens.embeds if selection.embeds is None else selection.embeds
    assert torch.equal(pruned.inputs_embeds[valid], embeds[b[valid], src[valid]])
    if r == 1.0 and selection.embeds is None:
        assert pruned.inputs_embeds is tokens.embeds and pruned.attention_mask is tokens.attention_mask


@PROPERTY_SETTINGS
@given(specs=st.lists(samples(), min_size=1, max_size=3), side=st.sampled_from(["left", "right"]),
       r=st.floats(min_value=0.001, max_value=0.999), pool=st.sampled_from(["av", "video", "audio"]))
def test_fastv_prefill_keep_budget(config, specs, side, r, pool):
    """FastV's drop at layer K on a random attention row: ``ceil(r N)`` of the pool, every other real token, no pad."""
    tokens = stack_tokens(config, [_sample_tokens(config, s) for s in specs], side)
    hook = METHODS.build("fastv", retention=r, tokens=pool).llm_hook()
    real = tokens.attention_mask.bool()
    row = torch.rand(real.shape, generator=torch.Generator().manual_seed(len(specs))).masked_fill(~real, 0.0)
    keep = hook.prefill_keep(row, tokens.modality, real)  # (B, L)
    where = {"av": tokens.av_mask, "video": tokens.video_mask, "audio": tokens.audio_mask}[pool]
    assert not bool((keep & ~real).any()), "padding kept"
    assert torch.equal(keep & ~where, real & ~where), "a real token outside the pool was dropped"
    assert torch.equal((keep & where).sum(1), _ceil(where.sum(1), r))
    top = torch.where(keep & where, row, torch.full_like(row, float("inf"))).amin(1)  # (B,) lowest kept score
    rest = torch.where(where & ~keep, row, torch.full_like(row, -float("inf"))).amax(1)  # (B,) best dropped score
    assert bool((top >= rest).all()), "a dropped pool token scored above a kept one"
