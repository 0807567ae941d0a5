"""The ToyWorld backbone: a small Qwen2.5-Omni thinker (the real HF class), its processor, and where it ships.

Config (``toy_config``): text hidden 128, 3 decoder layers, 4 heads (head dim 32), 2 KV heads, FFN 256,
rope theta 1e6, ``mrope_section [8, 4, 4]``; vision tower depth 2, hidden 64, patch 14, merge 2, temporal patch 2;
audio tower 2 layers, d_model 64, 128 mel bins, ``n_window`` 100 (attention within 2-s chunks, as Qwen2.5-Omni).
Three choices differ from a plain shrink of the real config, each for a reason measured or argued in the README:

* vision ``window_size`` 28 px and no full-attention block: each merged video token sees only its own 28 x 28
  cell (the real model mixes a frame's tokens in its full-attention blocks), so dropping a video token drops
  exactly that cell's content and a benchmark on this backbone measures which tokens a method keeps;
* ``mrope_section [8, 4, 4]``: half of the rotary pairs encode time (the real ratio is [16, 24, 24] of 64), so
  that audio and video tokens of the same second can find each other; the toy frames are only 2 x 2 tokens;
* 3 decoder layers: the cross-modal questions need two hops (a beep token reads the video of its second, the
  answer reads the beep tokens) plus the question's routing.

The weights (``model.safetensors``, 3.4 MB), config and processor files live in ``fusion/assets/toy/`` and are
remade by ``scripts/pretrain_toy.py`` (seeded, step-based).

``toy_long`` is the same thinker for ToyWorld-Long (:mod:`fusion.data.toyworld_long`): 7-px patches (a merged token
covers a 14 x 14 px cell, so an 84-px frame is 6 x 6 = 36 tokens per second, 59 % of the AV tokens against the
audio's 25), a 14-px vision window (again one cell per window); everything else is the toy's, so its pre-training
starts from the toy backbone's weights (all but the vision patch embedding); in ``fusion/assets/toy_long/``, remade by
``scripts/pretrain_toy.py --world long``.
"""

from __future__ import annotations

from pathlib import Path

from fusion.errors import ModelLoadError

TOY_NAME = "toy"
TOY_LONG_NAME = "toy_long"
ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "toy"
LONG_ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "toy_long"
VIDEO_WINDOW_PX = 28
LAYERS = 3
MROPE_SECTION = [8, 4, 4]  # rotary pairs (of 16) for time, height, width
LONG_PATCH_PX = 7


def toy_processor():
    """The toy's offline processor: word-level tokenizer with Qwen's specials and chat template, 128-bin
    Whisper features, frames of 4 to 16 merged tokens (56 to 112 px), 2 fps."""
    from fusion.model.loading import tiny_processor

    return tiny_processor()


def toy_config(tokenizer):
    """The toy thinker config (see module doc) around ``tokenizer``."""
    from fusion.model.configs import small_thinker_config

    config = small_thinker_config(tokenizer, hidden=128, layers=LAYERS, heads=4, kv_heads=2,
                                  mrope_section=MROPE_SECTION, vision_hidden=64, audio_hidden=64)
    config.vision_config.window_size = VIDEO_WINDOW_PX
    config.vision_config.fullatt_block_indexes = []
    return config


def toy_long_processor():
    """The ToyWorld-Long processor: the toy's tokenizer and audio, 7-px patches, frames of 4 to 36 merged tokens
    (28 to 84 px), 2 fps."""
    from fusion.data.processor import VideoSettings
    from fusion.model.loading import tiny_processor

    cell = 2 * LONG_PATCH_PX
    return tiny_processor(VideoSettings(patch_size=LONG_PATCH_PX, min_pixels=4 * cell * cell,
                                        max_pixels=36 * cell * cell))


def toy_long_config(tokenizer):
    """The ToyWorld-Long thinker config (see module doc) around ``tokenizer``."""
    from fusion.model.configs import small_thinker_config

    config = small_thinker_config(tokenizer, hidden=128, layers=LAYERS, heads=4, kv_heads=2,
                                  mrope_section=MROPE_SECTION, vision_hidden=64, audio_hidden=64)
    config.vision_config.patch_size = LONG_PATCH_PX
    config.vision_config.window_size = 2 * LONG_PATCH_PX
    config.vision_config.fullatt_block_indexes = []
    return config


def load_toy(directory: str | Path | None = None, dtype=None, attn_implementation: str = "sdpa"):
    """``(model, processor)`` of the pre-trained toy backbone (default: the copy shipped in the package)."""
    from fusion.data.processor import OmniProcessor
    from fusion.model.thinker import CompressedThinker

    directory = Path(directory) if directory is not None else ASSET_DIR
    if not (directory / "model.safetensors").is_file():
        world = " --world long" if directory.name == LONG_ASSET_DIR.name else ""
        raise ModelLoadError(
            f"no toy backbone in {directory}; remake it with `python scripts/pretrain_toy.py{world}` "
            "(see README, ToyWorld)"
        )
    model = CompressedThinker.from_pretrained(str(directory), dtype=dtype, attn_implementation=attn_implementation)
    return model, OmniProcessor.from_pretrained(directory)
