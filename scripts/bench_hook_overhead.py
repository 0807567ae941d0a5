#!/usr/bin/env python
"""Prefill time of the stock HF thinker vs the compressed thinker at retention 1.0 (same weights, same inputs).

    python scripts/bench_hook_overhead.py [--repeats 15] [--seconds 8]

Prints, for the tiny random config and a mid-size random config (the 3B config shrunk for CPU), the median
time of both and their ratio. Calls are interleaved so drift hits both equally.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import transformers
from transformers import Qwen2_5OmniThinkerForConditionalGeneration

from fusion import load_model
from fusion.model.configs import scaled_config
from fusion.model.loading import build_random_thinker
from fusion.pruners import METHODS
from fusion.testing import random_inputs


def median_times(models: dict, inputs: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for i in range(warmup + repeats):
            for name, model in models.items():  # interleaved
                start = time.perf_counter()
                model(**inputs)
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {platform.processor() or 'cpu'}, "
          f"{torch.get_num_threads()} threads, fp32, sdpa")
    tiny, _ = load_model("tiny-random")
    mid = build_random_thinker(scaled_config("qwen2_5_omni_3b"), seed=0).eval()
    print("| config | params | sequence | stock (ms) | hook r=1.0 (ms) | ratio |\n|---|---|---|---|---|---|")
    for label, ours, frame in (("tiny", tiny, 56), ("mid (3B shrunk)", mid, 112)):
        ours.set_compressor(METHODS.build("uniform", retention=1.0))
        stock = Qwen2_5OmniThinkerForConditionalGeneration(ours.config).eval()
        stock.load_state_dict(ours.state_dict(), strict=False)
        inputs = random_inputs(ours, seconds=args.seconds, frame_size=frame)
        t = median_times({"stock": stock, "hook": ours}, inputs, args.repeats)
        params = sum(p.numel() for p in ours.parameters()) / 1e6
        print(f"| {label} | {params:.1f} M | {inputs['input_ids'].shape[1]} | {t['stock'] * 1e3:.2f} | "
              f"{t['hook'] * 1e3:.2f} | {t['hook'] / t['stock']:.3f} |")


if __name__ == "__main__":
    main()
