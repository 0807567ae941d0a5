"""Training on several ranks: 2 CPU ranks (gloo) through the DeepSpeed launcher give the loss curve of one rank with
the same global batch, rank 0's adapter round-trips, and under ZeRO-3 the adapter holds the full gathered weights.

The 2-rank runs are ``python -m deepspeed.launcher.runner --num_gpus 2 train/run.py ...`` (what the ``deepspeed``
command runs; on CPU ``--num_gpus`` is the number of processes). Three runs, one thread per rank (~1 min on 2 idle
cores, almost all of it the imports of 5 rank and 4 launcher processes):

* ``one``: plain ``python train/run.py``, 1 rank x 4 micro-batches of 2 per step (global batch 8);
* ``two``: 2 ranks x 2 micro-batches of 2 (ZeRO-2, the recipe's default), the same YAML and overrides;
* ``zero3``: 2 ranks with ``configs/deepspeed/zero3.json`` (``fusion.split=off``: the searched split's extra
  language-model passes cost seconds per step under ZeRO-3 on CPU).

``one`` and ``two`` use the searched split (per-sample exploration draws, 4 of its shares scored per sample) and LoRA
dropout, so the curves only agree if that randomness follows the global sample position, not the rank.
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
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file

from fusion import load_model
from fusion.block import attach_block
from fusion.config import load_config
from train.config import RunConfig
from train.loss import answer_logits, pruned_labels
from train.model import build_model
from train.sources import build_source

REPO = Path(__file__).resolve().parents[1]
STEPS = 3
COMMON = ["--config", "configs/fusion.yaml", "model.name=tiny-random", "data.source=synthetic", "fusion.dim=32",
          "fusion.scorer_hidden=16", "fusion.instruction=true", "data.synthetic.n_samples=12", f"train.steps={STEPS}",
          f"train.save_every={STEPS}", "train.log_every=1", "train.micro_batch_size=2", "train.global_batch_size=8",
          "train.bf16=false", "lora.dropout=0.1", "optim.warmup_steps=0", "optim.lr=5e-3", "optim.block_lr=5e-3",
          "train.progress=false", "wandb.enabled=false", "train.retentions=[0.5,0.25]", "loss.split_scored=4"]
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
RTOL = 1e-5

pytestmark = pytest.mark.skipif(torch.cuda.device_count() == 1, reason="two ranks need two GPUs (or none: CPU)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(run_dir: Path, ranks: int, *extra: str) -> subprocess.Popen:
    script = ["train/run.py", *COMMON, f"train.output_dir={run_dir}", *extra]
    if ranks == 1:
        cmd = [sys.executable, *script]
    else:  # launcher options before the script; a free port so parallel runs coexist
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "--master_port",
               str(_free_port()), *script]
    return subprocess.Popen(cmd, cwd=REPO, env=ENVIRONMENT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    logs = {}

    def finish(name: str, proc: subprocess.Popen) -> None:
        logs[name], _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}:\n{logs[name][-4000:]}"

    # one rank uses one core: it goes beside the first 2-rank run; a third run beside them only thrashes 2 cores
    one, two = _start(root / "one", 1), _start(root / "two", 2)
    finish("one", one)
    finish("two", two)
    finish("zero3", _start(root / "zero3", 2, "deepspeed=configs/deepspeed/zero3.json", "fusion.split=off"))
    return root, logs


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _round_trip(run_dir: Path) -> None:
    """load_model and PeftModel.from_pretrained on rank 0's adapter reproduce the trained engine's probe logits."""
    probe = load_file(str(run_dir / "final_probe.safetensors"))  # written by rank 0 from the in-memory model
    cfg = load_config(RunConfig, run_dir / "config.yaml")
    model, processor = load_model("tiny-random", method="fusion", adapter=run_dir / "adapter")
    thinker, _ = load_model("tiny-random")
    attach_block(thinker, run_dir / "adapter")
    plain = PeftModel.from_pretrained(thinker, str(run_dir / "adapter")).eval()
    source = build_source(cfg.data, processor, model.get_base_model().config)
    batch = source.collate([source.example(i) for i in probe["indices"].tolist()])
    labels = batch.pop("labels")
    for m in (model, plain):
        with torch.no_grad():
            out = m(**batch)
        torch.testing.assert_close(answer_logits(out.logits, pruned_labels(labels, out.source_index)),
                                   probe["logits"], rtol=1e-5, atol=1e-6)


def test_two_ranks_with_the_same_global_batch_give_one_ranks_loss_curve(runs):
    root, logs = runs
    assert "--local_rank=1" in logs["two"]  # really two processes spawned by the DeepSpeed launcher
    assert "world 1 | global batch 8 = 2 x 4 accum x 1 rank(s)" in logs["one"]
    assert "world 2 | global batch 8 = 2 x 2 accum x 2 rank(s)" in logs["two"]
    one, two = _metrics(root / "one"), _metrics(root / "two")
    assert [m["step"] for m in one] == [m["step"] for m in two] == list(range(1, STEPS + 1))
    for a, b in zip(one, two):
        for key in ("loss", "ce", "split"):
            assert b[key] == pytest.approx(a[key], rel=RTOL), (a["step"], key, a[key], b[key])
        assert a["split"] > 0  # the searched split ran (its exploration draws are per sample position)
        counts = ("video_kept", "video_total", "audio_kept", "audio_total", "lr")
        assert [a[k] for k in counts] == [b[k] for k in counts]  # the same samples, the same selection, same lr
    w1 = load_file(str(root / "one" / "adapter" / "adapter_model.safetensors"))
    w2 = load_file(str(root / "two" / "adapter" / "adapter_model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:  # Adam may amplify the gradient sums' rounding a little: relative to each tensor's scale
        assert (w1[k] - w2[k]).abs().max() <= 1e-4 * w1[k].abs().max() + 1e-7, k


def test_rank_zeros_adapter_round_trips(runs):
    root, _ = runs
    _round_trip(root / "two")


def test_zero3_saves_the_full_gathered_trained_weights(runs):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    root, logs = runs
    run_dir = root / "zero3"
    assert "ZeRO stage 3 | fp32 | world 2 | global batch 8 = 2 x 2 accum x 2 rank(s)" in logs["zero3"]
    saved = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    # the unsharded model of the same config: every tensor has its full shape (a ZeRO-3 shard not gathered is (0,))
    reference, _ = build_model(load_config(RunConfig, run_dir / "config.yaml"))
    shapes = {k: v.shape for k, v in get_peft_model_state_dict(reference).items()}
    assert {k: v.shape for k, v in saved.items()} == shapes
    assert all(v.numel() > 0 for v in saved.values())
    # the trained values: DeepSpeed's own reconstruction of the fp32 weights from the two ranks' checkpoint shards
    trained = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag=f"step-{STEPS:06d}",
                                                       exclude_frozen_parameters=True)
    trained = {k.replace(".modules_to_save.default.", ".").replace(".default.", "."): v for k, v in trained.items()}
    assert trained and set(trained) <= set(saved)  # the rest: the frozen scorer, saved with the block
    assert all(torch.equal(saved[k], v) for k, v in trained.items())
    assert any("lora_B" in k and saved[k].abs().max() > 0 for k in saved)  # trained away from LoRA's zero init
    _round_trip(run_dir)
