#!/usr/bin/env python
"""`make demo`: the main job on the embedded default, ToyWorld and the pre-trained toy backbone, end to end.

1. ToyWorld into ``runs/toyworld`` (8,000 train + 500 validation + 1,000 test real .mp4 clips, seed 0), when it
   is not there (the recipe was chosen on the validation split; the table reports the test split):
       python -m fusion.data.toyworld --out runs/toyworld --n-train 8000 --n-val 500 --n-test 1000 --seed 0
2. the learned fusion block + LoRA on the frozen toy backbone at 25 % retention, when ``runs/fusion/adapter`` is
   not there (DeepSpeed ZeRO-2 on the CPU through the launcher, or one plain process with ``--no-launcher``):
       deepspeed train/run.py --config configs/fusion.yaml
3. every method at 25 % and 10 % retention, the uncompressed backbone and the trained block, on the 1,000 test clips:
       python eval/run.py --config configs/eval_toy.yaml
4. ends with the table of ``runs/eval_toy/results.md`` (printed by the harness; its plot:
   ``runs/eval_toy/accuracy_vs_retention.png``).

Each step is the documented command, run as a child process from the repository root, so what the demo does is what
a user types. A rerun skips the finished steps (the evaluation resumes from its ``samples.jsonl``); ``--retrain``
trains the block again.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOYWORLD = Path("runs/toyworld")
TRAIN_DIR = Path("runs/fusion")
EVAL_DIR = Path("runs/eval_toy")


def run(step: str, command: list[str]) -> None:
    """Run one documented command from the repository root; stop the demo with its exit status if it fails."""
    print(f"\n== {step}\n$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    status = subprocess.call([sys.executable if c == "python" else c for c in command], cwd=REPO)
    if status:
        sys.exit(f"demo: step '{step}' failed with exit status {status}; its output is above")
    print(f"== {step}: done in {time.perf_counter() - start:.0f} s", flush=True)


def deepspeed_launcher() -> list[str] | None:
    """``deepspeed`` next to this interpreter (the venv's), else None."""
    launcher = Path(sys.executable).parent / "deepspeed"
    return [str(launcher)] if launcher.is_file() else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--retrain", action="store_true", help="train the block again even if its adapter exists")
    parser.add_argument("--no-launcher", action="store_true", help="train in one plain process (no deepspeed)")
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    if not all((REPO / TOYWORLD / f"{split}.jsonl").is_file() for split in ("train", "val", "test")):
        run("generate ToyWorld", ["python", "-m", "fusion.data.toyworld", "--out", str(TOYWORLD),
                                  "--n-train", "8000", "--n-val", "500", "--n-test", "1000", "--seed", "0"])

    adapter = TRAIN_DIR / "adapter"  # where configs/eval_toy.yaml's `fusion` entry reads it
    if args.retrain and (REPO / TRAIN_DIR).exists():
        shutil.rmtree(REPO / TRAIN_DIR)
    if not (REPO / adapter / "adapter_model.safetensors").is_file():
        launcher = None if args.no_launcher else deepspeed_launcher()
        script = ["train/run.py", "--config", "configs/fusion.yaml", f"train.output_dir={TRAIN_DIR}"]
        run("train the fusion block", [*(launcher or ["python"]), *script])
    else:
        print(f"\n== train the fusion block: {adapter} exists (pass --retrain to train again)")

    run("compare every method", ["python", "eval/run.py", "--config", "configs/eval_toy.yaml",
                                 f"run.output_dir={EVAL_DIR}"])
    results = REPO / EVAL_DIR / "results.md"  # eval/run.py has just printed it
    print(f"\ndemo done: {results} (the table above), {results.with_name('accuracy_vs_retention.png')}")


if __name__ == "__main__":
    main()
