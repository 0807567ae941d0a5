#!/usr/bin/env python
"""Train the learned block's ablations by the recipe of ``configs/fusion.yaml`` (one override each) and score them
next to the untrained block, the trained recipe and the two oracles (evidence, attention), on one ToyWorld split.

    python scripts/ablate_block.py --split val                 # choosing a recipe: the validation split
    python scripts/ablate_block.py --split test --steps 4000   # reporting, once
    python scripts/ablate_block.py --world long --split val    # the same on ToyWorld-Long (configs/fusion_long.yaml)

Each ablation is the documented training command with its override(s), run as a child process
(``train/run.py --config configs/fusion.yaml train.output_dir=runs/ablations/<name> <overrides>``), skipped when its
adapter exists; then one ``eval/run.py --config configs/eval_toy.yaml`` call scores every adapter at 25 % and 10 %
(``runs/ablations/eval_<split>/results.md``, printed at the end).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: world -> (training config, harness config, run root, the harness key of the split)
WORLDS = {
    "toy": ("configs/fusion.yaml", "configs/eval_toy.yaml", Path("runs/ablations"), "data.toyworld.split"),
    "long": ("configs/fusion_long.yaml", "configs/eval_toy_long.yaml", Path("runs/ablations_long"),
             "data.toyworld_long.split"),
}

#: name -> overrides of configs/fusion.yaml (the recipe itself is the empty override)
ABLATIONS: dict[str, list[str]] = {
    "recipe": [],
    "search-all": ["loss.split_scored=null"],
    "split-off": ["fusion.split=off"],
    "allocation-marginal": ["fusion.split=off", "fusion.allocation=true", "fusion.relaxation=marginal"],
    "allocation-soft": ["fusion.split=off", "fusion.allocation=true", "fusion.relaxation=soft",
                        "fusion.temperature=0.05", "fusion.temperature_final=0.005"],
    "allocation-ste": ["fusion.split=off", "fusion.allocation=true", "fusion.relaxation=ste"],
    "lora-off": ["lora.enabled=false"],
    "scorer-trained": ["optim.scorer_lr=2e-5"],
}


def run(command: list[str]) -> None:
    print("$ " + " ".join(command), flush=True)
    status = subprocess.call([sys.executable if c == "python" else c for c in command], cwd=REPO)
    if status:
        sys.exit(f"ablate_block: `{' '.join(command)}` failed with exit status {status}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=sorted(WORLDS), default="toy", help="ToyWorld or ToyWorld-Long")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--steps", type=int, default=None, help="train.steps of every run (default: the recipe's)")
    parser.add_argument("--only", nargs="+", choices=sorted(ABLATIONS), default=None, help="a subset")
    args = parser.parse_args(argv)
    names = args.only or list(ABLATIONS)
    train_config, eval_config, root, split_key = WORLDS[args.world]
    steps = [] if args.steps is None else [f"train.steps={args.steps}", f"train.save_every={args.steps}"]
    for name in names:  # one training run per iteration
        out = root / name
        if (REPO / out / "adapter" / "adapter_model.safetensors").is_file():
            print(f"{out}/adapter exists: not retrained", flush=True)
            continue
        run(["python", "train/run.py", "--config", train_config, f"train.output_dir={out}",
             "train.progress=false", *steps, *ABLATIONS[name]])
    recipe = json.loads((REPO / root / "recipe" / "adapter" / "fusion_config.json").read_text())["block"] \
        if "recipe" in names else None
    methods = [{"method": "fusion", "name": f"fusion-{n}", "adapter": str(root / n / "adapter")} for n in names]
    if recipe is not None:  # the recipe's block at its initialisation, and the oracle at the same joint budget
        keys = ("dim", "heads", "layers", "neighbours", "scorer_hidden", "instruction", "standardise", "allocation",
                "split", "split_shares", "split_prior")
        methods.insert(0, {"method": "fusion", "name": "fusion-untrained", "params": {k: recipe[k] for k in keys}})
    methods.insert(0, {"method": "attention_oracle", "params": {"budget": "joint"}})
    methods.insert(0, {"method": "evidence_oracle", "params": {"budget": "joint"}})
    eval_dir = root / f"eval_{args.split}"
    run(["python", "eval/run.py", "--config", eval_config, f"methods={json.dumps(methods)}",
         f"{split_key}={args.split}", f"run.output_dir={eval_dir}", "run.progress=false"])


if __name__ == "__main__":
    main()
