"""OmniZip's time windows and their audio-guided video pruning ratios (one sample at a time).

Two variants, as in KD-TAO/OmniZip:

* ``core`` (``omnizip_core.py``, commit 66ef5d7, the current code): a window is a maximal run of consecutive
  sequence positions of video tokens, paired in order with the runs of audio tokens (the interleaved 2-s layout
  ``[V_0][A_0][V_1][A_1]...``); ISTC frames are temporal grids (``tpf`` merged tokens);
* ``units`` (``omnizip_units.py``, commit 516cbc0, the older code): with ``n_f = 2 * grid_t`` raw frames, a "frame" is
  ``N_v // n_f`` tokens (half a grid); if ``n_f % 4 == 0`` video and audio are cut into ``n_f / 4`` equal groups by
  count, otherwise into groups of 4 frames + 50 audio tokens with the tail video group kept whole.

Both turn the audio retention of a window, ``S_a`` (kept + anchors over audio tokens), into a video pruning ratio
``rho0 = clip(rho_max + (rho_min - rho_max) * S_a, rho_min, rho_max)`` and rescale it to the budget
(:func:`normalise_ratios`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fusion.errors import MethodConfigError

TEMPORAL_PATCH = 2  # raw frames per temporal grid in Qwen2.5-Omni (vision_config.temporal_patch_size)
_TOL = 1e-3  # the code's tolerance on the discard budget


@dataclass
class VideoPlan:
    """Video segments of one sample (ranks among its video tokens) and how each is compressed.

    Attributes:
        starts, ends: ``(W,)`` long, half-open token ranges in sequence order, covering every video token.
        ratio: ``(W,)`` float64 video pruning ratio of each segment.
        compress: ``(W,)`` bool; False keeps the segment whole (too short for a frame, or a units tail group).
        tpf: ``(W,)`` long, tokens per ISTC frame.
    """

    starts: Tensor
    ends: Tensor
    ratio: Tensor
    compress: Tensor
    tpf: Tensor


def runs(positions: Tensor) -> tuple[Tensor, Tensor]:
    """Maximal runs of consecutive values in an ascending ``(N,)`` position list: ``(starts, ends)`` as ranks."""
    if positions.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=positions.device)
        return empty, empty
    breaks = (positions[1:] - positions[:-1] > 1).nonzero().flatten() + 1  # (R-1,)
    starts = torch.cat([breaks.new_zeros(1), breaks])
    ends = torch.cat([breaks, breaks.new_full((1,), positions.numel())])
    return starts, ends


def segment_means(values: Tensor, starts: Tensor, ends: Tensor, empty: float) -> Tensor:
    """``(W,)`` float64 mean of ``values[starts[i]:ends[i]]`` (``empty`` for an empty range), via one cumsum."""
    csum = torch.cat([values.new_zeros(1, dtype=torch.float64), values.double().cumsum(0)])
    n = (ends - starts).double()
    total = csum[ends] - csum[starts]
    return torch.where(n > 0, total / n.clamp(min=1), torch.full_like(n, empty))


def guided_ratios(audio_retention: Tensor, rho_min: float, rho_max: float) -> Tensor:
    """``rho0_i = clip(rho_max + (rho_min - rho_max) * S_a(i), rho_min, rho_max)`` (float64)."""
    return (rho_max + (rho_min - rho_max) * audio_retention.double()).clamp(rho_min, rho_max)


def normalise_ratios(base: Tensor, sizes: Tensor, rho_video: float, rho_min: float, rho_max: float) -> Tensor:
    """Rescale per-window ratios so the discarded video tokens meet ``rho_v * sum(n_i)``, as both variants code it.

    With ``n_i`` = ``sizes`` (core: video tokens of window i; units: 1 per group, i.e. ratio space)::

        target = rho_v * sum_i n_i;   only if W > 2 and |sum_i rho0_i n_i - target| > 1e-3 and sum_i rho0_i n_i > 0:
        m = argmin rho0, M = argmax rho0 (first occurrences; they keep rho0); O = the other windows
        scale = (target - rho0_m n_m - rho0_M n_M) / sum_O rho0_i n_i
        rho_i = clip(rho0_i * scale)                                         for i in O
        d = target - sum_i rho_i n_i;  if |d| > 1e-3: rho_i = clip(rho_i + d / sum_O n_i)   for i in O

    Without clipping the token-weighted ratio ``sum rho_i n_i / sum n_i`` is exactly ``rho_v``; clipping can leave it
    short. When every ``rho0`` is equal, ``m = M`` and window ``m`` is counted twice in ``scale`` (as in the code);
    the residual step still restores the total.
    """
    ratio = base.double().clone()
    sizes = sizes.double()
    w = base.shape[0]
    target = rho_video * float(sizes.sum())
    base_total = float((base * sizes).sum())
    if w <= 2 or float(sizes.sum()) <= 0 or abs(base_total - target) <= _TOL or base_total <= 0:
        return ratio
    lo, hi = int(torch.argmin(base)), int(torch.argmax(base))
    others = torch.ones(w, dtype=torch.bool, device=base.device)
    others[[lo, hi]] = False
    other_total = float((base[others] * sizes[others]).sum())
    if not bool(others.any()) or other_total <= 0:
        return ratio
    fixed = float(base[lo] * sizes[lo] + base[hi] * sizes[hi])
    ratio[others] = (base[others] * ((target - fixed) / other_total)).clamp(rho_min, rho_max)
    diff = target - float((ratio * sizes).sum())
    other_size = float(sizes[others].sum())
    if abs(diff) > _TOL and other_size > 0:
        ratio[others] = (ratio[others] + diff / other_size).clamp(rho_min, rho_max)
    return ratio


def core_plan(video_pos: Tensor, audio_pos: Tensor, audio_keep: Tensor, tpf: Tensor, rho_video: float,
              rho_min: float, rho_max: float) -> VideoPlan:
    """Windows and ratios of the core variant.

    ``g = min(#video runs, #audio runs)``; video run ``i < g`` gets ``rho_i`` from the audio retention of audio run
    ``i`` (:func:`guided_ratios` + :func:`normalise_ratios`, token-weighted), runs ``i >= g`` get ``rho_v``.
    A run shorter than one frame is kept whole. ``tpf``: ``(N_v,)`` tokens per grid of each video token's video.
    """
    v_starts, v_ends = runs(video_pos)
    a_starts, a_ends = runs(audio_pos)
    g = min(v_starts.numel(), a_starts.numel())
    ratio = torch.full((v_starts.numel(),), float(rho_video), dtype=torch.float64, device=video_pos.device)
    if g > 0:
        s_a = segment_means(audio_keep, a_starts[:g], a_ends[:g], empty=0.0)
        base = guided_ratios(s_a, rho_min, rho_max)
        ratio[:g] = normalise_ratios(base, (v_ends[:g] - v_starts[:g]), rho_video, rho_min, rho_max)
    run_tpf = tpf[v_starts] if v_starts.numel() else v_starts
    compress = (v_ends - v_starts) >= run_tpf
    return VideoPlan(v_starts, v_ends, ratio, compress, run_tpf)


def units_plan(n_video: int, n_audio: int, audio_keep: Tensor, raw_frames: int, audio_group: int, rho_video: float,
               rho_min: float, rho_max: float, guided: bool) -> VideoPlan:
    """Groups and ratios of the units variant (see module doc; ratios normalised in ratio space, unweighted).

    Without audio (``guided=False``) every group gets ``rho_v``. ``raw_frames = TEMPORAL_PATCH * grid_t`` summed over
    the sample's videos; ``audio_group`` = audio tokens per 2-s chunk (50).
    """
    device = audio_keep.device
    fpf = n_video // raw_frames if raw_frames else 0  # tokens per "frame" (half a grid)
    if fpf == 0:
        raise MethodConfigError(
            f"omnizip variant 'units' needs at least one video token per raw frame ({n_video} tokens over "
            f"{raw_frames} frames); use variant='core' for such tiny grids"
        )
    if raw_frames % 4 == 0:
        groups = raw_frames // 4
        v_step, a_step = max(1, n_video // groups), max(1, n_audio // groups)
        idx = torch.arange(groups, device=device)
        v_starts, a_starts = idx * v_step, (idx * a_step).clamp(max=n_audio)
        v_ends = torch.where(idx < groups - 1, (idx + 1) * v_step, torch.full_like(idx, n_video))
        a_ends = torch.where(idx < groups - 1, (idx + 1) * a_step, torch.full_like(idx, n_audio)).clamp(max=n_audio)
        compress = (v_ends - v_starts) % 4 == 0
        empty_audio = 0.0
    else:
        v_group = 4 * fpf
        full = min(n_video // v_group, n_audio // audio_group) if guided else n_video // v_group
        idx = torch.arange(full, device=device)
        v_starts, v_ends = idx * v_group, (idx + 1) * v_group
        a_starts, a_ends = idx * audio_group, (idx + 1) * audio_group
        v_ptr, a_ptr = full * v_group, full * audio_group
        tail = None
        if v_ptr < n_video:
            tail = (v_ptr, n_video, a_ptr, n_audio if a_ptr < n_audio else a_ptr)
        elif a_ptr < n_audio:
            tail = (v_ptr, v_ptr, a_ptr, n_audio)
        if tail is not None:
            extra = [torch.tensor([t], dtype=torch.long, device=device) for t in tail]
            v_starts, v_ends = torch.cat([v_starts, extra[0]]), torch.cat([v_ends, extra[1]])
            a_starts, a_ends = torch.cat([a_starts, extra[2]]), torch.cat([a_ends, extra[3]])
        compress = (v_ends - v_starts) == v_group  # the tail group is kept whole
        empty_audio = 1.0  # a group without audio counts as fully retained (-> rho_min)
    if guided:
        base = guided_ratios(segment_means(audio_keep, a_starts, a_ends, empty=empty_audio), rho_min, rho_max)
        ratio = normalise_ratios(base, torch.ones_like(base), rho_video, rho_min, rho_max)
    else:
        ratio = torch.full((v_starts.numel(),), float(rho_video), dtype=torch.float64, device=device)
    return VideoPlan(v_starts, v_ends, ratio, compress, torch.full_like(v_starts, fpf))
