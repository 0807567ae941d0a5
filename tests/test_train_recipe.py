"""The recipe end to end on the tiny model, through the DeepSpeed launcher (ZeRO-2, CPU, gloo): the files and log
lines it writes, the adapter round trip (load_model and PeftModel.from_pretrained reproduce the trained model's
logits exactly) and an exact resume (stop after step 3, resume from the step-2 checkpoint, same losses).

Three processes (~4 s of launcher each, the rest is imports and the tiny model): one uninterrupted run through
the launcher, one run stopped after step 3 through the launcher, and its resumption with plain
``python train/run.py`` (the single-process entry point).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from fusion import load_model
from fusion.block import attach_block
from fusion.config import load_config
from train.config import RunConfig
from train.loss import answer_logits, pruned_labels
from train.sources import build_source

REPO = Path(__file__).resolve().parents[1]
STEPS = 4
COMMON = ["model.name=tiny-random", "data.source=synthetic", "fusion.dim=32", "fusion.scorer_hidden=16",
          "fusion.instruction=true", "data.synthetic.n_samples=6",
          f"train.steps={STEPS}", "train.save_every=2", "train.log_every=1", "train.micro_batch_size=2",
          "train.global_batch_size=2",
          "optim.warmup_steps=0", "optim.lr=5e-3", "optim.block_lr=5e-3", "train.progress=false",
          "wandb.enabled=false", "train.retentions=[0.5,0.25]"]  # the block alternates budgets: 50 %, 25 %, ...
SCHEDULE = [0.5, 0.25]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(output_dir: Path, *extra: str, launcher: bool = True) -> str:
    script = ["train/run.py", "--config", "configs/fusion.yaml", *COMMON, f"train.output_dir={output_dir}", *extra]
    if launcher:  # launcher options go before the script; a free port so parallel runs on one machine coexist
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--master_port", str(_free_port()), *script]
    else:
        cmd = [sys.executable, *script]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    logs = {"full": _run(root / "full")}
    logs["killed"] = _run(root / "resumed", "train.stop_after=3")
    after_kill = {"adapter": (root / "resumed" / "adapter").exists(),
                  "latest": (root / "resumed" / "checkpoints" / "latest").read_text()}
    logs["resumed"] = _run(root / "resumed", "train.resume=true", launcher=False)
    return root, logs, after_kill


def test_launcher_run_writes_the_run_directory_and_log_lines(runs):
    root, logs, _ = runs
    run_dir, log = root / "full", logs["full"]
    assert "--local_rank=0" in log  # really spawned by the DeepSpeed launcher
    assert "resolved config" in log and "ZeRO stage 2 | fp32 | world 1" in log
    assert [f"step {s}/{STEPS} | loss" in log for s in range(1, STEPS + 1)] == [True] * STEPS
    assert f"adapter written to {run_dir / 'adapter'}" in log
    assert "token cache: 6 samples" in log  # every sample's frozen-encoder tokens built once (train/token_cache.py)

    cfg = load_config(RunConfig, run_dir / "config.yaml")
    assert cfg.fusion.dim == 32 and cfg.train.steps == STEPS and cfg.train.output_dir == str(run_dir)
    metrics = _metrics(run_dir)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert metrics[-1]["loss"] < metrics[0]["loss"]  # the answer is learnable: the loss drops
    kept = [(m["video_kept"] + m["audio_kept"]) / (m["video_total"] + m["audio_total"]) for m in metrics]
    assert all(abs(k - SCHEDULE[i % 2]) < 0.03 for i, k in enumerate(kept)), kept  # ceil(r * N) per sample
    assert json.loads((run_dir / "adapter" / "fusion_config.json").read_text())["block"]["retention"] == 0.25

    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text() == f"step-{STEPS:06d}"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-000002", "step-000004"]
    states = torch.load(checkpoints / "step-000004" / "mp_rank_00_model_states.pt", weights_only=True)
    assert states["module"] and all("lora_" in k or ".av_fusion.modules_to_save." in k for k in states["module"])
    assert {p.name for p in (run_dir / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors",
                                                                 "fusion_config.json"}
    assert (run_dir / "final_probe.safetensors").is_file()


def test_the_adapter_reproduces_the_trained_models_logits(runs):
    root, _, _ = runs
    run_dir = root / "full"
    probe = load_file(str(run_dir / "final_probe.safetensors"))  # written by the trained engine itself
    cfg = load_config(RunConfig, run_dir / "config.yaml")

    model, processor = load_model("tiny-random", method="fusion", adapter=run_dir / "adapter")
    thinker, _ = load_model("tiny-random")
    attach_block(thinker, run_dir / "adapter")
    plain = PeftModel.from_pretrained(thinker, str(run_dir / "adapter")).eval()
    base, _ = load_model("tiny-random")

    source = build_source(cfg.data, processor, model.get_base_model().config)
    batch = source.collate([source.example(i) for i in probe["indices"].tolist()])
    labels = batch.pop("labels")
    rows = {}
    for name, m in (("load_model", model), ("PeftModel", plain), ("base", base)):
        with torch.no_grad():
            out = m(**batch)
        rows[name] = answer_logits(out.logits, pruned_labels(labels, out.source_index))
    assert torch.equal(rows["load_model"], probe["logits"])
    assert torch.equal(rows["PeftModel"], probe["logits"])
    assert not torch.allclose(rows["base"], probe["logits"], atol=1e-2)  # training changed the answers


def test_resume_continues_with_the_same_losses_as_the_uninterrupted_run(runs):
    root, logs, after_kill = runs
    assert "stopping after step 3 (train.stop_after)" in logs["killed"]
    assert after_kill == {"adapter": False, "latest": "step-000002"}
    assert "resumed at step 2" in logs["resumed"]
    full = {m["step"]: m["loss"] for m in _metrics(root / "full")}
    assert "dropped 1 row(s) after step 2" in logs["resumed"]  # the stopped run's step 3, redone
    resumed = _metrics(root / "resumed")  # steps 1-2 of the stopped run, then 3-4 of the resumed one
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    assert all(m["loss"] == full[m["step"]] for m in resumed)  # exactly, not approximately
    a = load_file(str(root / "full" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(root / "resumed" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_token_cache_trains_what_rebuilding_every_step_trains(runs, tmp_path):
    """Same losses with ``train.token_cache_gib=0`` (the encoders and TMRoPE ids recomputed per step), up to the
    float rounding of building the samples in other batches."""
    root, _, _ = runs
    log = _run(tmp_path / "uncached", "train.token_cache_gib=0", launcher=False)
    assert "token cache" not in log
    cached = [m["loss"] for m in _metrics(root / "full")]
    rebuilt = [m["loss"] for m in _metrics(tmp_path / "uncached")]
    assert len(rebuilt) == STEPS and torch.allclose(torch.tensor(rebuilt), torch.tensor(cached), rtol=1e-4, atol=1e-5)
