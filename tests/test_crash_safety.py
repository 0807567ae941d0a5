"""Crash safety with real kills: training and evaluation run in subprocesses that get SIGKILL (at a named point via
``AV_FUSION_CRASH_AT``, see fusion/crash_points.py, or from outside on a marker in their output), then resume.

Training: one run killed five times on its way to the end (inside a checkpoint save, mid-step, between a
checkpoint's rename and ``latest``, from outside, inside the adapter export), against one uninterrupted run started
beside it. Checked: (a) the resumed loss curve and adapter equal the uninterrupted run's; (b) after every kill the
previous checkpoint is ``latest`` and loads (the next resume starts from it), and the previous adapter is intact and
loads. Evaluation: killed mid matrix row, its last sample line then torn by hand; (c) the resumed run scores every
(setting, question) exactly once, with the uninterrupted run's predictions and accuracies; (d) the torn line is
reported and redone. Each subprocess is the tiny random model on synthetic data / 6 ToyWorld clips (~10 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from eval_helpers import toy_split
from safetensors.torch import load_file

from eval.config import EvalConfig
from eval.report import write_outputs
from eval.runner import Runner
from fusion import load_model
from fusion.config import load_config
from fusion.crash_points import ENV, POINTS, crash_point, parse
from fusion.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
STEPS = 6
TRAIN = ["--config", "configs/fusion.yaml", "model.name=tiny-random", "data.source=synthetic", "fusion.dim=32",
         "fusion.scorer_hidden=16", "fusion.instruction=true", "data.synthetic.n_samples=6", f"train.steps={STEPS}",
         "train.save_every=2", "train.keep_checkpoints=2", "train.log_every=1", "train.micro_batch_size=2",
         "train.global_batch_size=2",
         "optim.warmup_steps=0", "optim.lr=5e-3", "optim.block_lr=5e-3", "train.progress=false",
         "wandb.enabled=false", "train.retentions=[0.5,0.25]"]
KILLED = -signal.SIGKILL
# the same environment for every run (one thread each: the two first runs go side by side, with equal numerics)
ENVIRONMENT = {**{k: v for k, v in os.environ.items() if k != ENV}, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _start(script: str, args: list[str], crash: str | None = None) -> subprocess.Popen:
    env = {**ENVIRONMENT, **({ENV: crash} if crash else {})}
    return subprocess.Popen([sys.executable, script, *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, expect: int) -> str:
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == expect, log[-4000:]
    return log


def _train(run_dir: Path, *extra: str, crash: str | None = None) -> str:
    proc = _start("train/run.py", [*TRAIN, f"train.output_dir={run_dir}", *extra], crash)
    return _finish(proc, KILLED if crash else 0)


def _kill_on(proc: subprocess.Popen, marker: str) -> str:
    """Read ``proc``'s output until a line holds ``marker``, then SIGKILL it from here; returns the output."""
    guard = threading.Timer(300, proc.kill)  # never hang the suite on a run that stalls
    guard.start()
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if marker in line:
                proc.send_signal(signal.SIGKILL)
                break
        return "".join(seen) + _finish(proc, KILLED)
    finally:
        guard.cancel()


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _latest(run_dir: Path) -> str:
    return (run_dir / "checkpoints" / "latest").read_text()


def _tensors(adapter: Path) -> dict[str, torch.Tensor]:
    return load_file(str(adapter / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    """The uninterrupted run (beside the first killed one) and the killed run's state after each kill."""
    root = tmp_path_factory.mktemp("crash-train")
    full, run = root / "full", root / "killed"
    reference = _start("train/run.py", [*TRAIN, f"train.output_dir={full}"])
    after, logs = {}, {}
    # 1. inside the 2nd checkpoint save (step 4): its files written to the temporary tag, not yet renamed
    logs["save"] = _train(run, crash="checkpoint-save:2")
    after["save"] = {"latest": _latest(run), "steps": [m["step"] for m in _metrics(run)],
                     "partial": (run / "checkpoints" / ".tmp-step-000004").is_dir(),
                     "state": json.loads((run / "checkpoints" / "step-000002" / "trainer_state.json").read_text())}
    _finish(reference, 0)
    # 2. mid-step: resumed at step 2, killed after the backward of its 3rd step (step 5), before the optimizer step
    logs["step"] = _train(run, "train.resume=true", crash="train-step:3")
    after["step"] = {"latest": _latest(run), "steps": [m["step"] for m in _metrics(run)]}
    # 3. step 6 saved and renamed into place, killed before `latest` names it
    logs["latest"] = _train(run, "train.resume=true", crash="checkpoint-latest:1")
    after["latest"] = {"latest": _latest(run), "dirs": sorted(p.name for p in (run / "checkpoints").glob("step-*"))}
    # 4. from outside: SIGKILL as soon as the resumed run reports step 5 (lands in step 6, its save or the export)
    logs["external"] = _kill_on(_start("train/run.py", [*TRAIN, f"train.output_dir={run}", "train.resume=true"]),
                                f"step 5/{STEPS} | loss")
    # 5. resumed to the end
    logs["end"] = _train(run, "train.resume=true")
    after["end"] = {"adapter": _tensors(run / "adapter"), "metrics": _metrics(run),
                    "listing": sorted(p.name for p in run.iterdir()),
                    "checkpoints": sorted(p.name for p in (run / "checkpoints").iterdir() if p.name != "zero_to_fp32.py"
                                          and p.name != "zero_to_torch.py")}
    # 6. the finished run exported again, killed with the new adapter staged but not yet in place
    before = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    logs["adapter"] = _train(run, "train.resume=true", crash="adapter-save:1")
    after["adapter"] = {"same_bytes": (run / "adapter" / "adapter_model.safetensors").read_bytes() == before,
                        "staged": (run / ".adapter-staging" / "adapter_model.safetensors").is_file()}
    return full, run, logs, after


def test_a_kill_inside_a_checkpoint_save_leaves_the_previous_checkpoint(training):
    _, _, logs, after = training
    assert f"[{ENV}] killing process" in logs["save"] and "at checkpoint-save:2" in logs["save"]
    assert {k: after["save"][k] for k in ("latest", "steps", "partial")} == \
        {"latest": "step-000002", "steps": [1, 2, 3, 4], "partial": True}  # step 4's files only in the temporary tag
    assert after["save"]["state"]["step"] == 2
    assert "resumed at step 2" in logs["step"]  # the previous checkpoint loads
    assert "dropped 2 row(s) after step 2" in logs["step"]  # metrics.jsonl: the killed run's steps 3-4, redone


def test_a_kill_mid_step_resumes_from_the_last_checkpoint(training):
    _, _, logs, after = training
    assert "at train-step:3" in logs["step"] and f"step 4/{STEPS} | loss" in logs["step"]
    assert f"step 5/{STEPS}" not in logs["step"]  # killed inside step 5: no metrics for it
    assert after["step"] == {"latest": "step-000004", "steps": [1, 2, 3, 4]}
    assert "resumed at step 4" in logs["latest"]


def test_a_kill_before_latest_is_updated_keeps_the_older_checkpoint_latest(training):
    _, _, logs, after = training
    assert "at checkpoint-latest:1" in logs["latest"]
    assert after["latest"] == {"latest": "step-000004", "dirs": ["step-000002", "step-000004", "step-000006"]}
    assert "resumed at step 4" in logs["external"]  # from the checkpoint `latest` names, not the unnamed step 6


def test_an_external_kill_then_resume_finishes_the_run(training):
    _, _, logs, _ = training
    assert f"step 5/{STEPS} | loss" in logs["external"] and "adapter written" not in logs["external"]
    assert "resumed at step" in logs["end"] and "adapter written to" in logs["end"]


def test_the_resumed_loss_curve_and_adapter_equal_the_uninterrupted_runs(training):
    full, _, _, after = training
    reference, resumed = _metrics(full), after["end"]["metrics"]
    assert [m["step"] for m in resumed] == list(range(1, STEPS + 1))  # each step once, in order
    for key in ("loss", "ce", "lr", "video_kept", "audio_kept"):
        assert [m[key] for m in resumed] == pytest.approx([m[key] for m in reference], rel=1e-6), key
    expected = _tensors(full / "adapter")
    got = after["end"]["adapter"]
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-7)
    assert after["end"]["checkpoints"] == ["latest", "step-000004", "step-000006"]  # no .tmp-/.old- leftovers
    assert not [n for n in after["end"]["listing"] if "staging" in n or n.endswith((".tmp", ".old"))]


def test_a_kill_inside_the_adapter_export_keeps_the_previous_adapter_loadable(training):
    full, run, logs, after = training
    assert "resumed at step 6" in logs["adapter"] and "at adapter-save:1" in logs["adapter"]
    assert after["adapter"] == {"same_bytes": True, "staged": True}  # the new one was written, not yet swapped in
    load_model("tiny-random", method="fusion", adapter=run / "adapter")  # loads (LoRA + block + fusion_config)
    expected, got = _tensors(full / "adapter"), _tensors(run / "adapter")
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)


# ----------------------------------------------------------------------------------------------------- evaluation
def _eval_args(toy: Path, out: Path) -> list[str]:
    return ["model.name=tiny-random", "model.device=cpu", f"data.toyworld.dir={toy}", f"run.output_dir={out}",
            "run.progress=false", "scoring.warmup=0", "methods=[{method: none}, {method: uniform}]",
            "retentions=[0.25,0.5]", "data.limit=6", "scoring.batch_size=2"]


def _evaluate(args: list[str]) -> tuple[Runner, dict, list[str]]:
    messages: list[str] = []
    runner = Runner(load_config(EvalConfig, None, args), log=messages.append)
    runner.run()
    results = runner.results()
    write_outputs(results, runner.run_dir)
    return runner, results, messages


def _scored(run_dir: Path) -> list[tuple]:
    rows = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    return sorted((r["key"], r["id"], r["prediction"], r["correct"], r["error"]) for r in rows)


def test_an_eval_killed_mid_row_resumes_without_losing_or_repeating_a_sample(tmp_path_factory):
    toy = toy_split(tmp_path_factory.mktemp("crash-toy"), n=6)
    root = tmp_path_factory.mktemp("crash-eval")
    killed = _start("eval/run.py", _eval_args(toy, root / "killed"), crash="eval-row:5")
    _, reference, _ = _evaluate(_eval_args(toy, root / "full"))  # in this process, while the other one runs
    log = _finish(killed, KILLED)
    assert "at eval-row:5" in log
    samples = root / "killed" / "samples.jsonl"
    lines = samples.read_text().splitlines()
    assert len(lines) == 5 and not (root / "killed" / "results.json").exists()
    # 3 settings x 3 batches of 2, batch-major: row 5 is setting 3's first sample of batch 1, its second one missing
    torn = lines[-1][: len(lines[-1]) // 2]  # and the last row torn, as a kill inside its write would leave it
    samples.write_text("\n".join(lines[:-1]) + "\n" + torn)

    runner, results, messages = _evaluate(_eval_args(toy, root / "killed"))
    assert any("line 5: a row torn by a crash" in m and "redone" in m for m in messages), messages
    assert runner.calls == 1 + 2 * 3  # batch 1 for setting 3 (its rows 5 and 6), batches 2 and 3 for every setting
    scored = _scored(root / "killed")
    assert scored == _scored(root / "full")  # every (setting, question) once, with the same prediction
    assert len({(k, i) for k, i, *_ in scored}) == len(scored) == 18
    assert [(r["key"], r["n_samples"], r["n_failed"], r["accuracy"]) for r in results["rows"]] == \
        [(r["key"], r["n_samples"], r["n_failed"], r["accuracy"]) for r in reference["rows"]]
    on_disk = json.loads((root / "killed" / "results.json").read_text())
    assert [r["accuracy"] for r in on_disk["rows"]] == [r["accuracy"] for r in reference["rows"]]


# ------------------------------------------------------------------------------------------------- the hook itself
def test_crash_points_are_inert_without_the_variable_and_validate_it(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    for name in POINTS:
        crash_point(name)  # no variable: nothing happens
    with pytest.raises(ValueError, match="not one of"):
        crash_point("checkpoint-saev")
    assert parse("train-step:3, eval-row") == {"train-step": 3, "eval-row": 1}
    with pytest.raises(ConfigError, match="unknown crash point 'train'.*train-step"):
        parse("train:1")
    with pytest.raises(ConfigError, match="positive count"):
        parse("eval-row:0")
    monkeypatch.setenv(ENV, "eval-row:1000")
    crash_point("eval-row")  # counted, far from its 1000th pass
