"""`OmniProcessor`: chat text + decoded frames + 16 kHz audio -> Qwen2.5-Omni thinker inputs.

It produces what ``transformers.Qwen2_5OmniProcessor`` produces (same keys, same patch layout, same
placeholder layout), without needing torchvision, which transformers' video processor requires and which
has no CPU wheel. Video: frames are resized to Qwen's ``smart_resize`` size (PIL bicubic, as the
PIL image processor does), padded to a multiple of ``temporal_patch_size`` by repeating the last frame,
normalised with the CLIP mean/std and flattened into ``(grid_t * grid_h * grid_w, 3 * 2 * 14 * 14)``
patches in Qwen2-VL's merge-window order. Audio: Whisper log-mel features (100 frames per second).
Text: ``<|vision_bos|><|VIDEO|><|vision_eos|>`` (and ``<|audio_bos|><|AUDIO|><|audio_eos|>``) spans of the
rendered chat are replaced, at the id level, by :func:`fusion.model.layout.av_block_ids`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature, WhisperFeatureExtractor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize  # torchvision-free copy

from fusion.errors import InputMismatchError, ModelLoadError
from fusion.model.layout import SpecialIds, audio_tokens_for_frames, av_block_ids

CONFIG_NAME = "omni_processor.json"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
QWEN_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory and "
    "visual inputs, as well as generating text and speech."
)


@dataclass
class VideoSettings:
    """How frames become patches (Qwen2.5-Omni's defaults; pixel budgets are per frame)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    fps: float = 2.0
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @property
    def second_per_grid(self) -> float:
        return self.temporal_patch_size / self.fps


@dataclass
class AudioSettings:
    """Audio front end: 16 kHz mono, Whisper log-mel (hop 160 -> 100 frames per second)."""

    sampling_rate: int = 16000
    num_mel_bins: int = 128
    max_seconds: float = 300.0  # Qwen2.5-Omni's feature extractor pads/truncates to 300 s


def patchify(frames: np.ndarray, settings: VideoSettings) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """``(T, 3, H, W)`` float frames (already resized and normalised) -> patches and ``(grid_t, grid_h, grid_w)``.

    ``T`` is padded to a multiple of ``temporal_patch_size`` by repeating the last frame. Patch rows are
    ordered (t, h-window, w-window, h-in-window, w-in-window) so that each run of ``merge_size**2`` rows is
    one merged LLM token, as in Qwen2-VL's processors.
    """
    tp, ps, m = settings.temporal_patch_size, settings.patch_size, settings.merge_size
    if frames.shape[0] % tp:
        frames = np.concatenate([frames, np.repeat(frames[-1:], tp - frames.shape[0] % tp, axis=0)])
    T, C, H, W = frames.shape
    gt, gh, gw = T // tp, H // ps, W // ps
    x = frames.reshape(gt, tp, C, gh // m, m, ps, gw // m, m, ps)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (gt, gh/m, gw/m, m, m, C, tp, ps, ps)
    return torch.from_numpy(np.ascontiguousarray(x.reshape(gt * gh * gw, C * tp * ps * ps))), (gt, gh, gw)


class OmniProcessor:
    """Turn conversations with one video (and/or audio) per sample into thinker inputs.

    Args:
        tokenizer: a tokenizer with Qwen2.5-Omni's special tokens and a chat template.
        feature_extractor: a ``WhisperFeatureExtractor`` (16 kHz, ``num_mel_bins`` = the audio encoder's).
        video: frame/patch settings.
        audio: audio settings.
        default_system: system prompt used when a conversation has none.
    """

    def __init__(self, tokenizer, feature_extractor, video: VideoSettings | None = None,
                 audio: AudioSettings | None = None, default_system: str = QWEN_SYSTEM_PROMPT,
                 position_id_per_seconds: int = 25, seconds_per_chunk: int = 2) -> None:
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.video = video or VideoSettings()
        self.audio = audio or AudioSettings(num_mel_bins=feature_extractor.feature_size)
        self.default_system = default_system
        self.position_id_per_seconds = position_id_per_seconds
        self.seconds_per_chunk = seconds_per_chunk
        convert = tokenizer.convert_tokens_to_ids
        self.ids = SpecialIds(
            video=convert("<|VIDEO|>"), audio=convert("<|AUDIO|>"), image=convert("<|IMAGE|>"),
            vision_bos=convert("<|vision_bos|>"), vision_eos=convert("<|vision_eos|>"),
            audio_bos=convert("<|audio_bos|>"), audio_eos=convert("<|audio_eos|>"),
        )

    # ------------------------------------------------------------------ text
    def apply_chat_template(self, conversation: list[dict], add_generation_prompt: bool = True) -> str:
        """Render one conversation (Qwen message format) to text with single media placeholders."""
        return self.tokenizer.apply_chat_template(conversation, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  default_system=self.default_system)

    def batch_decode(self, sequences, skip_special_tokens: bool = True) -> list[str]:
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ media
    def frame_size(self, height: int, width: int) -> tuple[int, int]:
        """Qwen's ``smart_resize``: multiples of 28 with the pixel count inside the per-frame budget."""
        v = self.video
        return smart_resize(height, width, factor=v.factor, min_pixels=v.min_pixels, max_pixels=v.max_pixels)

    def preprocess_video(self, frames: np.ndarray) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """``(T, H, W, 3)`` uint8 RGB frames -> patches, grid."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            raise InputMismatchError(f"video frames must be a non-empty (T, H, W, 3) RGB array, got {frames.shape}")
        h, w = self.frame_size(frames.shape[1], frames.shape[2])
        if (h, w) != frames.shape[1:3]:
            frames = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in frames])
        x = frames.astype(np.float32).transpose(0, 3, 1, 2) / 255.0  # (T, 3, H, W)
        mean = np.asarray(self.video.image_mean, dtype=np.float32)[None, :, None, None]
        std = np.asarray(self.video.image_std, dtype=np.float32)[None, :, None, None]
        return patchify((x - mean) / std, self.video)

    def preprocess_audio(self, waveforms: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """16 kHz mono float waveforms -> ``input_features (n, mels, frames)`` and ``feature_attention_mask``."""
        limit = int(self.audio.max_seconds * self.audio.sampling_rate)
        clipped = [np.asarray(w, dtype=np.float32)[:limit] for w in waveforms]
        out = self.feature_extractor(clipped, sampling_rate=self.audio.sampling_rate, padding="longest",
                                     truncation=False, return_attention_mask=True, return_tensors="pt")
        return {"input_features": out["input_features"], "feature_attention_mask": out["attention_mask"]}

    # ------------------------------------------------------------------ everything together
    def __call__(self, text: str | list[str], videos: list[np.ndarray | None] | None = None,
                 audio: list[np.ndarray | None] | None = None, use_audio_in_video: bool = True,
                 padding_side: str = "left") -> BatchFeature:
        """Build a padded batch.

        Args:
            text: rendered chat(s), each with at most one video and one audio placeholder span.
            videos: per sample ``(T, H, W, 3)`` uint8 frames sampled at ``video.fps``, or None.
            audio: per sample 16 kHz mono waveform, or None. With ``use_audio_in_video`` the waveform is the
                video's own track and is interleaved into the video block (a None track gives video only).
            padding_side: ``"left"`` (generation, the processor default) or ``"right"`` (training).
        """
        texts = [text] if isinstance(text, str) else list(text)
        n = len(texts)
        videos = list(videos) if videos is not None else [None] * n
        audio = list(audio) if audio is not None else [None] * n
        if len(videos) != n or len(audio) != n:
            raise InputMismatchError(f"got {n} texts, {len(videos)} videos and {len(audio)} audio tracks; pass one "
                                     "entry (or None) per text")
        pixel, grids, sequences = [], [], []
        waves = [a for a in audio if a is not None]
        feats = self.preprocess_audio(waves) if waves else None
        audio_tokens = iter([] if feats is None else
                            [audio_tokens_for_frames(int(f)) for f in feats["feature_attention_mask"].sum(-1)])
        for t, v, a in zip(texts, videos, audio):
            n_audio = next(audio_tokens) if a is not None else 0
            grid = None
            if v is not None:
                patches, grid = self.preprocess_video(v)
                pixel.append(patches)
                grids.append(grid)
            sequences.append(self._expand(self.tokenizer(t, add_special_tokens=False)["input_ids"], grid, n_audio,
                                          use_audio_in_video))
        batch = self._pad(sequences, padding_side)
        if pixel:
            batch["pixel_values_videos"] = torch.cat(pixel)
            batch["video_grid_thw"] = torch.tensor(grids, dtype=torch.long)
            batch["video_second_per_grid"] = torch.full((len(grids),), self.video.second_per_grid)
        if feats is not None:
            batch.update(feats)
        return BatchFeature(batch)

    def _expand(self, ids: list[int], grid, n_audio: int, use_audio_in_video: bool) -> list[int]:
        """Replace the marker+placeholder spans by the full media block(s)."""
        s = self.ids
        out: list[int] = []
        i = 0
        while i < len(ids):
            span = tuple(ids[i:i + 3])
            if span == (s.vision_bos, s.video, s.vision_eos):
                if grid is None:
                    raise InputMismatchError("the text has a video placeholder but no frames were given for it")
                gt, gh, gw = grid
                block_audio = n_audio if use_audio_in_video else 0
                out += av_block_ids(s, gt, gh * gw // self.video.merge_size ** 2, self.video.second_per_grid,
                                    block_audio, self.position_id_per_seconds, self.seconds_per_chunk)
                n_audio = 0 if use_audio_in_video else n_audio
                i += 3
            elif span == (s.audio_bos, s.audio, s.audio_eos):
                if n_audio == 0:
                    raise InputMismatchError("the text has an audio placeholder but no audio track was given for it")
                out += av_block_ids(s, n_audio=n_audio)
                n_audio = 0
                i += 3
            else:
                out.append(ids[i])
                i += 1
        return out

    def _pad(self, sequences: list[list[int]], padding_side: str) -> dict[str, torch.Tensor]:
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for b, seq in enumerate(sequences):  # one row per sample
            sl = slice(width - len(seq), width) if padding_side == "left" else slice(0, len(seq))
            ids[b, sl] = torch.tensor(seq)
            mask[b, sl] = 1
        return {"input_ids": ids, "attention_mask": mask}

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        self.feature_extractor.save_pretrained(directory)
        settings = {"video": asdict(self.video), "audio": asdict(self.audio), "default_system": self.default_system,
                    "position_id_per_seconds": self.position_id_per_seconds,
                    "seconds_per_chunk": self.seconds_per_chunk}
        (directory / CONFIG_NAME).write_text(json.dumps(settings, indent=2))

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, trust_remote_code: bool = False,
                        **hub_kwargs) -> OmniProcessor:
        """Load ours (saved with :meth:`save_pretrained`) or build one from a Qwen2.5-Omni checkpoint's files.

        ``trust_remote_code`` (off by default) only reaches ``AutoTokenizer``; the other files are JSON."""
        path = Path(name_or_path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code,
                                                      **hub_kwargs)
            feature_extractor = WhisperFeatureExtractor.from_pretrained(str(name_or_path), **hub_kwargs)
        except OSError as e:
            raise ModelLoadError(f"cannot load a processor from {name_or_path!r}: {e}") from e
        if (path / CONFIG_NAME).is_file():
            s = json.loads((path / CONFIG_NAME).read_text())
            return cls(tokenizer, feature_extractor, VideoSettings(**_tuples(s["video"])), AudioSettings(**s["audio"]),
                       s["default_system"], s["position_id_per_seconds"], s["seconds_per_chunk"])
        return cls(tokenizer, feature_extractor, _qwen_video_settings(name_or_path, hub_kwargs),
                   AudioSettings(num_mel_bins=feature_extractor.feature_size))


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _qwen_video_settings(name_or_path, hub_kwargs) -> VideoSettings:
    """Video settings from a Qwen checkpoint's ``preprocessor_config.json`` (pixel budgets: the processor's
    video defaults, 128-768 tokens per frame, which the checkpoint does not store)."""
    from transformers.utils import cached_file

    settings = VideoSettings()
    found = cached_file(str(name_or_path), "preprocessor_config.json", _raise_exceptions_for_missing_entries=False,
                        **hub_kwargs)
    if found:
        cfg = json.loads(Path(found).read_text())
        for key in ("patch_size", "temporal_patch_size", "merge_size"):
            if key in cfg:
                setattr(settings, key, int(cfg[key]))
        for key in ("image_mean", "image_std"):
            if key in cfg:
                setattr(settings, key, tuple(cfg[key]))
    return settings

