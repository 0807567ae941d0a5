"""The harness end to end on Qwen3-Omni's layout (``model.name=tiny-random-qwen3``, its offline Qwen3 processor):
measured retention per modality = the requested budget, r = 1.0 scores = the stock HF thinker's on the same
processor inputs, MoE FLOPs at the active FFN width, and generate mode."""

from __future__ import annotations

import json
import math

import pytest
import torch
from eval_helpers import tiny_config, toy_split
from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

from eval.data import load_benchmark, prepare
from eval.flops import llm_flops
from eval.report import write_outputs
from eval.runner import Runner
from fusion import load_model
from fusion.bench.flops import ffn_width
from fusion.data.scoring import letter_token_ids, option_logits, parse_letter
from fusion.model.qwen3_thinker import CompressedQwen3Thinker

R = 0.25
METHODS = ("methods=[{method: none}, {method: uniform}, {method: audio_attn}, "
           "{method: fusion, params: {dim: 32, scorer_hidden: 32}}]")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_split(tmp_path_factory.mktemp("toyworld"), n=3)


def run(cfg):
    runner = Runner(cfg, log=lambda _: None)
    runner.run()
    results = runner.results()
    write_outputs(results, runner.run_dir)
    rows = [json.loads(x) for x in (runner.run_dir / "samples.jsonl").read_text().splitlines()]
    return runner, results, rows


@pytest.fixture(scope="module")
def matrix(toy, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("matrix3")
    cfg = tiny_config(tmp, toy, "model.name=tiny-random-qwen3", METHODS, f"retentions=[{R}]", "data.limit=3",
                      "scoring.batch_size=2")
    return run(cfg)


def _ceil(n: int) -> int:
    return math.ceil(n * R - 1e-9)


def test_every_setting_runs_and_keeps_the_requested_budget(matrix):
    runner, results, rows = matrix
    assert isinstance(runner.pool.base(), CompressedQwen3Thinker) and runner.pool.processor.family == "qwen3"
    doc = {r["key"]: r for r in results["rows"]}
    assert list(doc) == ["none@100%", "uniform@25%", "audio_attn@25%", "fusion@25%"]
    assert all(r["n_samples"] == 3 and r["n_failed"] == 0 for r in doc.values())
    by_key: dict[str, list[dict]] = {}
    for row in rows:
        by_key.setdefault(row["key"], []).append(row["kept"])
    for kept in by_key["none@100%"]:  # 4 s ToyWorld clips at 2 fps, 64 px: 4 grids x 4 tokens, 52 audio tokens
        assert (kept["video_before"], kept["audio_before"]) == (16, 52)
        assert kept["video_after"] == 16 and kept["audio_after"] == 52
    for kept in by_key["uniform@25%"]:  # each modality: ceil(r N)
        assert (kept["video_after"], kept["audio_after"]) == (_ceil(16), _ceil(52))
    for kept in by_key["audio_attn@25%"]:  # the AuT encoder's attention picks audio; video untouched
        assert (kept["video_after"], kept["audio_after"]) == (16, _ceil(52))
    for kept in by_key["fusion@25%"]:  # the block's joint budget: ceil(r (N_v + N_a))
        assert kept["video_after"] + kept["audio_after"] == _ceil(16 + 52)
    retention = doc["uniform@25%"]["retention"]
    assert retention["video"]["token_weighted"] == pytest.approx(_ceil(16) / 16)
    assert retention["audio"]["token_weighted"] == pytest.approx(_ceil(52) / 52)
    assert doc["none@100%"]["retention"]["total"]["token_weighted"] == 1.0


def test_uncompressed_scores_equal_the_stock_thinker_on_the_same_inputs(matrix):
    runner, _, rows = matrix
    model, processor = runner.pool.base(), runner.pool.processor
    model.set_compressor(None)  # the run left the last setting's block installed: back to keep-all
    stock = Qwen3OmniMoeThinkerForConditionalGeneration(model.config).eval()
    missing, unexpected = stock.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("av_fusion.") for k in unexpected)  # only the attached block is extra
    samples = load_benchmark(runner.cfg.data)
    letters = letter_token_ids(processor.tokenizer, "ABCD")
    got = {r["id"]: r["prediction"] for r in rows if r["key"] == "none@100%"}
    for start in (0, 2):  # the run's batches
        p = prepare(samples[start:start + 2], processor, runner.cfg.data, torch.device("cpu"), torch.float32)
        with torch.no_grad():
            ref = option_logits(stock(**p.inputs).logits, p.inputs["attention_mask"], letters)  # (B, 4)
            ours = option_logits(model(**p.inputs).logits, p.inputs["attention_mask"], letters)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        for sample, i in zip(p.samples, ref.argmax(-1).tolist()):
            assert got[sample.id] == "ABCD"[i]


def test_flops_use_the_moe_active_ffn_width(matrix):
    runner, _, rows = matrix
    text = runner.pool.base().config.get_text_config()
    assert ffn_width(text) == text.num_experts_per_tok * text.moe_intermediate_size == 64 != text.intermediate_size
    for row in (r for r in rows if r["key"] == "uniform@25%"):
        n = row["kept"]["sequence_after"]
        prefill, _ = llm_flops(torch.full((1, text.num_hidden_layers), n), text.hidden_size, 64, 1)
        assert row["flops"]["llm_prefill"] == pytest.approx(float(prefill[0]))


def test_generate_mode_on_qwen3(toy, tmp_path):
    cfg = tiny_config(tmp_path, toy, "model.name=tiny-random-qwen3", "methods=[{method: none}, {method: uniform}]",
                      "retentions=[0.5]", "data.limit=2", "scoring.mode=generate", "scoring.max_new_tokens=3",
                      "scoring.batch_size=2")
    _, _, rows = run(cfg)
    samples = {s.id: s for s in load_benchmark(cfg.data)}
    assert len(rows) == 4
    for r in rows:
        assert isinstance(r["response"], str) and r["error"] is None
        assert r["prediction"] == parse_letter(r["response"], samples[r["id"]].options)


def test_the_processor_is_the_one_load_model_returns():
    _, processor = load_model("tiny-random-qwen3")
    assert processor is not None and processor.family == "qwen3" and processor.video.factor == 32
