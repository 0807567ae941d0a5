#!/usr/bin/env python
"""Prefill time of the stock HF thinker vs the compressed thinker at retention 1.0 (same weights, same inputs).

    python scripts/bench_hook_overhead.py [--repeats 15] [--seconds 8] [--threads 1]

Prints, for the tiny random config and a mid-size random config (the 3B config shrunk for CPU), the median
time of both and their ratio. Calls are interleaved so drift hits both equally.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from transformers import Qwen2_5OmniThinkerForConditionalGeneration

from fusion import load_model
from fusion.bench.report import environment, markdown_table
from fusion.bench.timing import interleave, seconds_of
from fusion.model.configs import scaled_config
from fusion.model.loading import build_random_thinker
from fusion.pruners import METHODS
from fusion.testing import random_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(environment("cpu", torch.float32, "sdpa"))
    tiny, _ = load_model("tiny-random")
    mid = build_random_thinker(scaled_config("qwen2_5_omni_3b"), seed=0).eval()
    rows = []
    for label, ours, frame in (("tiny", tiny, 56), ("mid (3B shrunk)", mid, 112)):
        ours.set_compressor(METHODS.build("uniform", retention=1.0))
        stock = Qwen2_5OmniThinkerForConditionalGeneration(ours.config).eval()
        stock.load_state_dict(ours.state_dict(), strict=False)
        inputs = random_inputs(ours, seconds=args.seconds, frame_size=frame)
        with torch.no_grad():
            runs = {name: lambda m=m, x=inputs: seconds_of(lambda: m(**x)) for name, m in (("stock", stock),
                                                                                          ("hook", ours))}
            times = interleave(runs, args.repeats, warmup=2)
        t = {name: statistics.median(v) for name, v in times.items()}
        params = sum(p.numel() for p in ours.parameters()) / 1e6
        rows.append([label, f"{params:.1f} M", inputs["input_ids"].shape[1], f"{t['stock'] * 1e3:.2f}",
                     f"{t['hook'] * 1e3:.2f}", f"{t['hook'] / t['stock']:.3f}"])
    print(markdown_table(["config", "params", "sequence", "stock (ms)", "hook r=1.0 (ms)", "ratio"], rows))


if __name__ == "__main__":
    main()
