"""DyCoke: TTM golden values on hand-built frames, its retention and quirks, the retention mapping, stage 2 (dynamic
KV pruning at decode) against a naive cacheless reference, batches, and end-to-end runs."""

from __future__ import annotations

import math

import pytest
import torch
from naive_llm import causal, deep_tiny, naive_layer, topk_keep

from fusion import METHODS
from fusion.errors import MethodConfigError, MissingModalityError, RetentionError
from fusion.model.hooked_lm import decode_step, run_prefill
from fusion.pruners.dycoke import DyCokeDecodeHook
from fusion.pruners.dycoke_ttm import frame_keep_count, k_for_retention, ttm_keep
from fusion.testing import random_inputs, sample_alone
from fusion.tokens import Modality


def _media(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k != "input_ids"}


def build_frames(n_frames: int, P: int, differ: dict[tuple[int, int], list[int]], seed: int = 0) -> torch.Tensor:
    """``(F, P, 8)`` frames: frame ``j`` copies frame ``i`` (``differ[(i, j)]`` = positions where it is the NEGATED
    copy instead, cosine -1 vs +1 elsewhere). Frames not listed as a target are random."""
    frames = torch.randn(n_frames, P, 8, generator=torch.Generator().manual_seed(seed))
    for (src, dst), positions in sorted(differ.items(), key=lambda kv: kv[0][1]):
        frames[dst] = frames[src]
        frames[dst, positions] = -frames[src, positions]
    return frames


# 8 frames x 10 tokens, K = 0.7 -> a pruned frame keeps floor(0.3 * 10) = 3 tokens: exactly the 3 that differ
DIFFER = {(0, 1): [1, 4, 8], (0, 2): [0, 5, 9], (2, 3): [2, 3, 7], (4, 5): [0, 1, 2], (4, 6): [3, 4, 5],
          (6, 7): [6, 7, 8]}


@pytest.mark.parametrize("quirk", [False, True])
def test_ttm_golden_keeps_exactly_the_tokens_that_differ(quirk):
    keep = ttm_keep(build_frames(8, 10, DIFFER), k=0.7, last_window_quirk=quirk)
    expected = torch.zeros(8, 10, dtype=torch.bool)
    expected[0] = expected[4] = True  # window pivots stay whole
    for (_, dst), positions in DIFFER.items():
        expected[dst, positions] = True
    if quirk:  # range(0, F - 4, 4) = [0]: the last window's frame 6 is never compared with its pivot
        expected[6] = True
    assert torch.equal(keep, expected)


@pytest.mark.parametrize("k", [0.3, 0.5, 0.7])
def test_ttm_retention_on_a_clean_layout(k):
    """Per 4-frame window: 1 whole frame + 3 frames of floor((1-K)P): retention (1 + 3(1-K)) / 4."""
    keep = ttm_keep(torch.randn(8, 10, 8), k=k, last_window_quirk=False)
    assert keep.sum().item() / keep.numel() == pytest.approx((1 + 3 * (1 - k)) / 4, abs=1e-12)
    n = round(10 * (1 - k))
    assert keep.sum(1).tolist() == [10, n, n, n] * 2


def test_last_window_quirk_measured_effect():
    """32 frames at K = 0.7: as coded 15.9 of 32 frame-equivalents are kept (0.497), fixed 0.475."""
    frames = torch.randn(32, 10, 8)
    assert ttm_keep(frames, 0.7, last_window_quirk=True).sum().item() == 159  # 9 whole + 23 x 3
    assert ttm_keep(frames, 0.7, last_window_quirk=False).sum().item() == 152  # 8 whole + 24 x 3


def test_odd_and_short_frame_counts():
    frames = torch.randn(5, 10, 8)
    dropped = ttm_keep(frames, 0.7, odd_frame="drop")
    kept = ttm_keep(frames, 0.7, odd_frame="keep")
    assert not dropped[4].any() and kept[4].all()  # the pair loop never reaches frame 4
    assert torch.equal(dropped[:4], kept[:4]) and dropped[:4].sum(1).tolist() == [10, 3, 3, 3]
    four = torch.randn(4, 10, 8)  # range(0, 0, 4) is empty: with the quirk frame 2 is not compared with frame 0
    assert ttm_keep(four, 0.7, last_window_quirk=True).sum(1).tolist() == [10, 3, 10, 3]
    assert ttm_keep(four, 0.7, last_window_quirk=False).sum(1).tolist() == [10, 3, 3, 3]
    assert ttm_keep(torch.randn(1, 10, 8), 0.7).all()


def test_keep_counts_and_retention_mapping():
    assert frame_keep_count(196, 0.7) == 58 and frame_keep_count(10, 0.7) == 3
    assert k_for_retention(0.475) == pytest.approx(0.7) and frame_keep_count(10, k_for_retention(0.475)) == 3
    assert k_for_retention(1.0) == 0.0 and k_for_retention(0.25) == pytest.approx(1.0)
    assert METHODS.build("dycoke", retention=0.475).k == pytest.approx(0.7)
    with pytest.raises(RetentionError, match="0.25"):
        METHODS.build("dycoke", retention=0.2)
    with pytest.raises(RetentionError, match="either k"):
        METHODS.build("dycoke", retention=0.5, k=0.7)
    for bad in (dict(k=1.5), dict(modalities="audio"), dict(p=1.0), dict(layer=0), dict(stage2_mode="x"),
                dict(odd_frame="x"), dict(audio_frame_tokens=0), dict(threshold=math.nan)):
        with pytest.raises(MethodConfigError):
            METHODS.build("dycoke", **bad)


@torch.no_grad()
def test_video_frames_are_temporal_grids_in_the_sequence(tiny):
    """Hand-built embeddings at the video positions of a real (interleaved A+V) layout: per grid, 4 tokens; K=0.5
    keeps the 2 that differ from the reference frame; audio untouched in the 'video' setting."""
    model = tiny[0]
    inputs = random_inputs(model, seconds=8, batch_size=2, seed=3)  # 8 and 9 grids of 2x2 tokens
    tokens = model.build_tokens(inputs["input_ids"], **_media(inputs))
    expected = tokens.attention_mask.bool().clone()
    for b, n_grids in enumerate((8, 9)):
        differ = {(0, 1): [0, 3], (0, 2): [1, 2], (2, 3): [0, 1], (4, 5): [2, 3], (4, 6): [0, 2], (6, 7): [1, 3]}
        frames = build_frames(n_grids, 4, differ, seed=b)
        pos = (tokens.video_mask[b]).nonzero().flatten().view(n_grids, 4)  # raster order inside each grid
        tokens.embeds[b, pos] = frames.to(tokens.embeds.dtype).repeat(1, 1, 8)  # (F, 4, 64)
        want = torch.zeros(n_grids, 4, dtype=torch.bool)
        want[0] = want[4] = want[6] = True  # pivots; frame 6 whole through the last-window quirk
        for (_, dst), positions in differ.items():
            want[dst, positions] = True
        if n_grids == 9:
            want[6] = False
            want[6, differ[(4, 6)]] = True  # 9 frames: range(0, 5, 4) reaches window 4
            want[8] = False  # odd frame count: the last grid is dropped, as coded
        expected[b, pos] = want
    keep = METHODS.build("dycoke", k=0.5, modalities="video", stage2=False).select(tokens).keep
    assert torch.equal(keep, expected)


@torch.no_grad()
def test_audio_frames_are_runs_of_25_tokens_and_the_tail_stays(tiny):
    model = tiny[0]
    inputs = random_inputs(model, seconds=4.5, seed=5, video=False)  # 112 audio tokens: 4 frames + 12 tail
    tokens = model.build_tokens(inputs["input_ids"], **_media(inputs))
    pos = tokens.audio_mask[0].nonzero().flatten()
    assert pos.numel() == 112
    differ = {(0, 1): list(range(10)), (0, 2): list(range(5, 15)), (2, 3): list(range(15, 25))}
    frames = build_frames(4, 25, differ)
    tokens.embeds[0, pos[:100]] = frames.view(100, 8).repeat(1, 8)
    # floor(0.4 * 25) = 10 per pruned frame; without the quirk the 4-frame window compares frame 2 with frame 0
    keep = METHODS.build("dycoke", k=0.6, stage2=False, last_window_quirk=False).select(tokens).keep
    want = torch.zeros(4, 25, dtype=torch.bool)
    want[0] = True
    for (_, dst), positions in differ.items():
        want[dst, positions] = True
    assert torch.equal(keep[0, pos[:100]], want.flatten())
    assert keep[0, pos[100:]].all()
    assert keep[0, ~tokens.av_mask[0]].all()


@pytest.mark.parametrize("kind", [dict(video=True, audio=False), dict(video=False, audio=True),
                                  dict(video=True, audio=True)], ids=["video", "audio", "av"])
@torch.no_grad()
def test_end_to_end_counts_order_and_generate(tiny, with_method, kind):
    model = with_method("dycoke", k=0.7, stage2=False)
    inputs = random_inputs(model, seconds=4, batch_size=2, seed=6, **kind)
    out = model(**inputs)
    stats = model.last_stats
    # 4 / 5 grids of 4 tokens: [4, 1, 4, 1] (F = 4: no pivot window as coded) and [4, 1, 1, 1, dropped]
    if kind["video"]:
        assert stats.video_after.tolist() == [10, 7]
    if kind["audio"]:  # 4 / 5 frames of 25 tokens, floor(0.3 * 25) = 7
        assert stats.audio_after.tolist() == [25 + 7 + 25 + 7, 25 + 7 + 7 + 7]
    for b in range(2):
        src = out.source_index[b][out.attention_mask[b].bool()]
        assert bool((src[1:] > src[:-1]).all())
    generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3)
    assert torch.equal(generated[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


def test_retention_one_is_the_identity_and_video_mode_needs_video(tiny, with_method, stock):
    model = with_method("dycoke", 1.0)
    inputs = random_inputs(model, seconds=4, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, stock(**inputs).logits, atol=1e-6, rtol=0)
    model = with_method("dycoke", 0.5, modalities="video")
    with pytest.raises(MissingModalityError):
        model(**random_inputs(model, seconds=2, seed=1, video=False))
    model = with_method("dycoke", 0.5)  # stage 2 at layer 3 cannot run on a 2-layer language model
    with pytest.raises(MethodConfigError, match="layer"):
        model.generate(**inputs, max_new_tokens=2)


# ------------------------------------------------------------------------------------------------------ stage 2
def test_stage2_hook_golden_as_coded_and_as_paper():
    modality = torch.tensor([[0, 1, 1, 1, 2, 0]], dtype=torch.int8)  # pool: 4 AV entries, P = 0.5 keeps 2
    r1 = torch.tensor([[0.2, 0.30, 0.05, 0.25, 0.02, 0.18]])
    r3 = torch.tensor([[0.2, 0.01, 0.30, 0.02, 0.29, 0.18]])  # cos with r1 over the pool: low
    expected1 = [[True, True, False, True, False, True]]
    expected3 = [[True, False, True, False, True, True]]
    for mode in ("as_coded", "as_paper"):
        hook = DyCokeDecodeHook(layer=2, p=0.5, threshold=0.9, mode=mode, modalities="audio_video")
        assert hook.decode_keep(r1, modality).tolist() == expected1  # first step: sim = 0 < 0.9
        again = hook.decode_keep(r1 * 2, modality)  # same direction: sim = 1 >= 0.9
        if mode == "as_coded":
            assert again is None  # nothing pruned this step
        else:
            assert again.tolist() == expected1  # the previous set is reused
        assert hook.decode_keep(r3, modality).tolist() == expected3
    video = DyCokeDecodeHook(layer=2, p=0.5, threshold=0.9, mode="as_coded", modalities="video")
    assert video.decode_keep(r1, modality).tolist() == [[True, True, False, False, True, True]]  # 3 V -> keep 1
    never = DyCokeDecodeHook(layer=2, p=0.5, threshold=0.0, mode="as_paper", modalities="audio_video")
    assert never.decode_keep(r1, modality) is None


@pytest.fixture(scope="module")
def deep():
    return deep_tiny()


@pytest.fixture
def dycoke(deep):
    def install(**params):
        deep.set_compressor(METHODS.build("dycoke", **params))
        return deep

    yield install
    deep.set_compressor(METHODS.build("none"))


def _naive_stage2_generate(model, tokens, pruned, layer: int, p: float, steps: int):
    """Cacheless greedy reference (one unpadded sample); returns the logits ``(V,)`` of every step and the rows
    (head-mean eager attention at layer L-1 of each fed-back token over the prompt entries).

    Every step re-runs [prompt; new] through naive eager layers. Layers < L are causal; at layers >= L the row of
    each fed-back token j sees only the prompt entries kept for it (the top floor(N(1-P)) AV entries of ITS row at
    layer L-1, decided when it was the newest token) plus every token up to itself."""
    lm = model.model.language_model
    eos = model.generation_config.eos_token_id
    S = pruned.inputs_embeds.shape[1]
    next_id = int(pruned.position_ids.max()) + 1
    modality = tokens.modality[0, pruned.source_index[0]]
    pool = (modality == Modality.VIDEO) | (modality == Modality.AUDIO)
    n_keep = math.floor(int(pool.sum()) * (1 - p) + 1e-9)
    new, keeps, all_logits, rows = [], [], [], []
    for _ in range(steps):
        ids = torch.tensor(new, dtype=torch.long).view(1, len(new))
        h = torch.cat([pruned.inputs_embeds, model.model.get_input_embeddings()(ids)], dim=1)
        pos = torch.cat([pruned.position_ids, (next_id + torch.arange(len(new)))[None, None].expand(3, 1, -1)], 2)
        cos, sin = lm.rotary_emb(h, pos)
        n, probs = h.shape[1], None
        for i, block in enumerate(lm.layers):  # probs: head-mean attention of the previous layer
            if i == layer and len(keeps) < len(new):
                rows.append(probs[0, n - 1, :S])
                keeps.append(topk_keep(rows[-1], pool, n_keep))
            allowed = causal(n).clone()
            if i >= layer:
                for j, keep in enumerate(keeps):
                    allowed[0, S + j, :S] &= keep
            h, probs = naive_layer(block, h, cos, sin, allowed)
        logits = model.lm_head(lm.norm(h))[0, -1]
        all_logits.append(logits)
        new.append(int(logits.index_fill(0, torch.tensor([eos]), float("-inf")).argmax()))
    return all_logits, rows


class RecordingHook(DyCokeDecodeHook):
    """DyCoke's stage-2 hook that also records the rows the runner hands it."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.rows = []

    def decode_keep(self, row, modality):
        self.rows.append(row[0].clone())
        return super().decode_keep(row, modality)


@pytest.mark.parametrize("mode", ["as_coded", "as_paper"])
@torch.no_grad()
def test_stage2_always_pruning_equals_naive_reference(dycoke, mode):
    """threshold 2 (> any cosine): every decoding step prunes; logits of every step equal the naive reference."""
    model = dycoke(k=0.5, layer=2, p=0.7, threshold=2.0, stage2_mode=mode)
    inputs = random_inputs(model, seconds=4, seed=21)
    steps, eos = 6, model.generation_config.eos_token_id
    out = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps)
    stats = model.last_stats
    pruned = model.compress(inputs["input_ids"], padding_side="left", **_media(inputs))
    tokens = model.last_tokens
    expected, rows = _naive_stage2_generate(model, tokens, pruned, layer=2, p=0.7, steps=steps)
    greedy = [int(x.index_fill(0, torch.tensor([eos]), float("-inf")).argmax()) for x in expected]
    assert out[0, inputs["input_ids"].shape[1]:].tolist() == greedy
    hook = RecordingHook(2, 0.7, 2.0, mode, "audio_video")  # drive the runner step by step: compare values
    state = run_prefill(model, tokens, pruned, hook, "left", use_cache=True)
    logits = model.lm_head(state.hidden[:, -1])
    for step in range(steps):
        if step:
            logits = decode_step(model, tokens, state, hook, torch.tensor([greedy[step - 1]]))
        torch.testing.assert_close(logits[0], expected[step], atol=2e-5, rtol=0)
    for ours, naive in zip(hook.rows, rows, strict=True):  # the one computed row == the eager matrix's row
        torch.testing.assert_close(ours, naive, atol=1e-6, rtol=1e-5)
    n_av = int(stats.decode_av_total[0])
    assert stats.decode_av_kept[0].tolist() == [math.floor(n_av * 0.3 + 1e-9)] * (steps - 1)


@torch.no_grad()
def test_stage2_never_pruning_equals_the_unpruned_decode(dycoke):
    """threshold 0: sim >= 0 always, nothing is pruned; our loop must then reproduce HF generate (stage2 off)."""
    inputs = random_inputs(dycoke(k=0.5, stage2=False), seconds=3, batch_size=2, seed=22)
    plain = dycoke(k=0.5, stage2=False).generate(**inputs, max_new_tokens=6, min_new_tokens=6)
    model = dycoke(k=0.5, layer=2, threshold=0.0)
    hooked = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6)
    assert torch.equal(hooked, plain)
    assert torch.equal(model.last_stats.decode_av_kept, model.last_stats.decode_av_total[:, None].expand(-1, 5))


@torch.no_grad()
def test_stage2_batch_equals_each_alone(dycoke):
    model = dycoke(k=0.5, layer=1, threshold=2.0)
    inputs = random_inputs(model, seconds=3, batch_size=2, seed=23)
    batched = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5)
    width = inputs["input_ids"].shape[1]
    for b in range(2):
        alone = sample_alone(inputs, b)
        single = model.generate(**alone, max_new_tokens=5, min_new_tokens=5)
        assert torch.equal(batched[b, width:], single[0, alone["input_ids"].shape[1]:])
