"""The ToyWorld backbone: a small Qwen2.5-Omni thinker (the real HF class), its processor, and where it ships.

Config (``toy_config``): text hidden 128, 2 decoder layers, 4 heads (head dim 32), 2 KV heads, FFN 256,
``mrope_section [4, 6, 6]``, rope theta 1e6; vision tower depth 2, hidden 64, patch 14, merge 2, temporal
patch 2; audio tower 2 layers, d_model 64, 128 mel bins, ``n_window`` 100 (attention within 2-s chunks, as
Qwen2.5-Omni). One change to the vision tower makes ToyWorld's video tokens local: ``window_size`` 28 px and
no full-attention block, so each merged video token only sees its own 28 x 28 cell (the real model mixes a
frame's tokens in its full-attention blocks). With it, dropping a video token drops exactly that cell's content
and a benchmark on this backbone measures which tokens a method keeps, not the encoder's redundancy.

The weights (``model.safetensors``, ~3 MB), config and processor files live in ``fusion/assets/toy/`` and are
remade by ``scripts/pretrain_toy.py`` (seeded, step-based).
"""

from __future__ import annotations

from pathlib import Path

from fusion.errors import ModelLoadError

TOY_NAME = "toy"
ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "toy"
VIDEO_WINDOW_PX = 28


def toy_processor():
    """The toy's offline processor: word-level tokenizer with Qwen's specials and chat template, 128-bin
    Whisper features, frames of 4 to 16 merged tokens (56 to 112 px), 2 fps."""
    from fusion.model.loading import tiny_processor

    return tiny_processor()


def toy_config(tokenizer):
    """The toy thinker config (see module doc) around ``tokenizer``."""
    from fusion.model.configs import small_thinker_config

    config = small_thinker_config(tokenizer, hidden=128, layers=2, heads=4, kv_heads=2, mrope_section=[4, 6, 6],
                                  vision_hidden=64, audio_hidden=64)
    config.vision_config.window_size = VIDEO_WINDOW_PX
    config.vision_config.fullatt_block_indexes = []
    return config


def load_toy(directory: str | Path | None = None, dtype=None, attn_implementation: str = "sdpa"):
    """``(model, processor)`` of the pre-trained toy backbone (default: the copy shipped in the package)."""
    from fusion.data.processor import OmniProcessor
    from fusion.model.thinker import CompressedThinker

    directory = Path(directory) if directory is not None else ASSET_DIR
    if not (directory / "model.safetensors").is_file():
        raise ModelLoadError(
            f"no toy backbone in {directory}; remake it with `python scripts/pretrain_toy.py` (see README, ToyWorld)"
        )
    model = CompressedThinker.from_pretrained(str(directory), dtype=dtype, attn_implementation=attn_implementation)
    return model, OmniProcessor.from_pretrained(directory)
