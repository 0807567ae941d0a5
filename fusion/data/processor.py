"""`OmniProcessor`: chat text + decoded frames + 16 kHz audio -> Qwen2.5-Omni or Qwen3-Omni thinker inputs.

It produces what ``transformers.Qwen2_5OmniProcessor`` (``family="qwen2_5"``) or ``Qwen3OmniMoeProcessor``
(``family="qwen3"``) produces (same keys, same patch layout, same placeholder layout), without needing torchvision,
which transformers' video processors require and which has no CPU wheel. The families differ in four places only:
patch size (14 vs 16, so frame sides are multiples of 28 vs 32), audio tokens per clip (25/s vs 13/s:
:func:`~fusion.model.layout.audio_tokens_for_frames` vs :func:`~fusion.model.layout_qwen3.qwen3_audio_tokens`),
temporal ids per second (25 vs 13) and the audio-in-video block (2-s chunks vs one merge by time id:
:mod:`fusion.model.layout` vs :mod:`fusion.model.layout_qwen3`). ``video_second_per_grid`` is always
``temporal_patch_size / fps`` of the rate the frames were sampled at (the stock Qwen3 processor assumes 1 fps
unless it is told the rate).

Video: frames are resized to Qwen's ``smart_resize`` size (PIL bicubic, as the PIL image processor does), padded
to a multiple of ``temporal_patch_size`` by repeating the last frame,
normalised with the CLIP mean/std and flattened into ``(grid_t * grid_h * grid_w, 3 * 2 * p * p)``
patches in Qwen2-VL's merge-window order. Audio: Whisper log-mel features (100 frames per second).
Text: ``<|vision_bos|><|VIDEO|><|vision_eos|>`` (and ``<|audio_bos|><|AUDIO|><|audio_eos|>``) spans of the
rendered chat are replaced, at the id level, by the family's block ids. Special tokens are read from the
tokenizer's media attributes (``tokenizer.video_token`` ...), so Qwen3's ``<|video_pad|>`` names work as Qwen2.5's.
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
from fusion.model.layout_qwen3 import qwen3_audio_tokens, qwen3_av_block_ids

CONFIG_NAME = "omni_processor.json"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FAMILIES = ("qwen2_5", "qwen3")
#: tokenizer attribute -> the Qwen2.5-Omni token it defaults to
MEDIA_TOKENS = {"video_token": "<|VIDEO|>", "audio_token": "<|AUDIO|>", "image_token": "<|IMAGE|>",
                "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
                "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}
QWEN_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory and "
    "visual inputs, as well as generating text and speech."
)


@dataclass
class VideoSettings:
    """How frames become patches (Qwen2.5-Omni's defaults, :func:`qwen3_video_settings` for Qwen3-Omni's; pixel
    budgets are per frame)."""

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


def qwen3_video_settings(**overrides) -> VideoSettings:
    """Qwen3-Omni's video defaults: patch 16 (32-px tokens), 128-768 tokens per frame (the processor's
    ``videos_kwargs`` size), Qwen2-VL's CLIP mean/std unless the checkpoint's ``preprocessor_config.json`` says
    otherwise (:meth:`OmniProcessor.from_pretrained` reads it)."""
    return VideoSettings(**{"patch_size": 16, "min_pixels": 128 * 32 * 32, "max_pixels": 768 * 32 * 32, **overrides})


def special_ids(tokenizer) -> SpecialIds:
    """Placeholder and marker ids from the tokenizer's media attributes (:data:`MEDIA_TOKENS` defaults)."""
    names = {attr: getattr(tokenizer, attr, None) or default for attr, default in MEDIA_TOKENS.items()}
    ids = {attr: tokenizer.convert_tokens_to_ids(token) for attr, token in names.items()}
    missing = [names[a] for a, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ModelLoadError(f"the tokenizer has no media token(s) {missing}; load the tokenizer of a "
                             "Qwen2.5-/Qwen3-Omni checkpoint (or set its video_token, audio_token, ... attributes)")
    return SpecialIds(video=ids["video_token"], audio=ids["audio_token"], image=ids["image_token"],
                      vision_bos=ids["vision_bos_token"], vision_eos=ids["vision_eos_token"],
                      audio_bos=ids["audio_bos_token"], audio_eos=ids["audio_eos_token"])


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
        position_id_per_seconds: temporal ids per second (25 for Qwen2.5-Omni, 13 for Qwen3-Omni).
        seconds_per_chunk: Qwen2.5-Omni's interleave chunk (Qwen3-Omni has none).
        family: ``"qwen2_5"`` or ``"qwen3"``: which processor's layout to write (module doc).
        n_window: Qwen3-Omni's audio encoder window (the thinker config's ``audio_config.n_window``).
    """

    def __init__(self, tokenizer, feature_extractor, video: VideoSettings | None = None,
                 audio: AudioSettings | None = None, default_system: str = QWEN_SYSTEM_PROMPT,
                 position_id_per_seconds: float = 25, seconds_per_chunk: int = 2, family: str = "qwen2_5",
                 n_window: int = 50) -> None:
        if family not in FAMILIES:
            raise ModelLoadError(f"processor family {family!r} is unknown; use one of {list(FAMILIES)}")
        self.family, self.n_window = family, n_window
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.video = video or VideoSettings()
        self.audio = audio or AudioSettings(num_mel_bins=feature_extractor.feature_size)
        self.default_system = default_system
        self.position_id_per_seconds = position_id_per_seconds
        self.seconds_per_chunk = seconds_per_chunk
        self.ids = special_ids(tokenizer)

    def audio_tokens(self, n_mel_frames: int) -> int:
        """Audio tokens of a clip with ``n`` mel frames (the family's encoder, module doc)."""
        if self.family == "qwen3":
            return qwen3_audio_tokens(n_mel_frames, self.n_window)
        return audio_tokens_for_frames(n_mel_frames)

    def video_block(self, grid: tuple[int, int, int], n_audio: int) -> list[int]:
        """Ids of the block of a video with ``grid`` and ``n_audio`` interleaved audio tokens (0: video only)."""
        gt, gh, gw = grid
        per_grid, spg = gh * gw // self.video.merge_size ** 2, self.video.second_per_grid
        if self.family == "qwen3":
            return qwen3_av_block_ids(self.ids, gt, per_grid, spg, n_audio, self.position_id_per_seconds)
        return av_block_ids(self.ids, gt, per_grid, spg, n_audio, self.position_id_per_seconds,
                            self.seconds_per_chunk)

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
                            [self.audio_tokens(int(f)) for f in feats["feature_attention_mask"].sum(-1)])
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
                out += self.video_block(grid, n_audio if use_audio_in_video else 0)
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
                    "seconds_per_chunk": self.seconds_per_chunk, "family": self.family, "n_window": self.n_window}
        (directory / CONFIG_NAME).write_text(json.dumps(settings, indent=2))

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, trust_remote_code: bool = False,
                        **hub_kwargs) -> OmniProcessor:
        """Load ours (saved with :meth:`save_pretrained`) or build one from a Qwen2.5-Omni / Qwen3-Omni checkpoint's
        files (the family, patch size and audio window come from its config files:
        :func:`fusion.data.processor_files.checkpoint_settings`).

        ``trust_remote_code`` (off by default) only reaches ``AutoTokenizer``; the other files are JSON."""
        from fusion.data.processor_files import checkpoint_settings

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
                       s["default_system"], s["position_id_per_seconds"], s["seconds_per_chunk"],
                       s.get("family", "qwen2_5"), s.get("n_window", 50))
        found = checkpoint_settings(name_or_path, hub_kwargs)
        if getattr(tokenizer, "chat_template", None) is None and found.chat_template:
            tokenizer.chat_template = found.chat_template  # the processor's chat_template.json(.jinja)
        audio = AudioSettings(num_mel_bins=feature_extractor.feature_size)
        return cls(tokenizer, feature_extractor, found.video, audio,
                   position_id_per_seconds=found.position_id_per_seconds, family=found.family, n_window=found.n_window)


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
