"""The bad-input table of docs/reliability.md, one test (or parametrized case) per row that had none: each asserts
the exception type AND the part of the message that says what to do, or that the input runs on what exists."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from adapter_helpers import tiny_adapter
from eval_helpers import corrupt_jsonl, tiny_config, toy_split
from PIL import Image

from eval.config import EvalConfig
from eval.data import prepare
from eval.models import ModelPool
from eval.report import write_outputs
from eval.runner import Runner
from fusion import METHODS, load_model
from fusion.config import load_config
from fusion.data.batching import check_context, collate
from fusion.data.mcq import MCQSample, load_jsonl
from fusion.data.media import MediaSettings, load_media, sample_count
from fusion.data.mp4 import write_clip
from fusion.errors import (
    AdapterMismatchError,
    ConfigError,
    ContextLengthError,
    CorruptMediaError,
    DatasetError,
    EmptyMediaError,
    MediaNotFoundError,
    MethodConfigError,
    MissingModalityError,
    NonFiniteFeaturesError,
    NoVideoStreamError,
    RetentionError,
    UnknownMethodError,
)
from fusion.model.configs import small_thinker_config
from fusion.model.loading import tiny_processor
from fusion.testing import random_inputs
from train.config import RunConfig

SMALL = MediaSettings(min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)
SR = 16000


def _frames(n: int, size: int = 56) -> np.ndarray:
    return np.stack([np.full((size, size, 3), (6 * i) % 256, dtype=np.uint8) for i in range(n)])


def _wave(seconds: float) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def _mkv(path: Path, n_frames: int, audio: np.ndarray | None = None) -> Path:
    """A Matroska clip (streamable: a cut file still holds its first frames); ``audio`` as float PCM."""
    with av.open(str(path), "w", format="matroska") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width = video.height = 56
        video.pix_fmt = "yuv420p"
        sound = None
        if audio is not None:
            sound = container.add_stream("pcm_f32le", rate=SR)
            sound.layout = "mono"
        for frame in _frames(n_frames):  # one frame per iteration
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        if sound is not None:
            chunk = av.AudioFrame.from_ndarray(audio[None, :], format="flt", layout="mono")
            chunk.sample_rate = SR
            for packet in [*sound.encode(chunk), *sound.encode()]:
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
    return path


# ---------------------------------------------------------------------------------------------------------- media
def _missing(tmp):
    return tmp / "nope.mp4"


def _folder(tmp):
    (tmp / "clip.mp4").mkdir()
    return tmp / "clip.mp4"


def _zero_byte(tmp):
    (tmp / "empty.mp4").write_bytes(b"")
    return tmp / "empty.mp4"


def _truncated_mp4(tmp):
    good = write_clip(tmp / "good.mp4", _frames(20), fps=10, audio=_wave(2.0))
    (tmp / "cut.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # the index (moov) is at the end
    return tmp / "cut.mp4"


def _not_media(tmp):
    (tmp / "notes.mp4").write_text("these are my notes, not a video\n" * 40)
    return tmp / "notes.mp4"


def _audio_only(tmp):
    return write_clip(tmp / "voice.mp4", None, audio=_wave(1.0))


def _zero_frames(tmp):
    path = tmp / "header_only.mkv"
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 56
        stream.pix_fmt = "yuv420p"
        container.start_encoding()
    return path


def _nan_audio(tmp):
    return _mkv(tmp / "nan.mkv", 20, audio=np.full(SR, np.nan, dtype=np.float32))


BAD_MEDIA = [  # (make the file, error type, what the message tells the user to do)
    (_missing, MediaNotFoundError, r"nope\.mp4 does not exist; check the path"),
    (_folder, MediaNotFoundError, r"is not a file .*point the sample at the video file"),
    (_zero_byte, EmptyMediaError, r"empty\.mp4 is empty \(0 bytes\); re-download or re-encode it"),
    (_truncated_mp4, CorruptMediaError, r"cut\.mp4.*re-download or re-encode it"),
    (_not_media, CorruptMediaError, r"notes\.mp4.*not a media container \(re-download or re-encode it\)"),
    (_audio_only, NoVideoStreamError, r"voice\.mp4 has no video stream; pass a video"),
    (_zero_frames, EmptyMediaError, r"header_only\.mkv.*re-download or re-encode it"),
    (_nan_audio, CorruptMediaError, r"nan\.mkv: its audio track holds NaN or Inf samples; re-encode the audio, or "
                                    r"use the video alone"),
]


@pytest.mark.parametrize("make, error, todo", BAD_MEDIA, ids=[m.__name__.strip("_") for m, _, _ in BAD_MEDIA])
def test_bad_media_file_is_a_typed_error(tmp_path, make, error, todo):
    with pytest.raises(error, match=todo):
        load_media(make(tmp_path), SMALL)


def test_a_cut_streamable_clip_keeps_the_frames_that_decode(tmp_path):
    whole = _mkv(tmp_path / "whole.mkv", 40)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    media = load_media(cut, SMALL)
    assert 0 < media.total_frames < 40  # the decodable prefix, resampled with Qwen's rule
    assert media.frames.shape[0] == sample_count(media.total_frames, media.video_fps, SMALL)


def test_an_image_file_is_a_one_frame_video(tmp_path):
    Image.fromarray(np.full((56, 56, 3), 90, dtype=np.uint8)).save(tmp_path / "still.png")
    media = load_media(tmp_path / "still.png", SMALL)
    assert media.frames.shape[0] == 1 and media.audio is None


def test_a_one_frame_clip_runs_end_to_end(tiny, tmp_path):
    model, processor = tiny
    clip = write_clip(tmp_path / "one.mp4", _frames(1), fps=10, audio=_wave(0.5))
    media = load_media(clip, MediaSettings.from_processor(processor))
    assert media.frames.shape[0] == 1
    sample = MCQSample(id="one", video=str(clip), question="what colour is the square ?", options=["red", "blue"],
                       answer="A", category="c")
    batch = collate([sample], processor, media=[media])
    assert batch.inputs["video_grid_thw"][0, 0].item() == 1  # the frame is repeated to fill the temporal patch
    with torch.no_grad():
        logits = model(**batch.model_inputs(with_labels=False)).logits
    assert torch.isfinite(logits).all()


def test_an_hours_long_audio_track_is_decoded_only_up_to_the_processor_cap(tmp_path):
    clip = write_clip(tmp_path / "long.mp4", _frames(60), fps=10, audio=_wave(6.0))
    capped = load_media(clip, MediaSettings(min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28, max_audio_seconds=2.0))
    assert capped.audio.size == 2 * SR
    assert MediaSettings.from_processor(tiny_processor()).max_audio_seconds == 300.0  # Qwen's extractor keeps 300 s


def _toy_batch(toy: Path, processor, n: int = 2):
    samples = load_jsonl(toy / "test.jsonl")[:n]
    return samples, collate(samples, processor)


def test_a_sequence_longer_than_the_context_is_refused_before_the_model(toy):
    processor = tiny_processor()
    samples, batch = _toy_batch(toy, processor)
    length = int(batch.inputs["attention_mask"].sum(1).max())
    check_context(batch, processor, length)  # fits exactly: no error
    with pytest.raises(ContextLengthError, match=r"exceed the model's context of 50 tokens; sample fewer frames "
                                                 r"\(data\.max_frames"):
        check_context(batch, processor, 50)
    cfg = load_config(EvalConfig, None, []).data
    prepared = prepare(samples, processor, cfg, torch.device("cpu"), torch.float32, context=50)
    assert prepared.samples == [] and [s.id for s, _ in prepared.failed] == [s.id for s in samples]
    assert all(e.startswith("ContextLengthError") for _, e in prepared.failed)


# ------------------------------------------------------------------------------------------ modalities per family
RUN_ON_VIDEO_ONLY = [("uniform", {}), ("random", {}), ("divprune", {}), ("dycoke", {}), ("omnizip", {}),
                     ("keyframe", {}), ("vidcom2", {}), ("xattn", {}), ("fastv", {"k": 1}),
                     ("pair", {"video": "keyframe", "audio": "audio_attn"}), ("fusion", {"dim": 32})]
RUN_ON_AUDIO_ONLY = [("uniform", {}), ("random", {}), ("divprune", {}), ("dycoke", {}), ("omnizip", {}),
                     ("audio_attn", {}), ("segment_topk", {}), ("xattn", {}), ("fastv", {"k": 1}),
                     ("pair", {"video": "keyframe", "audio": "audio_attn"}), ("fusion", {"dim": 32})]


def _run(model, name, params, **which):
    compressor = METHODS.build(name, retention=0.25, **params)
    if hasattr(compressor, "bind"):
        compressor = compressor.bind(model.config)
    model.set_compressor(compressor)
    try:
        with torch.no_grad():
            model(**random_inputs(model, seconds=4, **which))
        return model.last_stats.rows()[0]
    finally:
        model.set_compressor(METHODS.build("none"))


@pytest.mark.parametrize("name, params", RUN_ON_VIDEO_ONLY, ids=[n for n, _ in RUN_ON_VIDEO_ONLY])
def test_a_clip_without_audio_runs_video_and_joint_methods_on_its_video(tiny, name, params):
    row = _run(tiny[0], name, params, audio=False)
    assert row["audio_before"] == 0 and 0 < row["video_after"] <= row["video_before"]


@pytest.mark.parametrize("name, params", RUN_ON_AUDIO_ONLY, ids=[n for n, _ in RUN_ON_AUDIO_ONLY])
def test_audio_without_video_runs_audio_and_joint_methods_on_its_audio(tiny, name, params):
    row = _run(tiny[0], name, params, video=False)
    assert row["video_before"] == 0 and 0 < row["audio_after"] <= row["audio_before"]


@pytest.mark.parametrize("name, which, missing", [("audio_attn", {"audio": False}, "audio"),
                                                  ("segment_topk", {"audio": False}, "audio"),
                                                  ("keyframe", {"video": False}, "video"),
                                                  ("vidcom2", {"video": False}, "video")],
                         ids=["audio_attn-no_audio", "segment_topk-no_audio", "keyframe-no_video", "vidcom2-no_video"])
def test_a_method_needing_the_missing_modality_says_to_pair_it(tiny, name, which, missing):
    with pytest.raises(MissingModalityError, match=rf"needs {missing} tokens.*pair it with a method for the other "
                                                   r"modality \(see fusion\.pruners\.compose\) or drop those samples"):
        _run(tiny[0], name, {}, **which)


# --------------------------------------------------------------------------------------------- features, budgets
@pytest.mark.parametrize("key", ["pixel_values_videos", "input_features"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_features_say_to_fix_or_drop_the_sample(tiny, key, value):
    model = tiny[0]
    inputs = random_inputs(model, seconds=2)
    inputs[key][0, 0] = value
    with pytest.raises(NonFiniteFeaturesError, match=r"NaN or Inf.*drop or fix the sample"):
        model(**inputs)


@pytest.mark.parametrize("bad", [0, -0.25, 1.5, math.nan, "0.5"], ids=["zero", "negative", "above_one", "nan", "str"])
def test_a_bad_retention_says_it_is_the_fraction_kept_in_0_1(bad):
    with pytest.raises(RetentionError, match=r"\(0, 1\].*KEPT"):
        load_model("tiny-random", method="uniform", retention=bad)


@pytest.mark.parametrize("cls, override, todo", [
    (EvalConfig, "retentions=[0]", r"retentions: every retention is a fraction KEPT in \(0, 1\]"),
    (EvalConfig, "retentions=[abc]", r"retentions\[0\]: expected float, got 'abc'"),
    (RunConfig, "fusion.retention=1.5", r"fusion\.retention: must be in \(0, 1\] \(the fraction of tokens KEPT\)"),
    (RunConfig, "fusion.retention=nan", r"fusion\.retention: must be in \(0, 1\]"),
], ids=["eval_zero", "eval_string", "train_above_one", "train_nan"])
def test_a_bad_retention_in_a_config_names_the_key(cls, override, todo):
    with pytest.raises(ConfigError, match=todo):
        load_config(cls, None, [override])


def test_an_unknown_method_lists_the_known_ones_and_the_nearest():
    with pytest.raises(UnknownMethodError, match=r"'omnizap' \(did you mean 'omnizip'\?\); known methods: .*uniform"):
        load_model("tiny-random", method="omnizap")
    with pytest.raises(MethodConfigError, match=r"\['budgett'\] \(did you mean 'budget'\?\); its parameters are"):
        METHODS.build("uniform", retention=0.5, budgett="joint")
    with pytest.raises(ConfigError, match=r"methods\[0\]\.method: unknown method 'omnizap' \(did you mean 'omnizip'"):
        load_config(EvalConfig, None, ["methods=[{method: omnizap}]"])


def test_an_unknown_config_key_lists_the_known_ones_and_the_nearest():
    with pytest.raises(ConfigError, match=r"data\.limt: unknown key \(did you mean 'limit'\?\); known keys in data"):
        load_config(EvalConfig, None, ["data.limt=3"])
    with pytest.raises(ConfigError, match=r"train\.stpes: unknown key \(did you mean 'steps'\?\)"):
        load_config(RunConfig, None, ["train.stpes=3"])


# ------------------------------------------------------------------------------------------------------- adapters
@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return tiny_adapter(tmp_path_factory.mktemp("adapter") / "adapter")


def test_an_adapter_of_another_backbone_says_to_load_it_onto_its_own(adapter, tmp_path):
    other = small_thinker_config(tiny_processor().tokenizer, hidden=32, layers=2, heads=4, kv_heads=2,
                                 mrope_section=[1, 1, 2], vision_hidden=32, audio_hidden=32)
    other.to_json_file(str(tmp_path / "thinker_32.json"))
    with pytest.raises(AdapterMismatchError, match=r"another backbone \(hidden_size: adapter 64, model 32.*load it "
                                                   r"onto the backbone it was trained on"):
        load_model(str(tmp_path / "thinker_32.json"), method="fusion", adapter=adapter)


def test_an_adapter_whose_lora_rank_does_not_match_its_weights_says_to_re_export(adapter, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for file in adapter.iterdir():
        (mixed / file.name).write_bytes(file.read_bytes())
    config = json.loads((mixed / "adapter_config.json").read_text())
    config["r"] = 8  # the weights were trained at r=4
    (mixed / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterMismatchError, match=r"LoRA rank r.*size mismatch for .*lora_A.*copy one run's whole "
                                                   r"adapter/ directory, or re-export it"):
        load_model("tiny-random", method="fusion", adapter=mixed)


# ------------------------------------------------------------------------------------------------------- datasets
def test_a_malformed_jsonl_line_names_file_and_line_and_says_to_fix_it(tmp_path):
    path = tmp_path / "bad.jsonl"
    row = {"id": "q1", "video": "a.mp4", "question": "q ?", "options": ["x", "y"], "answer": "A", "category": "c"}
    path.write_text(json.dumps(row) + "\n{oops\n")
    with pytest.raises(DatasetError, match=r"bad\.jsonl:2: not valid JSON .*fix or delete that line"):
        load_jsonl(path)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_split(tmp_path_factory.mktemp("toyworld"), n=8)


def _with_missing_media(toy: Path, out: Path) -> Path:
    """corrupt_jsonl's 3 good questions + 'broken' (garbage bytes) + 'gone' (its file does not exist)."""
    path = corrupt_jsonl(toy, out)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows.append({**rows[0], "id": "gone", "video": str(out / "gone.mp4")})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _evaluate(cfg):
    runner = Runner(cfg, log=lambda _: None)
    runner.run()
    results = runner.results()
    write_outputs(results, runner.run_dir)
    return runner, results


def test_missing_media_are_skipped_counted_and_named_with_on_error_skip(toy, tmp_path):
    jsonl = _with_missing_media(toy, tmp_path / "bench")
    cfg = tiny_config(tmp_path, toy, "data.benchmark=jsonl", f"data.jsonl={jsonl}", "methods=[{method: none}]",
                      "scoring.batch_size=2", "data.on_error=skip")
    runner, results = _evaluate(cfg)
    (row,) = results["rows"]
    assert (row["n_samples"], row["n_failed"], row["n_skipped"]) == (5, 2, 2)
    assert {(u["id"], u["stage"]) for u in row["unscored"]} == {("broken", "data"), ("gone", "data")}
    assert any("MediaNotFoundError" in u["error"] and "check the path" in u["error"] for u in row["unscored"])
    scored = sum(row["accuracy"]["category"]["n"].values())
    assert scored == 3  # the accuracy's denominator: the scored questions; the skipped ones are visible beside it
    correct = row["accuracy"]["category"]["all"] * scored / 100
    assert row["accuracy_strict"] == pytest.approx(100 * correct / 5)
    md = (runner.run_dir / "results.md").read_text()
    assert "## Unscored questions" in md and "broken (data)" in md and "gone (data)" in md
    assert "2 of 5 unscored (2 skipped for their data, 0 failed in the model)" in md


def test_missing_media_stop_the_run_with_on_error_fail(toy, tmp_path):
    jsonl = _with_missing_media(toy, tmp_path / "bench")
    cfg = tiny_config(tmp_path, toy, "data.benchmark=jsonl", f"data.jsonl={jsonl}", "methods=[{method: none}]",
                      "scoring.batch_size=2", "data.on_error=fail")
    with pytest.raises(DatasetError, match=r"data\.on_error=fail: question 'broken' .*CorruptMediaError.*fix or "
                                           r"remove it, or set data\.on_error=skip"):
        Runner(cfg, log=lambda _: None).run()


def test_the_harness_skips_questions_longer_than_the_models_context(toy, tmp_path, monkeypatch):
    monkeypatch.setattr(ModelPool, "context", property(lambda self: 50))
    cfg = tiny_config(tmp_path, toy, "methods=[{method: none}]", "data.limit=2", "scoring.batch_size=2")
    _, results = _evaluate(cfg)
    (row,) = results["rows"]
    assert (row["n_samples"], row["n_skipped"]) == (2, 2) and row["accuracy"]["category"]["all"] is None
    assert all(u["error"].startswith("ContextLengthError") and "data.max_frames" in u["error"]
               for u in row["unscored"])


def test_every_row_of_the_reliability_table_names_a_test_that_exists():
    repo = Path(__file__).resolve().parents[1]
    table = [line for line in (repo / "docs" / "reliability.md").read_text().splitlines() if line.startswith("| ")]
    rows = [line for line in table if line.split("|")[1].strip().isdigit()]
    assert len(rows) >= 30
    for row in rows:  # one table row per iteration
        node = row.rstrip(" |").rsplit("|", 1)[1].strip().split("`")[1]
        path, name = node.split("::")
        source = (repo / path).read_text()
        assert f"def {name.split('[')[0]}(" in source, node
