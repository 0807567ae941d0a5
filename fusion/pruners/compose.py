"""``pair``: one method for the video tokens and one for the audio tokens, run as one compressor (one config entry,
one table row named e.g. ``keyframe+audio_attn``); and method specs, the form configs use to name a method.

A **method spec** is a registry name (``"keyframe"``), a dict ``{"method": name, "retention": r, **params}``
(``retention`` optional) or an already built compressor. From Python, YAML or ``load_model``::

    METHODS.build("pair", retention=0.25, video={"method": "keyframe", "keyframe": "first"},
                  audio={"method": "audio_attn", "retention": 0.4})
    load_model("tiny-random", method="pair", retention=0.25, video="keyframe", audio="audio_attn")
    load_model("tiny-random", **yaml.safe_load(text))     # text: "method: pair\\nretention: 0.25\\nvideo: ..."

**Combination rule.** Both sides see the whole, unpruned :class:`~fusion.tokens.AVTokens` (so an audio-guided video
method still sees the audio). The video side's ``Selection`` decides the video tokens, the audio side's decides the
audio tokens, text/special/image tokens are always kept::

    keep = text | (keep_video_side & is_video) | (keep_audio_side & is_audio)
    embeds = video side's replacement on video rows, audio side's on audio rows, the original elsewhere

A side that is not modality-specific (``uniform``, ``random``, ``divprune``, ``xattn`` ...) is therefore *masked*:
only its decisions on its own modality count. This is exact for per-modality budgets, which is why a side with
``budget="joint"`` is rejected (:class:`~fusion.errors.MethodConfigError`): its count on one modality would depend
on the other modality's scores, and the masked result would follow neither the side's retention nor the pair's.
In-LLM methods (``llm_hook()`` is not None: FastV, DyCoke stage 2) and nested pairs are rejected too: a pair only
composes pre-LLM selections.

**Budgets.** Each side gets its own retention: by default the pair's ``retention`` for both, overridable per side
with the spec's ``retention`` key (``audio={"method": "audio_attn", "retention": 0.5}``). Each side's count rule is its
own (e.g. ``keyframe`` keeps ``sum_b ceil(r n_b)``, ``segment_topk`` keeps ``S floor(ceil(r N)/S)``), so the measured
per-modality retention, reported by ``model.last_stats`` (video / audio / total), is the figure to quote.
``pair.retentions`` gives the nominal one of each side.

**Missing modality.** A side is run only on the samples that hold its modality (the others have none of its tokens to
decide on), so a pair works on batches that mix audio-video, video-only and audio-only samples even when a side alone
raises :class:`~fusion.errors.MissingModalityError`; a side whose modality is absent from the whole batch is not run.

Defaults: ``video="keyframe"``, ``audio="audio_attn"`` (the research notes' first experiment).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fusion.errors import AVFusionError, MethodConfigError
from fusion.model.keep import check_selection
from fusion.pruners.base import Compressor
from fusion.pruners.budget import Budget
from fusion.pruners.registry import METHODS
from fusion.tokens import AVTokens, Selection


def build_method(spec, retention: float | None = None) -> Compressor:
    """A compressor from a method spec (module doc); ``retention`` is used when the spec does not give one (1.0 if
    neither does)."""
    if isinstance(spec, Compressor):
        return spec
    if isinstance(spec, str):
        return METHODS.build(spec, retention=1.0 if retention is None else retention)
    if isinstance(spec, Mapping):
        params = dict(spec)
        name = params.pop("method", None)
        if not isinstance(name, str):
            raise MethodConfigError(f"a method spec needs a 'method' key naming a registered method (e.g. "
                                    f"{{'method': 'keyframe', 'retention': 0.25}}), got {dict(spec)!r}")
        r = params.pop("retention", retention)
        return METHODS.build(name, retention=1.0 if r is None else r, **params)
    raise MethodConfigError(f"a method spec is a registered name, a dict with a 'method' key, or a Compressor; got "
                            f"{type(spec).__name__} {spec!r}")


def take_samples(tokens: AVTokens, rows: torch.Tensor) -> AVTokens:
    """The samples ``rows`` ``(b,)`` of a batch as their own :class:`AVTokens` (same width; their videos' grids)."""
    grid = None
    if tokens.video_grid_thw is not None:
        index = tokens.video_index[rows]  # (b, L)
        if bool((index >= 0).any()):
            grid = tokens.video_grid_thw[torch.unique(index[index >= 0]).to(tokens.video_grid_thw.device)]
    return AVTokens(
        embeds=tokens.embeds[rows], input_ids=tokens.input_ids[rows], attention_mask=tokens.attention_mask[rows],
        position_ids=tokens.position_ids[:, rows], modality=tokens.modality[rows], special_ids=tokens.special_ids,
        video_grid_thw=grid, spatial_merge_size=tokens.spatial_merge_size,
        position_id_per_seconds=tokens.position_id_per_seconds, seconds_per_chunk=tokens.seconds_per_chunk,
        extras={k: v[rows] for k, v in tokens.extras.items()},
    )


def run_on_modality(side: Compressor, tokens: AVTokens, pool: torch.Tensor) -> Selection | None:
    """``side``'s selection on the samples that hold tokens of ``pool`` ``(B, L)``; rows without any are left at
    "keep all". None when no sample holds any."""
    present = pool.any(1)  # (B,)
    if not bool(present.any()):
        return None
    if bool(present.all()):
        selection = side(tokens)
        check_selection(selection, tokens)
        return selection
    rows = present.nonzero().flatten()
    part = take_samples(tokens, rows)
    selection = side(part)
    check_selection(selection, part)
    keep = tokens.attention_mask.bool().clone()
    keep[rows] = selection.keep
    embeds = None
    if selection.embeds is not None:
        embeds = tokens.embeds.clone()
        embeds[rows] = selection.embeds
    return Selection(keep=keep, embeds=embeds)


def _side(spec, label: str, retention: float) -> Compressor:
    try:
        side = build_method(spec, retention)
    except AVFusionError as err:
        raise type(err)(f"pair ({label} side): {err}") from err
    if isinstance(side, Pair):
        raise MethodConfigError(f"pair: the {label} side is itself a pair ({side.name}); give one method per side")
    if side.llm_hook() is not None:
        raise MethodConfigError(f"pair: the {label} side '{side.name}' acts inside the language model; a pair only "
                                "composes pre-LLM selections (run that method on its own)")
    if getattr(side, "budget", None) is Budget.JOINT:
        raise MethodConfigError(f"pair: the {label} side '{side.name}' has budget='joint', whose {label} count depends "
                                f"on the other modality's scores; use budget='modality' inside a pair")
    return side


@METHODS.register("pair")
class Pair(Compressor):
    """A video method and an audio method as one compressor (module doc for the rules).

    Args:
        retention: default retention of both sides, in (0, 1].
        video: method spec deciding the video tokens (default ``"keyframe"``).
        audio: method spec deciding the audio tokens (default ``"audio_attn"``).

    Attributes:
        name: display name ``"<video method>+<audio method>"`` (e.g. ``keyframe+audio_attn``), for tables.
        retentions: ``{"video": r_v, "audio": r_a}``, each side's nominal retention.
        requires: the union of both sides' requirements.
    """

    name = "pair"

    def __init__(self, retention: float, video="keyframe", audio="audio_attn") -> None:
        self.retention = retention
        self.video = _side(video, "video", retention)
        self.audio = _side(audio, "audio", retention)
        self.name = f"{self.video.name}+{self.audio.name}"
        self.retentions = {"video": self.video.retention, "audio": self.audio.retention}
        self.requires = frozenset(self.video.requires) | frozenset(self.audio.requires)

    def select(self, tokens: AVTokens) -> Selection:
        video, audio = tokens.video_mask, tokens.audio_mask  # (B, L)
        by_video = run_on_modality(self.video, tokens, video)
        by_audio = run_on_modality(self.audio, tokens, audio)
        keep = tokens.attention_mask.bool() & ~tokens.av_mask  # (B, L) text, specials, images
        for selection, pool in ((by_video, video), (by_audio, audio)):
            if selection is not None:
                keep |= selection.keep & pool
        embeds = None
        if any(s is not None and s.embeds is not None for s in (by_video, by_audio)):
            embeds = tokens.embeds
            for selection, pool in ((by_video, video), (by_audio, audio)):
                if selection is not None and selection.embeds is not None:
                    embeds = torch.where(pool[..., None], selection.embeds, embeds)  # (B, L, D)
        return Selection(keep=keep, embeds=embeds)
