"""Media decoding: Qwen's frame-count rule, frame content, 16 kHz mono audio timing, typed errors for bad files."""

from __future__ import annotations

import av
import numpy as np
import pytest

from fusion.data.media import MediaSettings, frame_indices, frame_size, load_media, sample_count
from fusion.data.mp4 import write_clip
from fusion.errors import CorruptMediaError, EmptyMediaError, MediaNotFoundError, NoVideoStreamError

SMALL = MediaSettings(min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)
SR = 16000


def _colour_frames(n: int, size: int = 56) -> np.ndarray:
    """Frame i is a flat grey of level 10 * i (so a decoded frame tells which source frame it was)."""
    return np.stack([np.full((size, size, 3), 10 * i, dtype=np.uint8) for i in range(n)])


def _beep_wave(seconds: float, at: float, length: float = 0.1, freq: float = 1000.0) -> np.ndarray:
    wave = np.zeros(int(seconds * SR), dtype=np.float32)
    start, n = int(at * SR), int(length * SR)
    wave[start:start + n] = 0.5 * np.sin(2 * np.pi * freq * np.arange(n) / SR)
    return wave


@pytest.mark.parametrize("total, fps, expected", [
    (40, 10.0, 8),     # 4 s at 10 fps -> 2 fps -> 8 frames
    (41, 10.0, 8),     # 8.2 -> floor to a multiple of 2
    (300, 30.0, 20),   # 10 s
    (5, 10.0, 4),      # 1 s would give 2, the minimum is 4
    (3, 10.0, 2),      # fewer frames than the minimum: floor_2(total)
    (1, 10.0, 1),      # a single frame is kept (the processor repeats it)
    (30000, 25.0, 768),  # 20 min: capped at max_frames
])
def test_sample_count_follows_qwen_omni_utils(total, fps, expected):
    assert sample_count(total, fps, MediaSettings()) == expected


def test_frame_indices_are_rounded_linspace():
    assert frame_indices(40, 8) == [0, 6, 11, 17, 22, 28, 33, 39]  # round(39 * k / 7)
    assert frame_indices(10, 4) == [0, 3, 6, 9]


def test_frame_size_spreads_the_total_budget():
    # 400 tokens for a video of 8 frames: max_pixels = 400 * 784 / 8 * 2 = 78400 per frame; 1280x720 is scaled
    # by beta = sqrt(921600 / 78400) and floored to multiples of 28: (196, 364)
    settings = MediaSettings(total_pixels=400 * 28 * 28, min_pixels=4 * 28 * 28)
    assert frame_size(720, 1280, 8, settings) == (196, 364)
    # with Qwen's min_pixels (128 tokens) the budget cannot drop below int(1.05 * 128 * 784) = 105369
    settings = MediaSettings(total_pixels=400 * 28 * 28)
    assert frame_size(720, 1280, 8, settings) == (224, 420)
    assert frame_size(56, 56, 8, SMALL) == (56, 56)


def test_decodes_frames_at_two_fps_and_audio_at_16k(tmp_path):
    path = write_clip(tmp_path / "clip.mp4", _colour_frames(20), fps=10, audio=_beep_wave(2.0, at=0.7))
    media = load_media(path, SMALL)
    assert media.frame_indices == [0, 6, 13, 19]
    levels = media.frames.reshape(4, -1).mean(1)
    np.testing.assert_allclose(levels, [0, 60, 130, 190], atol=3)  # the right source frames
    assert media.frames.shape == (4, 56, 56, 3) and media.frames.dtype == np.uint8
    assert media.audio.dtype == np.float32 and media.audio.shape == (2 * SR,)  # trimmed to the declared length
    loud = np.flatnonzero(np.abs(media.audio) > 0.25)
    assert abs(loud[0] / SR - 0.7) < 0.005 and abs(loud[-1] / SR - 0.8) < 0.005  # AAC priming removed
    assert media.sample_fps == pytest.approx(2.0) and media.duration == pytest.approx(2.0)


def test_frames_are_resized_to_the_smart_resize_size(tmp_path):
    path = write_clip(tmp_path / "wide.mp4", np.zeros((8, 60, 90, 3), dtype=np.uint8), fps=4)
    media = load_media(path, SMALL)
    assert media.frames.shape[1:3] == frame_size(60, 90, 4, SMALL) == (56, 84)


def test_stereo_is_averaged_to_mono(tmp_path):
    path = tmp_path / "stereo.mp4"
    left = _beep_wave(1.0, at=0.2)
    with av.open(str(path), "w") as container:
        v = container.add_stream("libx264", rate=10)
        v.width = v.height = 56
        v.pix_fmt = "yuv420p"
        a = container.add_stream("aac", rate=SR)
        a.layout = "stereo"
        for frame in _colour_frames(10):
            for packet in v.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in v.encode():
            container.mux(packet)
        frame = av.AudioFrame.from_ndarray(np.stack([left, np.zeros_like(left)]), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = SR, 0
        for packet in [*a.encode(frame), *a.encode()]:
            container.mux(packet)
    media = load_media(path, SMALL)
    assert media.audio.ndim == 1
    assert np.abs(media.audio).max() == pytest.approx(0.25, abs=0.03)  # (0.5 + 0) / 2


def test_clip_without_audio_track_is_video_only(tmp_path):
    media = load_media(write_clip(tmp_path / "silent.mp4", _colour_frames(8), fps=4), SMALL)
    assert media.audio is None and not media.has_audio and media.frames.shape[0] == 4


def test_missing_file(tmp_path):
    with pytest.raises(MediaNotFoundError, match="nope.mp4"):
        load_media(tmp_path / "nope.mp4")


def test_corrupt_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 50)
    with pytest.raises(CorruptMediaError, match="bad.mp4"):
        load_media(bad)


def test_truncated_file_is_corrupt(tmp_path):
    good = write_clip(tmp_path / "good.mp4", _colour_frames(20), fps=10, audio=_beep_wave(2.0, at=0.5))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[:600])
    with pytest.raises(CorruptMediaError, match="cut.mp4"):
        load_media(cut)


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = write_clip(tmp_path / "voice.mp4", None, audio=_beep_wave(1.0, at=0.2))
    with pytest.raises(NoVideoStreamError, match="voice.mp4"):
        load_media(path)


def test_zero_byte_file_is_empty(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(EmptyMediaError, match="empty.mp4"):
        load_media(empty)


def test_errors_are_av_fusion_errors_and_builtins(tmp_path):
    with pytest.raises(FileNotFoundError):  # MediaNotFoundError is also a FileNotFoundError
        load_media(tmp_path / "x.mp4")
