"""The benchmark helpers (fusion.bench): speed-up arithmetic and ideal bookkeeping on golden numbers, FLOP formulas,
stage spans on a fake clock, table formatting, target checks, and one tiny end-to-end run of bench_prefill whose
JSON must hold the documented fields. No timing is asserted anywhere."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fusion.bench.timing as timing
from fusion.bench.flops import count_flops, layer_flops, prefill_flops
from fusion.bench.ideal import Comparison, FixedKeep, fastv_ideal, keep_from_source, paired_ratio
from fusion.bench.memory import PeakMemory
from fusion.bench.prefill_report import misses
from fusion.bench.report import fmt, markdown_table
from fusion.errors import BenchmarkError

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- arithmetic
def test_comparison_on_golden_times():
    """T_none 4 s, method 2 s, ideal 1.6 s, selection 0.3 s."""
    c = Comparison(t_none=4.0, t_method=2.0, t_ideal=1.6, t_select=0.3)
    assert c.speedup == pytest.approx(2.0)
    assert c.ideal_speedup == pytest.approx(2.5)
    assert c.achieved == pytest.approx(0.8)  # 2.0 / 2.5 = T_ideal / T_method
    assert c.saving_achieved == pytest.approx(2.0 / 2.4)  # saved 2 s of an ideal 2.4 s
    assert c.select_overhead == pytest.approx(0.075)
    assert c.excess == pytest.approx(0.1)
    d = c.as_dict()
    assert d["achieved"] == pytest.approx(0.8) and d["t_ideal"] == 1.6


def test_comparison_without_any_saving_is_nan_not_an_error():
    c = Comparison(t_none=1.0, t_method=1.1, t_ideal=1.0, t_select=0.1)
    assert math.isnan(c.saving_achieved)
    assert c.achieved == pytest.approx(1.0 / 1.1)


def test_fastv_ideal_adds_its_first_k_layers_at_full_length():
    # fixed-keep prefill 1.0 s whose LLM took 0.4 s; uncompressed LLM 2.0 s; K = 2 of 8 layers
    assert fastv_ideal(1.0, llm_full=2.0, llm_kept=0.4, k=2, layers=8) == pytest.approx(1.0 + 0.25 * 1.6)


def test_paired_ratio_is_the_median_of_per_round_ratios():
    assert paired_ratio([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]) == pytest.approx(1.0)
    # drift: both runs of a round slow down together, the ratio does not move
    assert paired_ratio([1.0, 2.0, 4.0], [1.25, 2.5, 5.0]) == pytest.approx(0.8)
    with pytest.raises(BenchmarkError, match="one value per round"):
        paired_ratio([1.0], [1.0, 2.0])


def test_keep_from_source_marks_the_kept_indices():
    source = torch.tensor([[0, 2, 5, -1], [1, 3, 4, 5]])
    keep = keep_from_source(source, 6)
    assert keep.tolist() == [[True, False, True, False, False, True], [False, True, False, True, True, True]]


def test_fixed_keep_replays_the_recorded_mask(tiny):
    """The ideal run sees the method's kept tokens: same counts per layer, same source positions."""
    from fusion import METHODS
    from fusion.testing import random_inputs

    model = tiny[0]
    inputs = random_inputs(model, seconds=4, batch_size=2, seed=3)
    try:
        with torch.no_grad():
            model.set_compressor(METHODS.build("random", retention=0.3, seed=1))
            out = model(**inputs)
            keep = keep_from_source(out.source_index, inputs["input_ids"].shape[1])
            counts = model.last_stats.sequence_after.tolist()
            model.set_compressor(FixedKeep(keep))
            replay = model(**inputs)
    finally:
        model.set_compressor(METHODS.build("none"))
    assert torch.equal(replay.source_index, out.source_index)
    assert model.last_stats.sequence_after.tolist() == counts


# ---------------------------------------------------------------------------------------------- FLOPs
def test_prefill_flops_formula():
    assert layer_flops(10, d=4, m=8) == 4 * 10 * 16 + 2 * 100 * 4 + 2 * 10 * 4 * 8  # 2080
    assert prefill_flops([10, 10, 5], d=4, m=8) == 2 * 2080 + (4 * 5 * 16 + 2 * 25 * 4 + 2 * 5 * 4 * 8)


def test_counted_flops_include_matmuls_and_cpu_attention():
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    _, flops = count_flops(lambda: a @ b)
    assert flops == 2 * 3 * 4 * 5
    q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4)
    _, flops = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, k))
    assert flops == 2 * (2 * 2 * 3 * 4 * 5)  # q k^T and (weights) v, 2 heads


# ---------------------------------------------------------------------------------------------- timing
@pytest.fixture
def fake_clock(monkeypatch):
    ticks = iter([0.0, 1.0, 5.0, 7.0, 10.0, 10.5, 20.0, 21.0])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(ticks))


def test_stage_timer_sums_spans_of_a_name(fake_clock):
    timer = timing.StageTimer("cpu")
    for _ in range(2):
        timer.start("a")
        timer.stop("a")
    timer.start("b")
    timer.stop("b")
    assert timer.seconds() == {"a": 1.0 + 2.0, "b": 0.5}
    timer.reset()
    assert timer.seconds() == {}


def test_module_span_times_a_forward_and_removes_its_hooks(fake_clock):
    timer = timing.StageTimer("cpu")
    layer = torch.nn.Linear(2, 2)
    with timing.module_span(timer, layer, "layer"):
        layer(torch.ones(1, 2))  # ticks 0 -> 1
        layer(torch.ones(1, 2))  # ticks 5 -> 7
    layer(torch.ones(1, 2))  # hooks gone: no tick consumed, no span
    assert timer.seconds() == {"layer": 3.0}
    assert not layer._forward_hooks and not layer._forward_pre_hooks


def test_function_span_wraps_and_restores(fake_clock):
    class Namespace:
        @staticmethod
        def work(x):
            return 2 * x

    timer = timing.StageTimer("cpu")
    original = Namespace.work
    seen = []
    with timing.function_span(timer, Namespace, "work", "work", around=lambda call: seen.append(1) or call()):
        assert Namespace.work(3) == 6
    assert Namespace.work is original
    assert timer.seconds() == {"work": 1.0} and seen == [1]


def test_interleave_rotates_and_drops_warmup():
    calls = []
    runs = {name: (lambda n=name: calls.append(n) or f"{n}{len(calls)}") for name in "abc"}
    results = timing.interleave(runs, repeats=2, warmup=1)
    assert calls == list("abc" + "bca" + "cab")
    assert results == {"a": ["a6", "a8"], "b": ["b4", "b9"], "c": ["c5", "c7"]}


def test_fanout_forwards_marks_to_every_listener(fake_clock):
    timer_a, timer_b = timing.StageTimer("cpu"), timing.StageTimer("cpu")
    marks = timing.Fanout(timer_a)
    marks.listeners.append(timer_b)
    marks.start("x")
    marks.stop("x")
    # starts in order (a at 0, b at 1), stops in reverse (b at 5, a at 7): the spans nest
    assert timer_a.seconds() == {"x": 7.0} and timer_b.seconds() == {"x": 4.0}


# ---------------------------------------------------------------------------------------------- memory
def test_cpu_peak_memory_sees_an_allocation_held_to_the_end():
    size = 96 * 2 ** 20
    with PeakMemory("cpu") as mem:
        mem.start("inside")
        held = torch.ones(size // 4)  # touched pages: RSS grows by ~size
        time.sleep(0.05)  # let the sampler see it inside the span
        mem.stop("inside")
    assert held.numel() == size // 4
    assert mem.delta >= 0.9 * size
    assert mem.stage_delta["inside"] >= 0.9 * size
    assert "RSS" in mem.kind


# ---------------------------------------------------------------------------------------------- report
def test_markdown_table_and_number_formatting():
    assert markdown_table(["a", "b"], [[1, "x|y"]]) == "| a | b |\n|---|---|\n| 1 | x\\|y |"
    with pytest.raises(BenchmarkError, match="one cell per column"):
        markdown_table(["a", "b"], [[1]])
    assert fmt(None) == "–" and fmt(float("nan")) == "–"
    assert fmt(0.1234, 1, percent=True) == "12.3 %" and fmt(2.0) == "2.00"


def _row(kind="pre-llm", r=0.2, achieved=0.99, overhead=0.01, memory=0.5):
    return {"kind": kind, "retention": r, "achieved_paired": achieved, "memory_ratio": memory,
            "comparison": {"achieved": achieved, "select_overhead": overhead}}


@pytest.mark.parametrize("row,expected", [
    (_row(), []),
    (_row(achieved=0.9), ["achieved"]),
    (_row(r=0.5, achieved=0.9), []),  # outside 10-35 %: not held to the speed target
    (_row(r=0.1, achieved=0.949), ["achieved"]),
    (_row(memory=0.61), ["memory"]),
    (_row(r=0.35, memory=0.9), []),  # memory is checked at r = 0.2 only
    (_row(kind="learned", overhead=0.021), ["selection"]),
    (_row(kind="pre-llm", overhead=0.5), []),  # the 2 % target is the learned block's
    (_row(kind="in-llm", achieved=0.5, memory=0.9), []),
], ids=["ok", "slow", "slow at 0.5", "slow at 0.1", "memory", "memory at 0.35", "learned overhead",
        "pre-llm overhead", "in-llm"])
def test_target_misses(row, expected):
    assert [m.split(" ")[0] for m in misses(row)] == expected


# ---------------------------------------------------------------------------------------------- the script
def test_bench_prefill_help():
    out = subprocess.run([sys.executable, "scripts/bench_prefill.py", "--help"], cwd=REPO, capture_output=True,
                         text=True, env={"PYTHONPATH": str(REPO), "PATH": ""}, timeout=120)
    assert out.returncode == 0, out.stderr
    for option in ("--model", "--seconds", "--frame-size", "--methods", "--retentions", "--repeats", "--threads",
                   "--json", "--markdown"):
        assert option in out.stdout


def test_tiny_run_writes_the_documented_json(tmp_path):
    """In a subprocess: the script sets process-wide state (torch threads, glibc's mmap threshold)."""
    out = subprocess.run(
        [sys.executable, "scripts/bench_prefill.py", "--model", "tiny-random", "--seconds", "2", "--frame-size", "56",
         "--repeats", "1", "--warmup", "0", "--methods", "uniform", "random", "--retentions", "0.5",
         "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")],
        cwd=REPO, capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "", "HF_HUB_OFFLINE": "1"},
        timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads((tmp_path / "r.json").read_text())
    assert set(data) == {"meta", "baseline", "rows", "skipped", "targets"}
    for key in ("environment", "command", "device", "dtype", "attn", "threads", "seconds", "frame_size", "sequence",
                "n_video", "n_audio", "repeats", "memory_kind"):
        assert key in data["meta"]
    assert set(data["baseline"]) >= {"stages", "memory_delta", "llm_memory_delta", "memory_peak", "llm_flops"}
    assert [(r["method"], r["retention"]) for r in data["rows"]] == [("uniform", 0.5), ("random", 0.5)]
    for row in data["rows"]:
        for key in ("kind", "kept_video", "kept_audio", "kept_total", "sequence", "stages", "ideal_stages",
                    "comparison", "achieved_paired", "memory_delta", "llm_memory_delta", "memory_peak",
                    "ideal_memory_delta", "memory_ratio", "llm_memory_ratio", "llm_flops", "flops_ratio",
                    "select_flops", "misses"):
            assert key in row
        c = row["comparison"]
        # 2 s at 56 px: 2 grids x 4 video tokens and 50 audio tokens; r = 0.5 keeps ceil(r N) of each
        assert (row["kept_video"], row["kept_audio"]) == (4 / 8, 25 / 50)
        assert c["speedup"] == pytest.approx(c["t_none"] / c["t_method"])
        assert c["achieved"] == pytest.approx(c["t_ideal"] / c["t_method"])
        assert row["flops_ratio"] < 1.0 and row["kind"] == "pre-llm"
        assert set(row["stages"]) == {"total", "video_encoder", "audio_encoder", "select", "llm", "other"}
    assert data["meta"]["command"].startswith("python scripts/bench_prefill.py --model tiny-random")
    assert "| uniform | 0.5 |" in (tmp_path / "r.md").read_text()


def test_block_width_shrinks_with_the_decoder_on_the_scaled_config():
    """d = 256 * D_scaled / D_real rounded to a multiple of the 4 heads: 7B (3584 -> 512) gives 36.6 -> 36, 3B
    (2048 -> 512) gives 64; the real size keeps the defaults; --block-dim wins."""
    from fusion.bench.prefill import CPU_SIZE, block_size
    from fusion.model.configs import scaled_config

    assert block_size("qwen2_5_omni_7b", scaled_config("qwen2_5_omni_7b", **CPU_SIZE), "scaled", None) == \
        {"dim": 36, "scorer_hidden": 36}
    assert block_size("qwen2_5_omni_3b", scaled_config("qwen2_5_omni_3b", **CPU_SIZE), "scaled", None) == \
        {"dim": 64, "scorer_hidden": 64}
    assert block_size("qwen2_5_omni_7b", None, "real", None) == {}
    assert block_size("qwen2_5_omni_7b", None, "scaled", 128) == {"dim": 128, "scorer_hidden": 128}


def test_tiny_qwen3_run_skips_the_in_llm_methods_with_the_reason(tmp_path):
    """Qwen3-Omni's layout (13 audio tokens/s, 2 fps, 64 px = 4 tokens per grid); FastV skipped with the backbone's
    reason, DyCoke timed as its pre-LLM stage (the same prefill) with a note."""
    out = subprocess.run(
        [sys.executable, "scripts/bench_prefill.py", "--model", "tiny-random-qwen3", "--seconds", "2", "--frame-size",
         "64", "--repeats", "1", "--warmup", "0", "--methods", "uniform", "fastv", "dycoke", "--retentions", "0.5",
         "--json", str(tmp_path / "r.json")],
        cwd=REPO, capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "", "HF_HUB_OFFLINE": "1"},
        timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipped fastv: FastVHook" in out.stdout and "does not run on Qwen3-Omni" in out.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert (data["meta"]["n_video"], data["meta"]["n_audio"]) == (8, 26)
    assert "MoE 2 of 4 experts" in data["meta"]["text"]
    rows = {r["method"]: r for r in data["rows"]}
    assert set(rows) == {"uniform", "dycoke"} and [s["method"] for s in data["skipped"]] == ["fastv"]
    assert (rows["uniform"]["kept_video"], rows["uniform"]["kept_audio"]) == (4 / 8, 13 / 26)
    assert rows["dycoke"]["params"] == {"stage2": False} and "refuses the decode stage" in rows["dycoke"]["note"]
    # LLM FLOPs at the MoE's active width (2 experts x 32): the formula on the kept sequence, 2 layers
    n, d, m = rows["uniform"]["sequence"], 64, 64
    assert rows["uniform"]["llm_flops"] == 2 * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m)


def test_scaled_qwen3_config_keeps_ids_rope_and_active_experts():
    from fusion.bench.prefill import CPU_SIZE_QWEN3, block_size
    from fusion.model.configs import real_config, scaled_qwen3_config

    real, scaled = real_config("qwen3_omni_30b_a3b"), scaled_qwen3_config(**CPU_SIZE_QWEN3)
    text = scaled.get_text_config()
    assert (text.hidden_size, text.num_hidden_layers, text.head_dim) == (512, 8, 128)
    assert text.rope_parameters["mrope_section"] == real.get_text_config().rope_parameters["mrope_section"]
    assert (text.num_experts, text.num_experts_per_tok, text.moe_intermediate_size) == (32, 8, 192)
    assert scaled.vision_config.deepstack_visual_indexes == [1, 2, 3] and scaled.vision_config.patch_size == 16
    assert (scaled.video_token_id, scaled.audio_token_id) == (real.video_token_id, real.audio_token_id)
    assert scaled.audio_config.output_dim == scaled.vision_config.out_hidden_size == 512
    assert block_size("qwen3_omni_30b_a3b", scaled, "scaled", None) == {"dim": 64, "scorer_hidden": 64}
