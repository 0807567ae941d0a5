"""Decode a media file into what the processor takes: frames sampled at the model's fps and 16 kHz mono audio.

One path for ToyWorld clips, WorldSense videos and any user clip (PyAV, no torchvision/decord). The rules
follow ``qwen-omni-utils`` (v2.5 ``fetch_video`` / ``smart_nframes`` / ``process_audio_info``):

* frame count ``n = floor_2(min(max(total / video_fps * fps, ceil_2(min_frames)), floor_2(min(max_frames, total)),
  total))`` with ``floor_2``/``ceil_2`` rounding to a multiple of ``frame_factor`` (2), so at least 4 frames and
  at most ``max_frames`` (768); a stream with a single frame gives that one frame (Qwen's utilities reject it,
  our processor repeats it to fill the temporal patch);
* frame indices ``round(linspace(0, total - 1, n))`` (torch's float32 linspace and round-half-even, as Qwen);
* per-frame pixel budget ``max_pixels = max(min(video_max_pixels, total_pixels / n * 2), int(min_pixels * 1.05))``
  and every frame resized (PIL bicubic) to ``smart_resize(h, w, 28, min_pixels, max_pixels)``;
* audio: every channel resampled to 16 kHz (FFmpeg's resampler; ``librosa`` uses soxr) and averaged to mono
  (as ``librosa.load(mono=True)``), trimmed to the audio stream's declared duration (AAC decoders emit a
  padded last frame) and to ``max_audio_seconds`` (the processor's 300 s: decoding stops there, so an hours-long
  track is never held in memory). A file without an audio stream gives ``audio=None``: a video-only input, not an
  error.

Long clips: the frames are bounded by ``max_frames`` and the whole-video pixel budget ``total_pixels``, and the audio
by ``max_audio_seconds``, whatever the clip's length; whether the resulting sequence fits the model's context is
checked after processing (:func:`fusion.data.batching.check_context`), before the model runs.

Bad files raise typed errors that name the file: :class:`~fusion.errors.MediaNotFoundError`,
:class:`~fusion.errors.CorruptMediaError`, :class:`~fusion.errors.NoVideoStreamError`,
:class:`~fusion.errors.EmptyMediaError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from fusion.errors import CorruptMediaError, EmptyMediaError, MediaNotFoundError, NoVideoStreamError

VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)  # qwen-omni-utils' default token budget of a whole video


@dataclass
class MediaSettings:
    """How a file is sampled (defaults: qwen-omni-utils for Qwen2.5-Omni; pixel budgets are per frame).

    Attributes:
        fps: frames per second to sample (the processor's fps; 2.0 for Qwen2.5-Omni).
        min_frames: fewest frames sampled (rounded up to ``frame_factor``).
        max_frames: most frames sampled (rounded down to ``frame_factor``).
        frame_factor: the frame count is a multiple of this (the temporal patch size, 2).
        size_factor: frame sides are multiples of this (patch 14 x merge 2 = 28).
        min_pixels: smallest frame area.
        max_pixels: largest frame area.
        total_pixels: area budget of the whole video (spread over its frames).
        sampling_rate: audio rate in Hz.
        max_audio_seconds: decode at most this many seconds of audio (None: the whole track).
    """

    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    frame_factor: int = 2
    size_factor: int = 28
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    total_pixels: int = VIDEO_TOTAL_PIXELS
    sampling_rate: int = 16000
    max_audio_seconds: float | None = None

    @classmethod
    def from_processor(cls, processor, **overrides) -> MediaSettings:
        """Settings that match an :class:`~fusion.data.processor.OmniProcessor` (fps, pixel budgets, audio rate)."""
        v = processor.video
        base = dict(fps=v.fps, frame_factor=v.temporal_patch_size, size_factor=v.factor, min_pixels=v.min_pixels,
                    max_pixels=v.max_pixels, sampling_rate=processor.audio.sampling_rate,
                    max_audio_seconds=processor.audio.max_seconds)
        return cls(**{**base, **overrides})


@dataclass
class DecodedMedia:
    """One decoded file.

    Attributes:
        path: the file.
        frames: ``(n, H, W, 3)`` uint8 RGB, sampled and resized (see module doc).
        audio: ``(N,)`` float32 mono waveform at ``sampling_rate``, or None when the file has no audio track.
        sampling_rate: audio rate in Hz.
        frame_indices: indices of the sampled frames in the stream.
        total_frames: frames in the video stream.
        video_fps: the stream's average frame rate.
        sample_fps: effective rate of the sampled frames, ``n / total_frames * video_fps``.
    """

    path: Path
    frames: np.ndarray
    audio: np.ndarray | None
    sampling_rate: int
    frame_indices: list[int] = field(default_factory=list)
    total_frames: int = 0
    video_fps: float = 0.0
    sample_fps: float = 0.0

    @property
    def has_audio(self) -> bool:
        return self.audio is not None

    @property
    def duration(self) -> float:
        """Video duration in seconds, ``total_frames / video_fps``."""
        return self.total_frames / self.video_fps if self.video_fps else 0.0


def sample_count(total_frames: int, video_fps: float, settings: MediaSettings) -> int:
    """Frames to sample: ``floor_f(min(max(total / video_fps * fps, ceil_f(min_frames)), floor_f(min(max_frames,
    total)), total))`` with ``f = frame_factor``; a stream shorter than ``f`` frames gives all of its frames."""
    f = settings.frame_factor
    if total_frames < f:
        return total_frames
    lo = math.ceil(settings.min_frames / f) * f
    hi = math.floor(min(settings.max_frames, total_frames) / f) * f
    wanted = total_frames / video_fps * settings.fps
    return math.floor(min(max(wanted, lo), hi, total_frames) / f) * f


def frame_indices(total_frames: int, n: int) -> list[int]:
    """``round(linspace(0, total - 1, n))`` in torch float32, as Qwen's video readers compute it."""
    return torch.linspace(0, total_frames - 1, n).round().long().tolist()


def frame_size(height: int, width: int, n: int, settings: MediaSettings) -> tuple[int, int]:
    """Resized ``(h, w)``: ``smart_resize`` with ``max_pixels = max(min(max_pixels, total_pixels / n * f),
    int(min_pixels * 1.05))`` (the whole-video budget spread over ``n`` frames)."""
    budget = max(min(settings.max_pixels, settings.total_pixels / max(n, 1) * settings.frame_factor),
                 int(settings.min_pixels * 1.05))
    return smart_resize(height, width, factor=settings.size_factor, min_pixels=settings.min_pixels,
                        max_pixels=budget)


def _open(path: Path):
    if not path.exists():
        raise MediaNotFoundError(f"media file {path} does not exist; check the path (relative paths in a JSONL are "
                                 "resolved against the JSONL's folder)")
    if not path.is_file():
        raise MediaNotFoundError(f"media path {path} is not a file (a folder?); point the sample at the video file")
    if path.stat().st_size == 0:
        raise EmptyMediaError(f"media file {path} is empty (0 bytes); re-download or re-encode it")
    try:
        return av.open(str(path))
    except av.error.EOFError as e:  # a header and no media data (e.g. a Matroska file whose tracks got no packets)
        raise EmptyMediaError(f"media file {path} holds no media data (zero length, or cut before its first packet): "
                              f"{e}; re-download or re-encode it") from e
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise CorruptMediaError(f"cannot open media file {path}: {e}; the file is unreadable or not a media "
                                "container (re-download or re-encode it)") from e


def _stream_frames(container, stream) -> int:
    """Frames in ``stream``: the container's count, or the number of its packets when the count is missing."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    n = sum(1 for packet in container.demux(stream) if packet.size)  # one packet per frame
    container.seek(0)
    return n


def _decode_frames(container, stream, wanted: list[int], size: tuple[int, int]) -> tuple[dict[int, np.ndarray], int]:
    """Decode up to the last wanted index; return the wanted frames (RGB, resized) and the frames seen."""
    targets, last, kept, seen = set(wanted), max(wanted), {}, 0
    h, w = size
    for i, frame in enumerate(container.decode(stream)):  # one decoded frame per iteration
        seen = i + 1
        if i in targets:
            rgb = frame.to_ndarray(format="rgb24")
            if rgb.shape[:2] != (h, w):
                rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BICUBIC))
            kept[i] = rgb
        if i >= last:
            break
    return kept, seen


def _decode_audio(path: Path, rate: int, max_seconds: float | None = None) -> np.ndarray | None:
    """The first audio stream as float32 mono at ``rate`` (channel mean), trimmed to its declared duration; decoding
    stops after ``max_seconds`` (None: the whole track)."""
    limit = None if max_seconds is None else int(math.ceil(max_seconds * rate))
    with _open(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", rate=rate)
        parts, n = [], 0
        for frame in container.decode(stream):  # one audio frame (~1024 samples) per iteration
            new = [f.to_ndarray() for f in resampler.resample(frame)]
            parts += new
            n += sum(p.shape[1] for p in new)
            if limit is not None and n >= limit:
                break
        else:
            parts += [f.to_ndarray() for f in resampler.resample(None)]
        if not parts:
            return None
        wave = np.concatenate(parts, axis=1).mean(axis=0).astype(np.float32)  # (N,)
        seconds = float(stream.duration * stream.time_base) if stream.duration else None
        if seconds is None and container.duration:
            seconds = container.duration / 1e6
        if seconds:
            wave = wave[: int(round(seconds * rate))]
        if limit is not None:
            wave = wave[:limit]
        return wave if wave.size else None


def load_media(path: str | Path, settings: MediaSettings | None = None, audio: bool = True) -> DecodedMedia:
    """Decode ``path``: sampled, resized RGB frames and (with ``audio``) its 16 kHz mono track.

    Raises:
        MediaNotFoundError: the file does not exist.
        CorruptMediaError: the file cannot be opened or decoded, or its audio holds NaN/Inf samples.
        NoVideoStreamError: the file has no video stream (e.g. an audio-only file).
        EmptyMediaError: the video stream has no frames.
    """
    path = Path(path)
    settings = settings or MediaSettings()
    try:
        with _open(path) as container:
            if not container.streams.video:
                raise NoVideoStreamError(f"media file {path} has no video stream; pass a video (audio-only files "
                                         "are not a video input)")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            total = _stream_frames(container, stream)
            if total == 0:
                raise EmptyMediaError(f"media file {path} has a video stream with zero frames; re-encode it, or drop "
                                      "the sample")
            rate = float(stream.average_rate or stream.guessed_rate or 0.0)
            if rate <= 0:
                seconds = float(stream.duration * stream.time_base) if stream.duration else 0.0
                rate = total / seconds if seconds > 0 else settings.fps
            n = sample_count(total, rate, settings)
            size = frame_size(stream.codec_context.height, stream.codec_context.width, n, settings)
            indices = frame_indices(total, n)
            kept, seen = _decode_frames(container, stream, indices, size)
        if seen < total:  # the container over-counted (truncated file): resample over what really decodes
            if seen == 0:
                raise EmptyMediaError(f"media file {path}: its video stream decodes to zero frames; re-download or "
                                      "re-encode it")
            total, n = seen, sample_count(seen, rate, settings)
            indices = frame_indices(total, n)
            with _open(path) as container:
                kept, _ = _decode_frames(container, container.streams.video[0], indices, size)
        wave = _decode_audio(path, settings.sampling_rate, settings.max_audio_seconds) if audio else None
    except (av.error.FFmpegError, EOFError) as e:
        raise CorruptMediaError(f"media file {path} cannot be decoded: {e}; re-download or re-encode it") from e
    if wave is not None and not np.isfinite(wave).all():  # float PCM can carry NaN/Inf; features would be NaN
        raise CorruptMediaError(f"media file {path}: its audio track holds NaN or Inf samples; re-encode the audio, or "
                                "use the video alone (load_media(..., audio=False), data.use_audio=false)")
    frames = np.stack([kept[i] for i in indices])  # (n, H, W, 3)
    return DecodedMedia(path=path, frames=frames, audio=wave, sampling_rate=settings.sampling_rate,
                        frame_indices=indices, total_frames=total, video_fps=rate, sample_fps=n / total * rate)
