"""``omnizip``: audio-guided audio-video token compression (Tao et al., "OmniZip", arXiv 2511.14582, CVPR 2026).

Official code: KD-TAO/OmniZip, ``omnizip/omnizip_core.py`` (commit 66ef5d7, the default here) and the older
``omnizip/omnizip_units.py`` (commit 516cbc0, ``variant="units"``), called from the thinker forward of
``omnizip/modeling_qwen2_5_omni.py`` after the TMRoPE ids are computed, before the language model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fusion.errors import InputMismatchError, MethodConfigError
from fusion.pruners.audio_scoring import audio_scores, scoring_key
from fusion.pruners.base import Compressor, require_modality
from fusion.pruners.omnizip_audio import consolidate_anchors, select_audio
from fusion.pruners.omnizip_budget import Layout, solve_rhos
from fusion.pruners.omnizip_video import istc_keep
from fusion.pruners.omnizip_windows import TEMPORAL_PATCH, VideoPlan, core_plan, units_plan
from fusion.pruners.registry import METHODS
from fusion.tokens import AVTokens, Selection

VARIANTS = ("core", "units")
ON_MISSING = ("fallback", "error")


def _ratio(value, name: str, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise MethodConfigError(f"omnizip: {name}={value!r} must be a number in [0, 1] (a PRUNING ratio: the "
                                "fraction removed)")
    return float(value)


def _count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MethodConfigError(f"omnizip: {name}={value!r} must be an integer >= {minimum}")
    return value


def _choice(value, name: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise MethodConfigError(f"omnizip: {name}={value!r} is not one of {list(options)}")
    return value


def plan_keep(video: Tensor, plan: VideoPlan, k: int, variant: str) -> Tensor:
    """``(N_v,)`` keep mask of one sample's video from its plan: ISTC per segment, whole-kept segments as they are.

    Frame ``t`` of a compressed segment starts at ``start + t * tpf`` for ``t < (end - start) // tpf`` (tokens of a
    trailing partial frame are dropped, as in the code) and keeps ``int(tpf * (1 - rho))`` tokens.
    """
    n = video.shape[0]
    device = video.device
    keep = torch.zeros(n, dtype=torch.bool, device=device)
    whole = ~plan.compress
    if bool(whole.any()):  # segments kept whole: mark [start, end) via a difference array
        marks = torch.zeros(n + 1, dtype=torch.long, device=device)
        marks.index_add_(0, plan.starts[whole], torch.ones_like(plan.starts[whole]))
        marks.index_add_(0, plan.ends[whole], -torch.ones_like(plan.ends[whole]))
        keep |= marks.cumsum(0)[:n] > 0
    seg = plan.compress.nonzero().flatten()
    if seg.numel() == 0:
        return keep
    tpf = plan.tpf[seg]  # (S,)
    frames = (plan.ends[seg] - plan.starts[seg]) // tpf  # (S,)
    owner = torch.repeat_interleave(torch.arange(seg.numel(), device=device), frames)  # (F,) segment of each frame
    first = torch.repeat_interleave(frames.cumsum(0) - frames, frames)
    t = torch.arange(owner.numel(), device=device) - first  # (F,) frame index inside its segment
    starts = plan.starts[seg][owner] + t * tpf[owner]  # (F,)
    counts = torch.floor(tpf[owner].double() * (1.0 - plan.ratio[seg][owner])).long()  # (F,) int(tpf * (1 - rho))
    temporal = t % 2 == 1
    for size in torch.unique(tpf).tolist():  # one pass per frame size (one per video)
        rows = tpf[owner] == size
        keep |= istc_keep(video, starts[rows], int(size), counts[rows], temporal[rows], k, variant)
    return keep


@METHODS.register("omnizip")
class OmniZip(Compressor):
    """Audio-guided token compression of interleaved audio-video input (OmniZip).

    Per sample (``A``/``V`` = its audio/video embeddings in sequence order, scores = attention received in the audio
    encoder's last layer):

    1. audio: keep the top ``round((1 - rho_a) N_a)`` tokens by score, plus ``round(c N_a)`` contextual anchors spaced
       evenly over the dropped ones (:func:`~fusion.pruners.omnizip_audio.select_audio`);
    2. anchor consolidation (``G > 0``): each dropped token joins its most similar anchor; each anchor absorbs its
       top-``G`` members by ``s_j = max_v cos(A_j, V_v)`` with softmax weights:
       ``A'_c = (A_c + sum_j w_j A_j) / (1 + sum_j w_j)`` -> returned as ``Selection.embeds``
       (:func:`~fusion.pruners.omnizip_audio.consolidate_anchors`);
    3. per time window ``i``, video pruning ratio from the window's audio retention ``S_a(i)``:
       ``rho_i = clip(rho_max + (rho_min - rho_max) S_a(i))``, rescaled so the discarded video tokens meet
       ``rho_v N_v`` (:mod:`~fusion.pruners.omnizip_windows`);
    4. interleaved spatio-temporal compression in each window, keeping ``int(tpf (1 - rho_i))`` tokens per frame:
       DPC-KNN (``k`` neighbours) on even frames, "changed most since the previous frame" on odd frames
       (:mod:`~fusion.pruners.omnizip_video`).

    Defaults are the paper's / code's: ``rho_a = 0.3, rho_v = 0.6`` (45 % nominal; 35 %: 0.4 / 0.7), ``G = 3`` (15 for
    AVUT), ``c = 0.05``, ``rho_min = 0.35, rho_max = 0.75``, ``k = 5``.

    **Retention.** ``retention=1.0`` with no ratio given is the identity (as for every method). Otherwise the ratios
    come from :func:`~fusion.pruners.omnizip_budget.solve_rhos`: from ``retention`` alone, ``rho_v = rho_a + 0.3``
    (the paper's pairs) is solved per sample so the nominal retention on that sample's layout matches; one ratio
    given -> the other is solved (or, at retention 1.0, set by the same offset); both given -> ``retention`` must be
    1.0 or consistent within 0.01 (``MethodConfigError``). So ``rho_audio=0.3, rho_video=0.6`` is the paper's 45 %
    setting. The ratios used are kept in ``last_rhos`` (one ``(rho_a, rho_v)`` per sample of the last call, None for
    a sample without audio or video tokens).

    **One modality only.** The official forward runs OmniZip only when both are present. Here, with
    ``on_missing="fallback"`` (default), an audio-only sample gets steps 1-2 (scores against the anchors instead of
    video, as the code does without video) and a video-only sample gets step 4 at ``rho_v`` in every window (as the
    code treats windows without audio); ``on_missing="error"`` raises ``MissingModalityError`` instead.

    **Variants.** ``variant="core"`` (default) is ``omnizip_core.py``; ``"units"`` is ``omnizip_units.py``: anchors
    whenever ``c > 0``, half-grid "frames", fixed 4-frame groups, unweighted normalisation, "most isolated tokens"
    instead of density peaks (see :mod:`~fusion.pruners.omnizip_windows`).

    Deviations from the code, all deterministic: ties in top-k go to the earlier token (``torch.topk`` leaves them
    unspecified); similarities are float32; the cross-modal score over all video tokens is computed in chunks; a
    batch is processed sample by sample (the code supports batch size 1).

    Args:
        retention: fraction kept (see **Retention**).
        rho_audio, rho_video: pruning ratios rho_a, rho_v in [0, 1], or None to derive them from ``retention``.
        g: ``G``, tokens merged into each anchor (0 disables consolidation; core then makes no anchors either).
        contextual_ratio: ``c``, anchors per audio token.
        rho_min, rho_max: bounds of the audio-guided video ratio.
        k: DPC-KNN neighbours.
        variant: ``"core"`` or ``"units"``.
        audio_scoring: ``"global"`` (default, as coded) or ``"window"`` (the encoder's own windows).
        on_missing: ``"fallback"`` or ``"error"`` for samples lacking audio or video.
    """

    name = "omnizip"

    def __init__(self, retention: float, rho_audio: float | None = None, rho_video: float | None = None, g: int = 3,
                 contextual_ratio: float = 0.05, rho_min: float = 0.35, rho_max: float = 0.75, k: int = 5,
                 variant: str = "core", audio_scoring: str = "global", on_missing: str = "fallback") -> None:
        self.retention = retention
        self.rho_audio = _ratio(rho_audio, "rho_audio", allow_none=True)
        self.rho_video = _ratio(rho_video, "rho_video", allow_none=True)
        self.g = _count(g, "g", 0)
        self.contextual_ratio = _ratio(contextual_ratio, "contextual_ratio")
        self.rho_min = _ratio(rho_min, "rho_min")
        self.rho_max = _ratio(rho_max, "rho_max")
        if self.rho_min > self.rho_max:
            raise MethodConfigError(f"omnizip: rho_min={rho_min} is above rho_max={rho_max}")
        self.k = _count(k, "k", 1)
        self.variant = _choice(variant, "variant", VARIANTS)
        self.audio_scoring = audio_scoring
        self._key = scoring_key(audio_scoring, self.name)
        self.on_missing = _choice(on_missing, "on_missing", ON_MISSING)
        self.identity = retention >= 1.0 and rho_audio is None and rho_video is None
        self.requires = frozenset() if self.identity else frozenset({self._key})
        self.last_rhos: list[tuple[float, float] | None] = []

    @property
    def makes_anchors(self) -> bool:
        """Core makes anchors only when consolidation is on (``G > 0``); units whenever ``c > 0``."""
        return self.contextual_ratio > 0 and (self.g > 0 or self.variant == "units")

    def select(self, tokens: AVTokens) -> Selection:
        self.last_rhos = []
        if self.identity:
            return tokens.keep_all()
        if self.on_missing == "error":
            require_modality(tokens, self.name, video=True, audio=True)
        if bool(tokens.video_mask.any()) and tokens.video_grid_thw is None:
            raise InputMismatchError("omnizip needs tokens.video_grid_thw to know the tokens per frame of each video")
        scores = audio_scores(tokens, self._key, self.name) if bool(tokens.audio_mask.any()) else None
        keep = tokens.attention_mask.bool() & ~tokens.av_mask  # (B, L) text and specials
        embeds = None
        for b in range(tokens.batch_size):  # one sample at a time; vectorised inside
            v_pos = tokens.video_mask[b].nonzero().flatten()  # (N_v,)
            a_pos = tokens.audio_mask[b].nonzero().flatten()  # (N_a,)
            if v_pos.numel() == 0 and a_pos.numel() == 0:  # a text-only sample: nothing to compress
                self.last_rhos.append(None)
                continue
            layout = Layout(a_pos.numel(), v_pos.numel(), self.contextual_ratio, self.makes_anchors)
            rho_a, rho_v = solve_rhos(self.retention, layout, self.rho_audio, self.rho_video, self.rho_min,
                                      self.rho_max)
            self.last_rhos.append((rho_a, rho_v))
            video = tokens.embeds[b, v_pos]  # (N_v, D)
            audio_keep = torch.zeros(0, dtype=torch.bool, device=keep.device)
            if a_pos.numel():
                choice = select_audio(scores[b, a_pos], rho_a, self.contextual_ratio, self.makes_anchors)
                merged = consolidate_anchors(tokens.embeds[b, a_pos], video if v_pos.numel() else None, choice,
                                             self.g)
                if merged is not None:
                    embeds = tokens.embeds.clone() if embeds is None else embeds
                    embeds[b, a_pos[choice.anchors]] = merged
                audio_keep = choice.keep
                keep[b, a_pos[audio_keep]] = True
            if v_pos.numel():
                plan = self._plan(tokens, b, v_pos, a_pos, audio_keep, rho_v)
                keep[b, v_pos[plan_keep(video, plan, self.k, self.variant)]] = True
        return Selection(keep=keep, embeds=embeds)

    def _plan(self, tokens: AVTokens, b: int, v_pos: Tensor, a_pos: Tensor, audio_keep: Tensor,
              rho_v: float) -> VideoPlan:
        """The sample's video windows and their ratios (core: position runs; units: fixed groups)."""
        grids = tokens.video_grid_thw.to(v_pos.device)  # (n_videos, 3)
        merge = tokens.spatial_merge_size
        video_index = tokens.video_index[b, v_pos]  # (N_v,)
        if self.variant == "core":
            per_grid = (grids[:, 1] // merge) * (grids[:, 2] // merge)  # (n_videos,)
            return core_plan(v_pos, a_pos, audio_keep.float(), per_grid[video_index], rho_v, self.rho_min,
                             self.rho_max)
        raw_frames = int(grids[torch.unique(video_index), 0].sum()) * TEMPORAL_PATCH
        return units_plan(v_pos.numel(), a_pos.numel(), audio_keep.float(), raw_frames, tokens.chunk_ids, rho_v,
                          self.rho_min, self.rho_max, guided=a_pos.numel() > 0)
