"""What a Qwen2.5-Omni / Qwen3-Omni checkpoint's own files say about its processor (for ``OmniProcessor``).

* family: ``qwen3`` when ``config.json``'s ``model_type`` is ``qwen3_omni_moe(_thinker)`` or
  ``preprocessor_config.json`` names ``Qwen3OmniMoeProcessor``; else ``qwen2_5``;
* video: ``patch_size``, ``temporal_patch_size``, ``merge_size``, ``image_mean``/``image_std`` from
  ``preprocessor_config.json``; the per-frame pixel budgets are the processors' video defaults (128-768 tokens per
  frame, ``128 * f^2`` to ``768 * f^2`` px with ``f = patch_size * merge_size``), which checkpoints do not store (their
  ``min_pixels``/``max_pixels`` are the image processor's);
* audio: Qwen3-Omni's encoder window ``n_window`` (``thinker_config.audio_config``), and 13 temporal ids per second
  (the Qwen3 processor's ``position_id_per_seconds``) instead of 25;
* chat template: ``chat_template.jinja`` / ``chat_template.json`` (processor-level files), used when the tokenizer
  carries none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fusion.data.processor import VideoSettings, qwen3_video_settings

QWEN3_MODEL_TYPES = ("qwen3_omni_moe", "qwen3_omni_moe_thinker")
QWEN3_PROCESSOR = "Qwen3OmniMoeProcessor"


@dataclass
class CheckpointSettings:
    """The processor settings read from a checkpoint (module doc)."""

    family: str
    video: VideoSettings
    position_id_per_seconds: float
    n_window: int
    chat_template: str | None


def _json(name_or_path, filename: str, hub_kwargs: dict) -> dict | None:
    from transformers.utils import cached_file

    found = cached_file(str(name_or_path), filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    return json.loads(Path(found).read_text()) if found else None


def _chat_template(name_or_path, hub_kwargs: dict) -> str | None:
    from transformers.utils import cached_file

    found = cached_file(str(name_or_path), "chat_template.jinja", _raise_exceptions_for_missing_entries=False,
                        **hub_kwargs)
    if found:
        return Path(found).read_text()
    data = _json(name_or_path, "chat_template.json", hub_kwargs)
    return data.get("chat_template") if data else None


def checkpoint_settings(name_or_path, hub_kwargs: dict | None = None) -> CheckpointSettings:
    """Processor settings of the checkpoint at ``name_or_path`` (hub id or local dir; module doc)."""
    hub_kwargs = hub_kwargs or {}
    config = _json(name_or_path, "config.json", hub_kwargs) or {}
    pre = _json(name_or_path, "preprocessor_config.json", hub_kwargs) or {}
    qwen3 = config.get("model_type") in QWEN3_MODEL_TYPES or pre.get("processor_class") == QWEN3_PROCESSOR
    video = qwen3_video_settings() if qwen3 else VideoSettings()
    for key in ("patch_size", "temporal_patch_size", "merge_size"):
        if key in pre:
            setattr(video, key, int(pre[key]))
    for key in ("image_mean", "image_std"):
        if key in pre:
            setattr(video, key, tuple(pre[key]))
    video.min_pixels, video.max_pixels = 128 * video.factor ** 2, 768 * video.factor ** 2
    thinker = config.get("thinker_config", config)
    n_window = int(thinker.get("audio_config", {}).get("n_window", 50))
    return CheckpointSettings(family="qwen3" if qwen3 else "qwen2_5", video=video,
                              position_id_per_seconds=13.0 if qwen3 else 25, n_window=n_window,
                              chat_template=_chat_template(name_or_path, hub_kwargs))
