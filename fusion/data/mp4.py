"""Write small .mp4 clips with PyAV (H.264 video, AAC audio): the ToyWorld generator and the tests use it.

A clip is ``(T, H, W, 3)`` uint8 RGB frames at ``fps`` plus an optional mono float waveform at
``sample_rate``. Height and width must be even (4:2:0 chroma). Default codecs: MPEG-4 Part 2 video (FFmpeg's
native ``mpeg4`` encoder, single-threaded, 400 kb/s) and AAC audio (32 kb/s, fast coder). Both are
bit-deterministic, so the same arrays give the same file on the same PyAV build; ``libx264`` (``codec="libx264"``)
is not: even single-threaded, its look-ahead makes repeated encodes differ in a few pixels.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from fusion.errors import InputMismatchError


def write_clip(path: str | Path, frames: np.ndarray | None, fps: float = 10.0, audio: np.ndarray | None = None,
               sample_rate: int = 16000, audio_bitrate: int = 32000, codec: str = "mpeg4",
               video_bitrate: int = 400_000) -> Path:
    """Encode ``frames`` (and ``audio`` if given) into the .mp4 at ``path``; return the path.

    Args:
        path: output file (parent folders are created).
        frames: ``(T, H, W, 3)`` uint8 RGB, ``H`` and ``W`` even; None writes an audio-only .mp4.
        fps: frame rate of ``frames`` (a fraction such as 29.97 is kept exactly to 1/1000).
        audio: ``(N,)`` float waveform in [-1, 1] (mono), or None for a clip without an audio track.
        sample_rate: rate of ``audio`` in Hz.
        audio_bitrate: AAC bit rate.
        codec: FFmpeg video encoder (``"mpeg4"``, or ``"libx264"`` at CRF 18).
        video_bitrate: target bit rate of ``mpeg4``.
    """
    path = Path(path)
    if frames is not None:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
            raise InputMismatchError(f"frames must be a non-empty (T, H, W, 3) uint8 array, got {frames.shape} "
                                     f"{frames.dtype}")
        if frames.shape[1] % 2 or frames.shape[2] % 2:
            raise InputMismatchError(f"frame height and width must be even for 4:2:0 video, got {frames.shape[1:3]}")
    if frames is None and audio is None:
        raise InputMismatchError("write_clip needs frames, audio or both")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        video_stream = audio_stream = None
        if frames is not None:
            if codec not in av.codecs_available:
                raise InputMismatchError(f"this PyAV build has no {codec!r} encoder; use codec='mpeg4'")
            video_stream = container.add_stream(codec, rate=Fraction(round(fps * 1000), 1000))
            video_stream.width, video_stream.height = frames.shape[2], frames.shape[1]
            video_stream.pix_fmt = "yuv420p"
            video_stream.thread_count = 1  # deterministic output
            if codec == "libx264":
                video_stream.options = {"crf": "18", "preset": "veryfast"}
            else:
                video_stream.bit_rate = video_bitrate
        if audio is not None:
            audio_stream = container.add_stream("aac", rate=sample_rate)
            audio_stream.layout = "mono"
            audio_stream.bit_rate = audio_bitrate
            audio_stream.options = {"aac_coder": "fast"}  # 1.5x faster than the default two-loop coder
        if video_stream is not None:
            for frame in frames:  # one encode call per frame
                for packet in video_stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in video_stream.encode():
                container.mux(packet)
        if audio_stream is not None:
            wave = np.clip(np.asarray(audio, dtype=np.float32).reshape(1, -1), -1.0, 1.0)
            frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, 0
            for packet in audio_stream.encode(frame):
                container.mux(packet)
            for packet in audio_stream.encode():
                container.mux(packet)
    return path
