"""The harness end to end on the tiny random model: the three output files and their fields, measured retention =
the model's own counts, failures counted (never scored), resume, logits vs generate, WorldSense's real layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from eval_helpers import corrupt_jsonl, tiny_config, toy_split, worldsense_copy

import eval.runner as runner_module
from eval.aggregate import aggregate
from eval.config import EvalConfig
from eval.data import load_benchmark, prepare
from eval.matrix import expand
from eval.models import Runtime
from eval.report import write_outputs
from eval.runner import Runner
from fusion import METHODS
from fusion.config import load_config
from fusion.data.scoring import letter_token_ids, option_logits, parse_letter

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
METHOD_LIST = ("methods=[{method: none}, {method: uniform}, {method: fastv, params: {k: 1}}, "
               "{method: pair, params: {video: keyframe, audio: audio_attn}}, {method: fusion, params: {dim: 32}}]")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_split(tmp_path_factory.mktemp("toyworld"), n=8)


def run(cfg: EvalConfig) -> tuple[Runner, dict]:
    runner = Runner(cfg, log=lambda _: None)
    runner.run()
    results = runner.results()
    write_outputs(results, runner.run_dir)
    return runner, results


@pytest.fixture(scope="module")
def matrix(toy, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("matrix")
    cfg = tiny_config(tmp, toy, METHOD_LIST, "retentions=[0.25]", "data.limit=4", "scoring.batch_size=2")
    return run(cfg)


def test_matrix_writes_the_three_files_with_the_documented_fields(matrix):
    runner, results = matrix
    out = runner.run_dir
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "samples.jsonl", "results.json", "results.md",
                                               "accuracy_vs_retention.png"}
    assert (out / "accuracy_vs_retention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "results.json").read_text())
    keys = [r["key"] for r in doc["rows"]]
    assert keys == ["none@100%", "uniform@25%", "fastv@25%", "keyframe+audio_attn@25%", "fusion@25%"]
    categories = doc["groups"]["category"]
    assert categories == sorted({"beep_count", "colour_at_beep", "shape_count", "tone_at_shape"})
    for row in doc["rows"]:
        assert row["n_samples"] == 4 and row["n_failed"] == 0
        acc = row["accuracy"]["category"]
        assert set(acc["per"]) == set(categories) and acc["all"] is not None and acc["mean"] is not None
        for m in ("video", "audio", "total"):
            assert set(row["retention"][m]) == {"token_weighted", "per_sample_mean"}
        assert row["prefill_ms"]["mean"] > 0 and row["peak_memory_mb"] > 0 and row["generate_ms"] is None
        assert set(row["flops"]) == {"llm_prefill", "llm_decode", "block", "total", "ratio"}
        assert row["device"].startswith("cpu") and row["dtype"] == "float32" and row["attn_implementation"] == "sdpa"
    rows = {r["key"]: r for r in doc["rows"]}
    assert rows["none@100%"]["flops"]["ratio"] == 1.0 and rows["none@100%"]["retention"]["total"]["token_weighted"] == 1
    assert rows["uniform@25%"]["flops"]["ratio"] < 1 and rows["uniform@25%"]["flops"]["block"] == 0
    assert rows["fusion@25%"]["flops"]["block"] > 0
    assert rows["keyframe+audio_attn@25%"]["name"] == "keyframe+audio_attn"
    md = (out / "results.md").read_text()
    assert "| method (budget) | " + " | ".join(categories) in md
    assert all(f"| {name} (" in md for name in ("none", "uniform", "fastv", "keyframe+audio_attn", "fusion"))
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 4 * 5
    assert set(lines[0]) >= {"key", "hash", "id", "prediction", "answer", "correct", "category", "kept", "error"}


def test_measured_retention_equals_the_models_own_counts(matrix, tiny):
    runner, results = matrix
    model, processor = tiny
    model.set_compressor(METHODS.build("uniform", retention=0.25))
    samples = load_benchmark(runner.cfg.data)
    totals = torch.zeros(4, dtype=torch.long)
    per_sample = []
    try:
        for start in range(0, 4, 2):  # the run's batches
            p = prepare(samples[start:start + 2], processor, runner.cfg.data, torch.device("cpu"), torch.float32)
            with torch.no_grad():
                model(**p.inputs)
            s = model.last_stats
            totals += torch.stack([s.video_after.sum(), s.video_before.sum(), s.audio_after.sum(),
                                   s.audio_before.sum()])
            per_sample += ((s.total_after.double() / s.total_before.double()).tolist())
    finally:
        model.set_compressor(METHODS.build("none"))
    row = next(r for r in results["rows"] if r["key"] == "uniform@25%")
    t = row["tokens"]
    assert [t["video_after"], t["video_before"], t["audio_after"], t["audio_before"]] == totals.tolist()
    assert row["retention"]["video"]["token_weighted"] == pytest.approx(int(totals[0]) / int(totals[1]))
    assert row["retention"]["total"]["per_sample_mean"] == pytest.approx(sum(per_sample) / len(per_sample))


def test_logits_mode_predicts_the_argmax_letter(matrix, tiny):
    runner, _ = matrix
    model, processor = tiny
    samples = load_benchmark(runner.cfg.data)[:2]
    p = prepare(samples, processor, runner.cfg.data, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        out = model(**p.inputs)
    letters = letter_token_ids(processor.tokenizer, "ABCD")
    expected = ["ABCD"[i] for i in option_logits(out.logits, out.attention_mask, letters).argmax(-1).tolist()]
    rows = [json.loads(x) for x in (runner.run_dir / "samples.jsonl").read_text().splitlines()]
    got = [next(r["prediction"] for r in rows if r["key"] == "none@100%" and r["id"] == s.id) for s in samples]
    assert got == expected


def test_generate_mode_parses_the_generated_letter(toy, tmp_path):
    cfg = tiny_config(tmp_path, toy, "methods=[{method: none}, {method: fastv, params: {k: 1}}]", "retentions=[0.5]",
                      "data.limit=3", "scoring.mode=generate", "scoring.max_new_tokens=3", "scoring.batch_size=2")
    runner, results = run(cfg)
    rows = [json.loads(x) for x in (runner.run_dir / "samples.jsonl").read_text().splitlines()]
    samples = {s.id: s for s in load_benchmark(cfg.data)}
    assert len(rows) == 6
    for r in rows:
        assert isinstance(r["response"], str) and r["generate_ms"] > 0 and r["prefill_ms"] > 0
        assert r["prediction"] == parse_letter(r["response"], samples[r["id"]].options)
        assert r["correct"] == (r["prediction"] == r["answer"])
    assert all(row["generate_ms"]["mean"] > 0 for row in results["rows"])


def test_a_failed_sample_is_counted_not_scored(toy, tmp_path):
    jsonl = corrupt_jsonl(toy, tmp_path / "bench")
    cfg = tiny_config(tmp_path, toy, "data.benchmark=jsonl", f"data.jsonl={jsonl}", "methods=[{method: none}]",
                      "scoring.batch_size=2")
    runner, results = run(cfg)
    row = results["rows"][0]
    assert (row["n_samples"], row["n_failed"]) == (4, 1)
    assert "CorruptMediaError" in row["errors"][0] and "broken.mp4" in row["errors"][0]
    rows = [json.loads(x) for x in (runner.run_dir / "samples.jsonl").read_text().splitlines()]
    broken = next(r for r in rows if r["id"] == "broken")
    assert broken["correct"] is None and broken["prediction"] is None and "CorruptMediaError" in broken["error"]
    scored = [r for r in rows if not r["error"]]
    assert row["accuracy"]["category"]["all"] == pytest.approx(100 * sum(r["correct"] for r in scored) / 3)
    assert "## Failures" in (runner.run_dir / "results.md").read_text()
    assert "| 4 | 1 |" in (runner.run_dir / "results.md").read_text()


def test_a_batch_that_raises_is_retried_per_sample(toy, tmp_path, monkeypatch):
    real = runner_module.run_batch

    def flaky(model, prepared, *args):
        if any(s.id == "test-00001" for s in prepared.samples):
            raise RuntimeError("simulated out of memory")
        return real(model, prepared, *args)

    monkeypatch.setattr(runner_module, "run_batch", flaky)
    cfg = tiny_config(tmp_path, toy, "methods=[{method: none}]", "data.limit=4", "scoring.batch_size=2")
    _, results = run(cfg)
    row = results["rows"][0]
    assert (row["n_samples"], row["n_failed"]) == (4, 1) and row["errors"] == ["RuntimeError: simulated out of memory"]
    assert sum(row["accuracy"]["category"]["n"].values()) == 3


def test_resume_skips_done_rows_and_redoes_changed_settings(toy, tmp_path):
    args = ["methods=[{method: none}, {method: uniform}]", "retentions=[0.25]", "data.limit=4", "scoring.batch_size=2"]
    first, results = run(tiny_config(tmp_path, toy, *args))
    assert first.calls == 4  # 2 settings x 2 batches
    log = first.run_dir / "samples.jsonl"
    lines = log.read_text().splitlines()
    again, results2 = run(tiny_config(tmp_path, toy, *args))
    assert again.calls == 0 and log.read_text().splitlines() == lines
    assert [r["accuracy"] for r in results2["rows"]] == [r["accuracy"] for r in results["rows"]]
    # a crash: the last two rows lost, the one before torn mid-line
    log.write_text("\n".join(lines[:-3]) + "\n" + lines[-3][:20])
    crashed, _ = run(tiny_config(tmp_path, toy, *args))
    assert crashed.calls == 2  # only the batches holding the three missing rows' settings
    assert len(crashed.store.current({s.hash for s in crashed.settings})) == 8
    # a changed method parameter invalidates that setting's rows only
    changed = ["methods=[{method: none}, {method: uniform, params: {budget: joint}}]", *args[1:]]
    messages = []
    runner = Runner(tiny_config(tmp_path, toy, *changed), log=messages.append)
    runner.run()
    assert runner.calls == 2 and any("no longer in the config" in m for m in messages)


def test_per_category_accuracy_and_retention_on_hand_made_rows():
    cfg = load_config(EvalConfig, None, ["methods=[{method: uniform}]", "retentions=[0.5]"])
    (setting,) = expand(cfg)

    def row(i, category, correct, kept=(4, 2, 10, 5), error=None):
        v_before, v_after, a_before, a_after = kept
        return {"hash": setting.hash, "id": str(i), "groups": {"category": category}, "correct": correct,
                "error": error, "kept": None if error else {
                    "video_before": v_before, "video_after": v_after, "audio_before": a_before, "audio_after": a_after,
                    "sequence_before": 0, "sequence_after": 0},
                "flops": {"llm_prefill": 1.0, "llm_decode": 2.0, "block": 0.0}, "prefill_ms": 3.0,
                "generate_ms": None, "peak_memory_mb": 7.0}

    rows = [row(0, "a", True), row(1, "a", True), row(2, "a", False, kept=(8, 8, 0, 0)), row(3, "b", False),
            row(4, "b", None, error="CorruptMediaError: x")]
    doc = aggregate(cfg, [setting], rows, Runtime(torch.device("cpu"), torch.float32, "sdpa"))
    (r,) = doc["rows"]
    acc = r["accuracy"]["category"]
    assert acc["per"] == pytest.approx({"a": 200 / 3, "b": 0.0}) and acc["all"] == 50.0
    assert acc["mean"] == pytest.approx(100 / 3) and acc["n"] == {"a": 3, "b": 1}
    assert (r["n_samples"], r["n_failed"]) == (5, 1)
    # video: token-weighted (2+2+8+2)/(4+4+8+4) = 0.7, per-sample mean (0.5+0.5+1+0.5)/4 = 0.625
    assert r["retention"]["video"] == pytest.approx({"token_weighted": 0.7, "per_sample_mean": 0.625})
    # audio: sample 2 has none, so the per-sample mean is over the other three
    assert r["retention"]["audio"] == pytest.approx({"token_weighted": 0.5, "per_sample_mean": 0.5})
    assert r["flops"]["total"] == 3.0 and r["flops"]["ratio"] is None


def test_worldsense_configs_run_on_a_fixture_in_the_real_layout(toy, tmp_path):
    root = worldsense_copy(toy, tmp_path / "WorldSense")
    base = ["model.name=tiny-random", "model.device=cpu", "model.dtype=float32", f"data.worldsense.root={root}",
            "scoring.max_new_tokens=2", "run.progress=false", "scoring.warmup=0"]
    cfg = load_config(EvalConfig, CONFIGS / "eval_worldsense_seed_3b.yaml", [*base, f"run.output_dir={tmp_path}/s"])
    runner, results = run(cfg)
    assert [r["name"] for r in results["rows"]] == ["uncompressed", "keyframe (video only)", "DyCoke (V&A)"]
    domains = results["groups"]["domain"]
    assert domains[:2] == ["Tech & Science", "Culture & Politics"] and len(domains) == 8
    assert results["groups"]["task_type"] == ["Audio Counting", "Event Recognition"]
    for row in results["rows"]:
        assert row["n_samples"] == 3 and row["n_failed"] == 0
        domain = row["accuracy"]["domain"]
        assert domain["n"]["Tech & Science"] == 2 and domain["per"]["Music"] is None
    keyframe = results["rows"][1]["retention"]
    assert keyframe["audio"]["token_weighted"] == 1.0 and keyframe["video"]["token_weighted"] < 1.0
    md = (runner.run_dir / "results.md").read_text()
    assert "| Tech & Science | Culture & Politics | Daily Life |" in md and "## Accuracy by task_type" in md
    rows = [json.loads(x) for x in (runner.run_dir / "samples.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rows} == {"ws000/task0", "ws000/task1", "ws001/task0"}
    three_b = load_config(EvalConfig, CONFIGS / "eval_worldsense_3b.yaml",
                          [*base, f"run.output_dir={tmp_path}/b", "methods=[{method: none}, {method: uniform}]"])
    _, results = run(three_b)
    assert [r["key"] for r in results["rows"]] == ["none@100%", "uniform@45%", "uniform@35%"]
