"""scripts/pretrain_toy.py: the LR schedule, and data-parallel training equal to one process on the same batches."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from pretrain_toy import lr_at  # noqa: E402


def test_lr_schedule_warms_up_holds_then_decays_to_a_tenth():
    assert [lr_at(s, 100, 1.0, 10) for s in (0, 9)] == [0.1, 1.0]
    assert lr_at(55, 100, 1.0, 10) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    # decay over the last 20 %: constant until step 80, then cosine from 1 to 0.1
    assert [lr_at(s, 100, 1.0, 10, 0.2) for s in (10, 50, 80)] == [1.0, 1.0, 1.0]
    assert lr_at(90, 100, 1.0, 10, 0.2) == pytest.approx(0.55)
    assert lr_at(100, 100, 1.0, 10, 0.2) == pytest.approx(0.1)


def _pretrain(tmp_path: Path, name: str, *extra: str) -> dict:
    out = tmp_path / name
    cmd = [sys.executable, "scripts/pretrain_toy.py", "--data", str(tmp_path / "toyworld"), "--out", str(out),
           "--n-train", "8", "--n-test", "4", "--batch-size", "4", "--augment", "0", "--eval-every", "0",
           "--log-every", "1", "--threads", "1", "--procs", "1", "--lr", "1e-3", "--warmup", "1", *extra]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    return load_file(out / "model.safetensors")


def test_two_processes_train_what_one_process_trains(tmp_path):
    """Same seed, same batches (every rank draws the whole batch and takes its half), gradients averaged over the
    ranks, per-sample losses gathered in batch order for the loss-balanced sampler: after 4 steps the weights match
    the one-process run to float precision, far closer than either is to the initial weights."""
    init = _pretrain(tmp_path, "init", "--steps", "0")
    one = _pretrain(tmp_path, "one", "--steps", "4", "--procs", "1", "--sampling", "loss")
    two = _pretrain(tmp_path, "two", "--steps", "4", "--procs", "2", "--sampling", "loss")
    moved = max((one[k] - init[k]).abs().max().item() for k in init)
    apart = max((one[k] - two[k]).abs().max().item() for k in init)
    assert moved > 1e-3
    assert apart < 1e-3 * moved


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tmp_path):
    run = subprocess.run([sys.executable, "scripts/pretrain_toy.py", "--batch-size", "5", "--procs", "2",
                          "--data", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 2 and "must split evenly" in run.stderr
