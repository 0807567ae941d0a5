#!/usr/bin/env python
"""Pre-train the ToyWorld backbone from scratch, uncompressed, all parameters; save it where `load_model("toy")`
finds it.

    PYTHONPATH=. python scripts/pretrain_toy.py --data runs/toyworld --out fusion/assets/toy --steps 6000 --seed 0

Generates ToyWorld (`--n-train`/`--n-test`/`--data-seed`) into `--data` if it is not there, caches the
processor's tensors once, then trains the thinker of `fusion.model.toy.toy_config` with the cross-entropy of
the answer tokens (letter + end of turn): AdamW (betas 0.9/0.98, weight decay 0.01), linear warm-up then
cosine decay to 0.1 x lr over a FIXED number of steps, gradient clip 1.0, batches drawn with replacement by a
seeded generator. Same seed + data + thread count = the same backbone. Writes `model.safetensors`,
`config.json`, the processor files and `pretrain_info.json` (command, seed, steps, timings, accuracies).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from fusion.model.loading import build_random_thinker
from fusion.model.toy import ASSET_DIR, toy_config, toy_processor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy_common import evaluate, format_table, prepare_data  # noqa: E402


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """``lr * (step + 1) / warmup`` during warm-up, then ``lr * (0.1 + 0.9 * (1 + cos(pi * p)) / 2)`` with
    ``p = (step - warmup) / (steps - warmup)``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * p)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("runs/toyworld"))
    parser.add_argument("--out", type=Path, default=ASSET_DIR)
    parser.add_argument("--n-train", type=int, default=8000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--eval-n", type=int, default=200, help="test clips scored at each intermediate eval")
    parser.add_argument("--log-every", type=int, default=100)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    processor = toy_processor()
    splits = prepare_data(args.data, processor, args.n_train, args.n_test, args.data_seed, log)
    train, test = splits["train"], splits["test"]
    config = toy_config(processor.tokenizer)
    model = build_random_thinker(config, seed=args.seed).train()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"toy thinker: {n_params:,} parameters; {len(train)} train / {len(test)} test clips")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed)
    eval_index = torch.randperm(len(test), generator=torch.Generator().manual_seed(1))[: args.eval_n]
    categories = sorted(set(test.categories))

    history, running, step_times = [], None, []
    start = time.perf_counter()
    for step in range(args.steps):  # one optimiser step per iteration
        tick = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        batch = train.batch(torch.randint(len(train), (args.batch_size,), generator=generator), mode="train")
        batch.pop("answer"), batch.pop("n_options")
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step_times.append(time.perf_counter() - tick)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % args.log_every == 0:
            ms = 1000 * sorted(step_times[-args.log_every:])[args.log_every // 2]
            log(f"step {step + 1:5d}  loss {running:.4f}  lr {optimizer.param_groups[0]['lr']:.2e}  "
                f"median step {ms:.0f} ms  elapsed {time.perf_counter() - start:.0f} s")
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            table = evaluate(model, test, processor, eval_index)
            history.append({"step": step + 1, "elapsed_s": round(time.perf_counter() - start, 1), "loss": running,
                            **{k: round(v, 1) for k, v in table.items() if k != "kept"}})
            log("  eval " + " ".join(f"{c} {table[c]:.1f}" for c in categories) + f"  mean {table['mean']:.1f}")
    train_seconds = time.perf_counter() - start

    final = evaluate(model, test, processor)
    log(format_table({"uncompressed (full test)": final}, categories))
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    info = {
        "command": " ".join(["python scripts/pretrain_toy.py", *(argv if argv is not None else sys.argv[1:])]),
        "seed": args.seed, "data_seed": args.data_seed, "n_train": len(train), "n_test": len(test),
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
        "threads": args.threads, "parameters": n_params, "train_seconds": round(train_seconds, 1),
        "median_step_ms": round(1000 * sorted(step_times)[len(step_times) // 2], 1),
        "torch": torch.__version__, "test_accuracy": {k: round(v, 2) for k, v in final.items() if k != "kept"},
        "history": history,
    }
    (args.out / "pretrain_info.json").write_text(json.dumps(info, indent=2))
    log(f"saved the toy backbone to {args.out} ({train_seconds / 60:.1f} min of training)")


if __name__ == "__main__":
    main()
