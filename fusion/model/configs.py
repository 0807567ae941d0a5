"""Thinker configurations: the tiny random ones for tests, and the published ones shipped in configs/models/
(Qwen2.5-Omni 3B/7B, Qwen3-Omni-30B-A3B)."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import Qwen2_5OmniThinkerConfig, Qwen3OmniMoeThinkerConfig

from fusion.errors import ModelLoadError

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_CONFIG_DIR = REPO_ROOT / "configs" / "models"
REAL_CONFIGS = ("qwen2_5_omni_3b", "qwen2_5_omni_7b", "qwen3_omni_30b_a3b")
QWEN3_CONFIGS = ("qwen3_omni_30b_a3b",)


def special_token_config(tokenizer) -> dict:
    """The thinker config's token-id fields, read from a tokenizer with Qwen's special tokens."""
    ids = tokenizer.convert_tokens_to_ids
    return dict(
        audio_token_index=ids("<|AUDIO|>"), image_token_index=ids("<|IMAGE|>"), video_token_index=ids("<|VIDEO|>"),
        audio_start_token_id=ids("<|audio_bos|>"), audio_end_token_id=ids("<|audio_eos|>"),
        vision_start_token_id=ids("<|vision_bos|>"), vision_end_token_id=ids("<|vision_eos|>"),
        user_token_id=ids("user"), position_id_per_seconds=25, seconds_per_chunk=2,
    )


def small_thinker_config(tokenizer, hidden: int, layers: int, heads: int, kv_heads: int, mrope_section: list[int],
                         vision_hidden: int, audio_hidden: int, ffn_mult: int = 2) -> Qwen2_5OmniThinkerConfig:
    """A small thinker of the real HF class around an offline tokenizer (128 mel bins, patch 14, merge 2)."""
    vocab = -(-len(tokenizer) // 8) * 8
    return Qwen2_5OmniThinkerConfig(
        text_config=dict(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn_mult * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=32768,
            tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=mrope_section),
        ),
        vision_config=dict(
            depth=2, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_heads=4,
            out_hidden_size=hidden, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
            fullatt_block_indexes=[1],
        ),
        audio_config=dict(
            num_mel_bins=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=2 * audio_hidden,
            d_model=audio_hidden, output_dim=hidden, n_window=100, max_source_positions=1500,
        ),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **special_token_config(tokenizer),
    )


def tiny_config(tokenizer) -> Qwen2_5OmniThinkerConfig:
    """The tiny random thinker used by tests: text hidden 64 (2 layers, head dim 16), vision/audio width 32."""
    return small_thinker_config(tokenizer, hidden=64, layers=2, heads=4, kv_heads=2, mrope_section=[2, 3, 3],
                                vision_hidden=32, audio_hidden=32)


def tiny_qwen3_config(tokenizer) -> Qwen3OmniMoeThinkerConfig:
    """The tiny random Qwen3-Omni thinker of tests: MoE text model (hidden 64, 2 layers, 4 experts, 2 active,
    head dim 16, interleaved MRoPE [2, 3, 3]); a 2-layer vision tower (patch 16, merge 2) whose DeepStack taps
    both layers (added after LLM layers 0 and 1); a 2-layer AuT audio encoder (13 tokens per second); 13 ids/s."""
    vocab = -(-len(tokenizer) // 8) * 8
    tokens = special_token_config(tokenizer)
    return Qwen3OmniMoeThinkerConfig(
        text_config=dict(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_experts=4,
            num_experts_per_tok=2, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=32768, tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[2, 3, 3], interleaved=True,
                                 mrope_interleaved=True),
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64, patch_size=16,
            spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64, deepstack_visual_indexes=[0, 1],
        ),
        audio_config=dict(
            num_mel_bins=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64, d_model=32,
            output_dim=64, n_window=50, n_window_infer=800, downsample_hidden_size=16, max_source_positions=1500,
        ),
        audio_token_id=tokens["audio_token_index"], image_token_id=tokens["image_token_index"],
        video_token_id=tokens["video_token_index"], audio_start_token_id=tokens["audio_start_token_id"],
        audio_end_token_id=tokens["audio_end_token_id"], vision_start_token_id=tokens["vision_start_token_id"],
        vision_end_token_id=tokens["vision_end_token_id"], user_token_id=tokens["user_token_id"],
        position_id_per_seconds=13, seconds_per_chunk=2, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def real_config(name_or_file: str | Path) -> Qwen2_5OmniThinkerConfig | Qwen3OmniMoeThinkerConfig:
    """A published thinker config by name (one of :data:`REAL_CONFIGS`) or from a JSON file (its ``model_type``
    picks Qwen2.5-Omni or Qwen3-Omni)."""
    path = Path(name_or_file)
    if not path.suffix == ".json":
        path = MODEL_CONFIG_DIR / f"{name_or_file}.json"
    if not path.is_file():
        raise ModelLoadError(
            f"no thinker config at {path}; use one of {list(REAL_CONFIGS)} or the path of a thinker config.json"
        )
    data = json.loads(path.read_text())
    if data.get("model_type") in ("qwen2_5_omni", "qwen3_omni_moe"):  # a full Omni config: take its thinker part
        data = data["thinker_config"]
    if data.get("model_type") == "qwen3_omni_moe_thinker":
        return Qwen3OmniMoeThinkerConfig(**data)
    return Qwen2_5OmniThinkerConfig(**data)


def scaled_config(name: str = "qwen2_5_omni_3b", text_hidden: int = 1024, text_layers: int = 6, heads: int = 8,
                  kv_heads: int = 2, vision_depth: int = 4, vision_hidden: int = 512, audio_layers: int = 4,
                  audio_hidden: int = 512) -> Qwen2_5OmniThinkerConfig:
    """A published config shrunk in width and depth for CPU runs: same token ids, patching, TMRoPE and vocab,
    head dim 128 (so ``mrope_section`` is unchanged)."""
    config = real_config(name)
    text, vision, audio = config.text_config, config.vision_config, config.audio_config
    text.hidden_size, text.num_hidden_layers = text_hidden, text_layers
    text.num_attention_heads, text.num_key_value_heads = heads, kv_heads
    text.intermediate_size = 4 * text_hidden
    text.layer_types = text.layer_types[:text_layers]
    vision.depth, vision.hidden_size, vision.embed_dim = vision_depth, vision_hidden, vision_hidden
    vision.intermediate_size, vision.out_hidden_size = 2 * vision_hidden, text_hidden
    vision.num_heads = vision_hidden // 64
    vision.fullatt_block_indexes = [i for i in range(vision_depth) if i % 2 == 1]
    audio.encoder_layers = audio.num_hidden_layers = audio_layers
    audio.d_model, audio.encoder_ffn_dim, audio.output_dim = audio_hidden, 4 * audio_hidden, text_hidden
    audio.encoder_attention_heads = audio_hidden // 64
    return config


def scaled_qwen3_config(name: str = "qwen3_omni_30b_a3b", text_hidden: int = 512, text_layers: int = 8, heads: int = 4,
                        kv_heads: int = 2, experts: int = 32, vision_depth: int = 4, vision_hidden: int = 256,
                        audio_layers: int = 4, audio_hidden: int = 256) -> Qwen3OmniMoeThinkerConfig:
    """Qwen3-Omni's published config shrunk for CPU runs: same token ids, patching, interleaved MRoPE, vocab, head dim
    128 and 8 active experts; the expert width shrinks with the decoder (``moe_intermediate_size * D'/D``) and the pool
    to ``experts`` (the active FFN width, not the pool, sets the compute); DeepStack keeps its three taps, on the last
    three vision layers."""
    config = real_config(name)
    text, vision, audio = config.text_config, config.vision_config, config.audio_config
    ratio = text_hidden / text.hidden_size
    text.hidden_size, text.num_hidden_layers = text_hidden, text_layers
    text.num_attention_heads, text.num_key_value_heads = heads, kv_heads
    text.num_experts = experts
    text.moe_intermediate_size = round(text.moe_intermediate_size * ratio)
    text.intermediate_size = round(text.intermediate_size * ratio)
    if getattr(text, "layer_types", None):
        text.layer_types = text.layer_types[:text_layers]
    vision.depth, vision.hidden_size, vision.intermediate_size = vision_depth, vision_hidden, 4 * vision_hidden
    vision.num_heads, vision.out_hidden_size = vision_hidden // 64, text_hidden
    vision.deepstack_visual_indexes = list(range(vision_depth - 3, vision_depth))
    audio.encoder_layers = audio.num_hidden_layers = audio_layers
    audio.d_model, audio.encoder_ffn_dim, audio.output_dim = audio_hidden, 4 * audio_hidden, text_hidden
    audio.encoder_attention_heads = audio_hidden // 64
    return config
