"""OmniZip on hand-built layouts: golden keep sets known by construction, the paper's arithmetic, budget rules."""

from __future__ import annotations

import pytest
import torch
from av_layouts import build_tokens, ranks_kept

from fusion import METHODS
from fusion.errors import MethodConfigError, MissingModalityError, RetentionError
from fusion.pruners.omnizip_audio import AudioChoice, consolidate_anchors, select_audio
from fusion.pruners.omnizip_budget import Layout, nominal_retention, solve_rhos
from fusion.pruners.omnizip_video import dpc_knn_scores, isolation_scores, top_per_row
from fusion.pruners.omnizip_windows import core_plan, normalise_ratios

E = torch.eye(64)
EPS = 0.1


@pytest.fixture(scope="module")
def config(tiny):
    return tiny[0].config


def clusters(sizes: list[int], perm: torch.Tensor, base: int = 0) -> tuple[torch.Tensor, list[int]]:
    """Tight clusters (centre e_m, members e_m + 0.1 e_u) placed by ``perm``; returns (tokens, centre places in
    cluster order)."""
    rows, centres, extra = [], [], base + len(sizes)
    for m, size in enumerate(sizes):
        centres.append(len(rows))
        rows.append(E[base + m])
        for _ in range(size - 1):
            rows.append(E[base + m] + EPS * E[extra])
            extra += 1
    tokens = torch.stack(rows)[perm.argsort()]  # token i goes to place perm[i]
    return tokens, [int(perm[c]) for c in centres]


def changed(frame: torch.Tensor, places: list[int], base: int) -> torch.Tensor:
    """A copy of ``frame`` with the tokens at ``places`` replaced by fresh orthogonal directions."""
    out = frame.clone()
    for j, p in enumerate(places):
        out[p] = E[base + j]
    return out


# ---------------------------------------------------------------- audio
def test_audio_selection_golden():
    """scores 7i mod 20: the 6 lowest (rho_a 0.3 -> keep round(14)) are i = 0,3,6,9,12,15; 2 anchors every 3rd."""
    scores = torch.tensor([(7 * i) % 20 for i in range(20)], dtype=torch.float)
    choice = select_audio(scores, 0.3, 0.1, make_anchors=True)
    dropped = [0, 3, 6, 9, 12, 15]
    assert choice.anchors.tolist() == [0, 9]
    assert choice.pool.tolist() == [3, 6, 12, 15]
    assert choice.keep.nonzero().flatten().tolist() == sorted(set(range(20)) - set(dropped) | {0, 9})
    assert not select_audio(scores, 0.3, 0.1, make_anchors=False).keep[[0, 9]].any()


@pytest.mark.parametrize("n, kept", [(5, 4), (15, 10)])  # round(3.5) = 4, round(10.5) = 10: Python's half-to-even
def test_audio_dominant_count_uses_python_round(n, kept):
    choice = select_audio(torch.arange(n, dtype=torch.float), 0.3, 0.0, make_anchors=True)
    assert int(choice.keep.sum()) == kept


def _merge_case():
    d = 8
    e = torch.eye(d)
    audio = torch.stack([e[0], e[1], e[0] + 0.3 * e[2], e[0] + 0.2 * e[3], e[1] + 0.3 * e[2]])  # 2 anchors, 3 pool
    video = torch.stack([e[2], 5 * e[3], -e[4]])
    choice = AudioChoice(torch.tensor([True, True, False, False, False]), torch.tensor([0, 1]), torch.tensor([2, 3, 4]))
    return audio, video, choice


def test_anchor_consolidation_golden():
    """Pool tokens 2,3 are nearest anchor 0, token 4 nearest anchor 1; s_j = max_v cos(A_j, V_v)."""
    audio, video, choice = _merge_case()
    s2, s3 = 0.3 / 1.09 ** 0.5, 0.2 / 1.04 ** 0.5  # cos with e2 and with e3
    one = consolidate_anchors(audio, video, choice, g=1)  # top-1 per anchor: token 2 (s2 > s3), token 4
    torch.testing.assert_close(one[0], (audio[0] + audio[2]) / 2)
    torch.testing.assert_close(one[1], (audio[1] + audio[4]) / 2)
    two = consolidate_anchors(audio, video, choice, g=2)
    w = torch.softmax(torch.tensor([s2, s3]), 0)
    torch.testing.assert_close(two[0], (audio[0] + w[0] * audio[2] + w[1] * audio[3]) / 2)
    torch.testing.assert_close(two[1], (audio[1] + audio[4]) / 2)
    assert consolidate_anchors(audio, video, choice, g=0) is None


def test_anchor_consolidation_without_video_scores_against_the_anchor():
    """No video: s_j = cos(A_j, its anchor) -> token 3 (1/sqrt(1.04)) beats token 2 (1/sqrt(1.09))."""
    audio, _, choice = _merge_case()
    one = consolidate_anchors(audio, None, choice, g=1)
    torch.testing.assert_close(one[0], (audio[0] + audio[3]) / 2)


def test_cross_modal_score_is_chunked(monkeypatch):
    """The max over all video tokens gives the same merge with a 64-entry block budget (bounded memory)."""
    import fusion.pruners.omnizip_audio as oa

    g = torch.Generator().manual_seed(0)
    audio, video = torch.randn(60, 16, generator=g), torch.randn(300, 16, generator=g)
    choice = select_audio(torch.rand(60, generator=g), 0.5, 0.1, make_anchors=True)
    full = consolidate_anchors(audio, video, choice, g=3)
    monkeypatch.setattr(oa, "_MAX_ENTRIES", 64)
    torch.testing.assert_close(consolidate_anchors(audio, video, choice, g=3), full)
    rows, cols = oa.unit(audio[:7]), oa.unit(video)
    value, index = oa.max_cosine(rows, cols)
    naive = rows @ cols.T
    torch.testing.assert_close(value, naive.max(1).values)
    assert torch.equal(index, naive.argmax(1))


# ---------------------------------------------------------------- video
def test_dpc_knn_keeps_cluster_centres():
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    frame, centres = clusters([4, 4, 4, 4], perm)
    kept = top_per_row(dpc_knn_scores(frame[None], k=5), torch.tensor([4]))[0]
    assert kept.nonzero().flatten().tolist() == sorted(centres)
    big, centres = clusters([6, 6, 2, 2], perm)  # the two dense clusters' centres beat the small clusters
    kept = top_per_row(dpc_knn_scores(big[None], k=5), torch.tensor([2]))[0]
    assert kept.nonzero().flatten().tolist() == sorted(centres[:2])


def test_frames_are_processed_in_bounded_batches(config, monkeypatch):
    """DPC-KNN holds (frames x tpf x tpf) blocks of at most _MAX_ENTRIES; a 1-frame budget gives the same keep set."""
    import fusion.pruners.omnizip_video as ov

    sample, expected_video = _window_layout(config)
    tokens = build_tokens(config, [sample])
    method = METHODS.build("omnizip", rho_audio=0.5, rho_video=0.8, contextual_ratio=0.04, rho_min=0.75, rho_max=0.875)
    monkeypatch.setattr(ov, "_MAX_ENTRIES", 16 * 16)
    assert ranks_kept(tokens, method(tokens).keep, 0, "video") == expected_video


def test_units_spatial_keeps_the_most_isolated():
    frame = torch.stack([E[0] + 0.01 * E[10 + i] for i in range(8)])
    frame[[1, 6]] = torch.stack([E[1], E[2]])
    kept = top_per_row(isolation_scores(frame[None], k=5), torch.tensor([2]))[0]
    assert kept.nonzero().flatten().tolist() == [1, 6]


def _window_layout(config):
    """2 windows x (2 grids of 16 tokens + 50 audio). Known keep sets, see test_core_pipeline_golden."""
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    g0, c0 = clusters([4, 4, 4, 4], perm)
    g2, c2 = clusters([6, 6, 2, 2], perm)
    g1, g3 = changed(g0, [2, 7, 11, 13], 40), changed(g2, [5, 9], 40)
    big = c2[:2]
    video = torch.cat([g0, g1, g2, g3])
    scores = torch.cat([1 + torch.arange(50) / 1000, torch.arange(50) / 1000])  # window 0's audio dominates
    audio = torch.randn(100, 64, generator=torch.Generator().manual_seed(4))
    expected_video = c0 + [16 + p for p in (2, 7, 11, 13)] + [32 + p for p in big] + [48 + 5, 48 + 9]
    return dict(grid_t=4, side=4, video=video, audio=audio, scores=scores), sorted(expected_video)


def test_core_pipeline_golden(config):
    """Audio: rho_a .5 keeps window 0's 50 tokens + anchors 50, 62, 74, 86 (4 = round(.04 * 100), step 50 // 4).
    S_a = 1 and 4/50 -> rho = .75 and .875 - .125 * .08 = .865 -> 4 and 2 tokens per grid (int(16 (1 - rho))).
    Even grids keep their cluster centres (DPC-KNN), odd grids the places that changed since the previous grid."""
    sample, expected_video = _window_layout(config)
    tokens = build_tokens(config, [sample])
    method = METHODS.build("omnizip", rho_audio=0.5, rho_video=0.8, contextual_ratio=0.04, rho_min=0.75, rho_max=0.875)
    sel = method(tokens)
    assert ranks_kept(tokens, sel.keep, 0, "audio") == list(range(50)) + [50, 62, 74, 86]
    assert ranks_kept(tokens, sel.keep, 0, "video") == expected_video
    assert bool(sel.keep[tokens.attention_mask.bool() & ~tokens.av_mask].all())  # text kept
    # merged embeddings differ from the inputs exactly at the four anchors
    differs = (sel.embeds != tokens.embeds).any(-1)[0]
    anchors = tokens.audio_mask[0].nonzero().flatten()[[50, 62, 74, 86]]
    assert differs.nonzero().flatten().tolist() == anchors.tolist()


def test_units_pipeline_golden(config):
    """Units: 8 raw frames -> 2 groups; a "frame" is half a grid (8 tokens); rho .75 -> int(8 * .25) = 2 each.
    Even half-frames keep their 2 isolated tokens, odd half-frames the 2 places that differ from the half above."""
    halves, expected = [], []
    for h in range(8):
        if h % 2 == 0:
            iso = [(h + 1) % 8, (h + 4) % 8]
            frame = torch.stack([E[0] + 0.01 * E[10 + i] for i in range(8)])
            frame[iso] = torch.stack([E[1 + h], E[20 + h]])
            picks = sorted(iso)
        else:
            picks = sorted([h % 8, (h + 3) % 8])
            frame = changed(halves[-1], picks, 40)
        halves.append(frame)
        expected += [8 * h + p for p in picks]
    sample = dict(grid_t=4, side=4, video=torch.cat(halves), audio=torch.randn(100, 64), scores=torch.rand(100))
    tokens = build_tokens(config, [sample])
    method = METHODS.build("omnizip", rho_audio=0.3, rho_video=0.6, rho_min=0.75, rho_max=0.75, variant="units")
    assert ranks_kept(tokens, method(tokens).keep, 0, "video") == expected


def test_units_tail_group_is_kept_whole(config):
    """6 raw frames (not a multiple of 4): one group of 4 frames + 50 audio, then a tail grid kept whole."""
    g = torch.Generator().manual_seed(5)
    sample = dict(grid_t=3, side=4, video=torch.randn(48, 64, generator=g), audio=torch.randn(75, 64, generator=g),
                  scores=torch.rand(75, generator=g))
    tokens = build_tokens(config, [sample])
    method = METHODS.build("omnizip", rho_audio=0.3, rho_video=0.6, rho_min=0.5, rho_max=0.5, variant="units")
    kept = ranks_kept(tokens, method(tokens).keep, 0, "video")
    assert [r for r in kept if r >= 32] == list(range(32, 48))
    assert len([r for r in kept if r < 32]) == 4 * int(8 * (1 - 0.5))  # 4 half-grid frames of the full group


@pytest.mark.parametrize("variant, anchors", [("core", 0), ("units", 5)])
def test_g0_anchors_core_vs_units(config, variant, anchors):
    """G = 0: core makes no anchors; units still keeps round(c N) anchors (unmerged)."""
    g = torch.Generator().manual_seed(6)
    sample = dict(grid_t=4, side=2, video=torch.randn(16, 64, generator=g), audio=torch.randn(100, 64, generator=g),
                  scores=torch.rand(100, generator=g))
    tokens = build_tokens(config, [sample])
    sel = METHODS.build("omnizip", rho_audio=0.3, rho_video=0.6, g=0, variant=variant)(tokens)
    assert len(ranks_kept(tokens, sel.keep, 0, "audio")) == 70 + anchors
    assert sel.embeds is None


# ---------------------------------------------------------------- the paper's arithmetic and the budget
@pytest.mark.parametrize("rho_a, rho_v, percent", [(0.3, 0.6, 45.2), (0.4, 0.7, 35.2)])
def test_nominal_retention_per_window(rho_a, rho_v, percent):
    """50 audio + 288 video per window: ((1 - rho_a + .05) 50 + (1 - rho_v) 288) / 338."""
    assert round(100 * nominal_retention(Layout(50, 288, 0.05, True), rho_a, rho_v), 1) == percent


def _paper_windows(config, rho_a: float):
    """10 windows of 2 grids x 144 tokens + 50 audio; in every window exactly round((1 - rho_a) 50) audio tokens
    outscore the rest, so the global top-k keeps the same count per window."""
    g = torch.Generator().manual_seed(7)
    top = round((1 - rho_a) * 50)
    local = torch.arange(500) % 50
    scores = torch.where(local < top, 10.0, 0.0) + torch.rand(500, generator=g)
    return dict(grid_t=20, side=12, video=torch.randn(2880, 64, generator=g), audio=torch.randn(500, 64, generator=g),
                scores=scores)


@pytest.mark.parametrize("rho_a, rho_v, audio, video", [
    # rho .3/.6: 350 + 25 anchors; anchors every 6th of the 15 dropped per window -> S_a .76/.74 alternating ->
    # rho0 .446/.454; windows 0/1 keep rho0, the rest scale by 1468.8/1036.8 -> .6318/.6432 (no clipping);
    # grids keep int(144 (1 - rho)) = 79, 78, 53, 51 -> 2 (79 + 78 + 4*53 + 4*51) = 1146.  Nominal 45.2 %.
    (0.3, 0.6, 375, 1146),
    # rho .4/.7: 300 + 25; S_a .66/.64 -> rho0 .486/.494; scaling overshoots rho_max, so the 8 other windows clip at
    # .75 -> 2 (74 + 72 + 8 * 36) = 868 video tokens (more than the nominal 864).  Nominal 35.2 %.
    (0.4, 0.7, 325, 868),
])
def test_measured_retention_on_the_paper_layout(config, rho_a, rho_v, audio, video):
    """Measured through the implementation on 10 windows of 2 x 144 video + 50 audio tokens (hand-derived counts)."""
    tokens = build_tokens(config, [_paper_windows(config, rho_a)])
    keep = METHODS.build("omnizip", rho_audio=rho_a, rho_video=rho_v)(tokens).keep
    assert len(ranks_kept(tokens, keep, 0, "audio")) == audio
    assert len(ranks_kept(tokens, keep, 0, "video")) == video
    nominal = nominal_retention(Layout(500, 2880, 0.05, True), rho_a, rho_v)
    assert abs((audio + video) / 3380 - nominal) < 0.005  # 45.0 % vs 45.2 %, 35.3 % vs 35.2 %


def test_core_budget_keeps_token_weighted_video_ratio(config):
    """rho_a .3: S_a alternates .76/.74 (anchors every 6th dropped token) -> rho0 .446/.454, rescaled without clipping:
    sum rho_i n_i = .6 * 2880, with the min and max windows keeping rho0."""
    tokens = build_tokens(config, [_paper_windows(config, 0.3)])
    choice = select_audio(tokens.extras["audio_attention_global"][0][tokens.audio_mask[0]], 0.3, 0.05, True)
    v_pos, a_pos = tokens.video_mask[0].nonzero().flatten(), tokens.audio_mask[0].nonzero().flatten()
    plan = core_plan(v_pos, a_pos, choice.keep.float(), torch.full((2880,), 144), 0.6, 0.35, 0.75)
    sizes = (plan.ends - plan.starts).double()
    assert sizes.tolist() == [288.0] * 10
    assert abs(float((plan.ratio * sizes).sum()) - 0.6 * 2880) < 1e-6
    expected = torch.tensor([0.75 - 0.4 * 0.76, 0.75 - 0.4 * 0.74], dtype=torch.float64)
    torch.testing.assert_close(plan.ratio[:2], expected)
    assert bool(((plan.ratio > 0.35) & (plan.ratio < 0.75)).all())


def test_normalisation_golden():
    sizes = torch.full((4,), 288.0)
    base = torch.tensor([0.4, 0.5, 0.45, 0.42], dtype=torch.float64)
    out = normalise_ratios(base, sizes, 0.5, 0.35, 0.75)  # no clipping: min/max fixed, others scaled alike
    assert out[:2].tolist() == [0.4, 0.5]
    scale = (0.5 * 4 - 0.9) / 0.87
    torch.testing.assert_close(out[2:], base[2:] * scale)
    assert abs(float((out * sizes).sum() / sizes.sum()) - 0.5) < 1e-9
    clipped = normalise_ratios(base, sizes, 0.6, 0.35, 0.75)  # 0.45 * scale > .75: clipping leaves it short
    assert float(clipped.max()) == 0.75 and float((clipped * sizes).sum()) < 0.6 * 1152 - 1
    assert normalise_ratios(base[:2], sizes[:2], 0.6, 0.35, 0.75).tolist() == [0.4, 0.5]  # <= 2 windows: unchanged
    equal = normalise_ratios(torch.full((4,), 0.45, dtype=torch.float64), sizes, 0.6, 0.35, 0.75)
    torch.testing.assert_close(equal, torch.tensor([0.45, 0.65, 0.65, 0.65], dtype=torch.float64))  # code's quirk


def test_retention_maps_to_the_paper_pair():
    layout = Layout(500, 2880, 0.05, True)
    r = nominal_retention(layout, 0.3, 0.6)
    rho_a, rho_v = solve_rhos(r, layout, None, None, 0.35, 0.75)
    assert abs(rho_a - 0.3) < 1e-9 and abs(rho_v - 0.6) < 1e-9
    assert solve_rhos(1.0, layout, 0.4, None, 0.35, 0.75) == (0.4, 0.7)  # one ratio: the paper's offset
    rho_a, rho_v = solve_rhos(0.40, layout, 0.3, None, 0.35, 0.75)  # rho_a fixed, rho_v solved
    assert abs(nominal_retention(layout, rho_a, rho_v) - 0.40) < 1e-9
    assert solve_rhos(0.452, layout, 0.3, 0.6, 0.35, 0.75) == (0.3, 0.6)  # consistent
    with pytest.raises(MethodConfigError, match="not both"):
        solve_rhos(0.25, layout, 0.3, 0.6, 0.35, 0.75)
    with pytest.raises(RetentionError, match="nominal retention spans"):  # video ratios clip at rho_max = .75
        solve_rhos(0.1, layout, None, None, 0.35, 0.75)


def test_retention_on_single_modality_samples():
    rho_a, rho_v = solve_rhos(0.25, Layout(0, 100, 0.05, True), None, None, 0.35, 0.75)
    assert abs(rho_v - 0.75) < 1e-9  # video only: r = 1 - rho_v, not clipped (no audio guidance)
    rho_a, _ = solve_rhos(0.5, Layout(100, 0, 0.05, True), None, None, 0.35, 0.75)
    assert abs(rho_a - 0.55) < 1e-9  # audio only: r = 1 - rho_a + c


def test_retention_driven_run_matches_nominal(config):
    tokens = build_tokens(config, [_paper_windows(config, 0.3)])
    method = METHODS.build("omnizip", retention=0.4)
    keep = method(tokens).keep
    (rho_a, rho_v), = method.last_rhos
    assert abs(rho_v - rho_a - 0.3) < 1e-9
    assert abs(nominal_retention(Layout(500, 2880, 0.05, True), rho_a, rho_v) - 0.4) < 1e-6
    measured = int(keep[0][tokens.av_mask[0]].sum()) / 3380
    assert 0.4 - 0.01 <= measured <= 0.4 + 0.001


# ---------------------------------------------------------------- batches, modalities, parameters
def test_batch_equals_samples_one_by_one(config):
    g = torch.Generator().manual_seed(8)
    samples = [dict(grid_t=t, side=2, video=torch.randn(4 * t, 64, generator=g),
                    audio=torch.randn(25 * t, 64, generator=g), scores=torch.rand(25 * t, generator=g))
               for t in (4, 7)]
    method = METHODS.build("omnizip", rho_audio=0.3, rho_video=0.6)
    for side in ("right", "left"):
        batch = build_tokens(config, samples, padding_side=side)
        sel = method(batch)
        for b, s in enumerate(samples):
            alone = build_tokens(config, [s])
            one = method(alone)
            for mod in ("audio", "video"):
                assert ranks_kept(batch, sel.keep, b, mod) == ranks_kept(alone, one.keep, 0, mod)
            torch.testing.assert_close(sel.embeds[b][batch.audio_mask[b]], one.embeds[0][alone.audio_mask[0]])


def test_single_modality_fallback_and_error(config):
    g = torch.Generator().manual_seed(9)
    video_only = dict(grid_t=4, side=4, video=torch.randn(64, 64, generator=g), audio=torch.zeros(0, 64),
                      scores=torch.zeros(0))
    audio_only = dict(grid_t=0, side=4, video=torch.zeros(0, 64), audio=torch.randn(100, 64, generator=g),
                      scores=torch.rand(100, generator=g))
    tokens = build_tokens(config, [video_only, audio_only])
    sel = METHODS.build("omnizip", rho_audio=0.3, rho_video=0.6)(tokens)
    assert len(ranks_kept(tokens, sel.keep, 0, "video")) == 4 * int(16 * 0.4)  # every grid at rho_v
    assert len(ranks_kept(tokens, sel.keep, 1, "audio")) == 70 + 5
    assert sel.embeds is not None  # audio-only anchors merged against their anchors
    with pytest.raises(MissingModalityError, match="omnizip"):
        METHODS.build("omnizip", rho_audio=0.3, rho_video=0.6, on_missing="error")(tokens)


def test_text_only_sample_in_a_batch_is_left_alone(config):
    g = torch.Generator().manual_seed(10)
    text_only = dict(grid_t=0, side=2, video=torch.zeros(0, 64), audio=torch.zeros(0, 64), scores=torch.zeros(0),
                     text=5)
    av = dict(grid_t=4, side=2, video=torch.randn(16, 64, generator=g), audio=torch.randn(100, 64, generator=g),
              scores=torch.rand(100, generator=g))
    tokens = build_tokens(config, [text_only, av])
    method = METHODS.build("omnizip", retention=0.5)
    sel = method(tokens)
    assert bool(sel.keep[0][tokens.attention_mask[0].bool()].all())
    assert method.last_rhos[0] is None and method.last_rhos[1] is not None


@pytest.mark.parametrize("params, match", [
    (dict(rho_audio=1.5), "rho_audio"), (dict(g=-1), "g="), (dict(k=0), "k="), (dict(variant="v2"), "variant"),
    (dict(rho_min=0.8, rho_max=0.5), "rho_min"), (dict(audio_scoring="local"), "audio_scoring"),
    (dict(on_missing="skip"), "on_missing"), (dict(contextual_ratio=float("nan")), "contextual_ratio"),
])
def test_bad_parameters(params, match):
    with pytest.raises(MethodConfigError, match=match):
        METHODS.build("omnizip", **params)


def test_identity_and_requires():
    assert METHODS.build("omnizip").requires == frozenset()
    assert METHODS.build("omnizip", retention=0.4).requires == {"audio_attention_global"}
    assert METHODS.build("omnizip", retention=0.4, audio_scoring="window").requires == {"audio_attention_window"}
