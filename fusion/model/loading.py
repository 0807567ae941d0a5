"""`load_model`: one entry point for the tiny random thinker, random weights at real sizes, and real checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, WhisperFeatureExtractor

from fusion.errors import MethodConfigError, ModelLoadError
from fusion.model.configs import REAL_CONFIGS, real_config, tiny_config, tiny_qwen3_config
from fusion.model.qwen3_thinker import CompressedQwen3Thinker
from fusion.model.thinker import CompressedThinker
from fusion.model.toy import LONG_ASSET_DIR, TOY_LONG_NAME, TOY_NAME
from fusion.pruners import METHODS

TINY = "tiny-random"
TINY_QWEN3 = "tiny-random-qwen3"
QWEN3_MODEL_TYPES = ("qwen3_omni_moe", "qwen3_omni_moe_thinker")


def tiny_processor(video=None):
    """The offline processor matching :func:`tiny_config` (word-level tokenizer, 128-bin Whisper features).

    Frames are capped at 4x4 merged tokens per grid (112 px) so tiny clips stay tiny, unless ``video`` (a
    :class:`~fusion.data.processor.VideoSettings`) says otherwise.
    """
    from fusion.data.processor import OmniProcessor, VideoSettings
    from fusion.data.tokenizer import DEFAULT_SYSTEM, build_word_tokenizer

    features = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, n_fft=400)
    video = video or VideoSettings(min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)
    return OmniProcessor(build_word_tokenizer(), features, video, default_system=DEFAULT_SYSTEM)


def tiny_qwen3_processor(video=None):
    """The offline Qwen3-Omni-layout processor matching :func:`tiny_qwen3_config`: the same word-level tokenizer and
    128-bin Whisper features as :func:`tiny_processor`, patch 16 (frames capped at 4x4 merged tokens per grid, 128 px),
    13 audio tokens and 13 time ids per second, audio merged into the video block by time id (what
    ``transformers.Qwen3OmniMoeProcessor`` writes; ``fusion.model.layout_qwen3``)."""
    from fusion.data.processor import OmniProcessor, qwen3_video_settings
    from fusion.data.tokenizer import DEFAULT_SYSTEM, build_word_tokenizer

    features = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, n_fft=400)
    video = video or qwen3_video_settings(min_pixels=4 * 32 * 32, max_pixels=16 * 32 * 32)
    return OmniProcessor(build_word_tokenizer(), features, video, default_system=DEFAULT_SYSTEM,
                         position_id_per_seconds=13, family="qwen3", n_window=50)


def build_random_thinker(config, seed: int = 0, dtype: torch.dtype | None = None,
                         attn_implementation: str = "sdpa") -> CompressedThinker | CompressedQwen3Thinker:
    """A thinker of the real HF class with seeded random weights (Qwen3-Omni for a ``qwen3_omni_moe_thinker``
    config, else Qwen2.5-Omni)."""
    config._attn_implementation = attn_implementation
    cls = CompressedQwen3Thinker if config.model_type in QWEN3_MODEL_TYPES else CompressedThinker
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return model.to(dtype) if dtype is not None else model


def load_pretrained_thinker(name_or_path: str, dtype=None, attn_implementation: str = "sdpa",
                            trust_remote_code: bool = False, **hub_kwargs) -> CompressedThinker:
    """Load only the thinker of a Qwen2.5-/Qwen3-Omni checkpoint (hub id or local dir); the talker is never built.

    A full ``Qwen2_5OmniForConditionalGeneration`` checkpoint stores the thinker under ``thinker.``; transformers'
    own conversion mapping for the thinker class (found through the config's model_type) strips that prefix and
    the talker/token2wav weights are skipped. A thinker-only directory (as
    written by ``save_pretrained``) loads directly.

    ``trust_remote_code`` (off by default) only reaches ``AutoConfig``: the model class is ours, so a checkpoint's
    own Python files are never run unless the caller asks for them.
    """
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **hub_kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"cannot read a config from {name_or_path!r} ({e}); pass a local checkpoint directory, a hub id reachable "
            f"from this machine, '{TINY}', or one of {list(REAL_CONFIGS)} for random weights"
        ) from e
    kwargs = dict(dtype=dtype, attn_implementation=attn_implementation, **hub_kwargs)
    if config.model_type == "qwen2_5_omni":
        # transformers' conversion mapping for the thinker strips the `thinker.` prefix and renames legacy keys
        return CompressedThinker.from_pretrained(name_or_path, config=config.thinker_config, **kwargs)
    if config.model_type == "qwen2_5_omni_thinker":
        return CompressedThinker.from_pretrained(name_or_path, config=config, **kwargs)
    if config.model_type == "qwen3_omni_moe":  # e.g. Qwen/Qwen3-Omni-30B-A3B-Instruct: the thinker only
        return CompressedQwen3Thinker.from_pretrained(name_or_path, config=config.thinker_config, **kwargs)
    if config.model_type == "qwen3_omni_moe_thinker":
        return CompressedQwen3Thinker.from_pretrained(name_or_path, config=config, **kwargs)
    raise ModelLoadError(f"{name_or_path!r} is a {config.model_type!r} checkpoint, not Qwen2.5-Omni or Qwen3-Omni")


def load_model(
    name_or_path: str | Path,
    method: str = "none",
    retention: float | None = None,
    adapter: str | Path | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str = "sdpa",
    device: str | torch.device | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
    **method_kwargs,
):
    """Load a compressed thinker and its processor.

    Args:
        name_or_path: ``"toy"`` (the pre-trained ToyWorld backbone shipped in the package), ``"toy_long"`` (the
            ToyWorld-Long one), ``"tiny-random"``
            (tests), ``"tiny-random-qwen3"`` (tests of Qwen3-Omni, with its offline Qwen3-layout processor),
            ``"qwen2_5_omni_3b"``/``"qwen2_5_omni_7b"``/``"qwen3_omni_30b_a3b"`` or a thinker
            config JSON (random weights at that size, for benchmarks; processor is None), or a hub id /
            local directory of a Qwen2.5-Omni or Qwen3-Omni checkpoint (e.g. ``Qwen/Qwen2.5-Omni-7B``,
            ``Qwen/Qwen3-Omni-30B-A3B-Instruct``: the thinker only, with :class:`~fusion.data.processor.OmniProcessor`
            built from the checkpoint's files in its family's layout).
        method: registry name of the compressor (``fusion.METHODS``); ``"none"`` keeps everything; ``"fusion"``
            is the learned block (untrained without ``adapter``).
        retention: fraction of audio/video tokens kept, in (0, 1]; default 1.0, or with an adapter the
            retention it was trained at.
        adapter: a trained run's adapter directory (``run_dir/adapter``: LoRA + the learned block +
            ``fusion_config.json``); needs ``method="fusion"``. The returned model is then the PEFT-wrapped
            thinker (attributes such as ``last_stats`` and ``generate`` reach the thinker).
        dtype: e.g. ``torch.bfloat16`` on GPU; default fp32.
        attn_implementation: ``"sdpa"`` (default), ``"flash_attention_2"`` or ``"eager"``.
        device: where to put the model.
        seed: seed of random weights.
        trust_remote_code: let a hub checkpoint's own Python code run (its config and tokenizer classes). Off by
            default and never needed for Qwen2.5-Omni (transformers has its classes); the weights are read with
            transformers' safetensors-first loader.
        **method_kwargs: the method's own parameters (e.g. ``budget="joint"``).

    Returns:
        ``(model, processor)``.
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if adapter is not None and (method != "fusion" or method_kwargs):
        raise MethodConfigError(
            f"an adapter holds the trained fusion block and its settings (fusion_config.json): load it with "
            f"method='fusion' and no method parameters (got method={method!r}, parameters {sorted(method_kwargs)}); "
            "only retention may differ from the trained one"
        )
    if adapter is None:  # validate before loading weights
        compressor = METHODS.build(method, retention=1.0 if retention is None else retention, **method_kwargs)
    name = str(name_or_path)
    if name == TOY_NAME:
        from fusion.model.toy import load_toy

        model, processor = load_toy(dtype=dtype, attn_implementation=attn_implementation)
    elif name == TOY_LONG_NAME:
        from fusion.model.toy import load_toy

        model, processor = load_toy(LONG_ASSET_DIR, dtype=dtype, attn_implementation=attn_implementation)
    elif name == TINY:
        processor = tiny_processor()
        model = build_random_thinker(tiny_config(processor.tokenizer), seed, dtype, attn_implementation)
    elif name == TINY_QWEN3:
        processor = tiny_qwen3_processor()
        model = build_random_thinker(tiny_qwen3_config(processor.tokenizer), seed, dtype, attn_implementation)
    elif name in REAL_CONFIGS or name.endswith(".json"):
        model, processor = build_random_thinker(real_config(name), seed, dtype, attn_implementation), None
    else:
        from fusion.data.processor import OmniProcessor

        model = load_pretrained_thinker(name, dtype, attn_implementation, trust_remote_code=trust_remote_code)
        # the checkpoint's own files; the layout (Qwen2.5's chunks or Qwen3's merge) follows its config
        processor = OmniProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
        _check_family(model, processor, name)
    if adapter is not None:
        from fusion.block.adapter import load_adapter

        model = load_adapter(model, adapter, retention=retention)
    else:
        if hasattr(compressor, "bind"):  # the learned block: a trainable submodule at the backbone's width and dtype
            compressor = compressor.bind(model.config).to(dtype=next(model.parameters()).dtype)
        model.set_compressor(compressor)
        hook = model.llm_hook()
        if hook is not None:  # e.g. FastV on Qwen3-Omni: refused now, not at the first request
            model._check_llm_hook(hook)
    if device is not None:
        model.to(device)
    return model.eval(), processor


def _check_family(model, processor, name: str) -> None:
    """A Qwen3 thinker needs the Qwen3 layout and a Qwen2.5 thinker the Qwen2.5 one (a saved processor could differ)."""
    want = "qwen3" if isinstance(model, CompressedQwen3Thinker) else "qwen2_5"
    if processor.family != want:
        raise ModelLoadError(f"{name!r} holds a {type(model).__name__} but its processor files describe the "
                             f"{processor.family!r} layout; save the processor of the same family next to the weights "
                             f"(OmniProcessor(..., family={want!r}).save_pretrained)")
