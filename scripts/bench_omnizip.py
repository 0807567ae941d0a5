#!/usr/bin/env python
"""Selection time of OmniZip (core, units) and segmentwise top-K on OmniZip's paper layout, without the model.

    python scripts/bench_omnizip.py [--seconds 30 120] [--dim 3584] [--repeats 5]

Builds one sample per clip length in the exact Qwen2.5-Omni interleaved layout (2 grids of 144 tokens + 50 audio
tokens per 2-s window, 7B width by default) with random embeddings and audio scores, and prints the median time
of ``select`` (the pruning step only: encoders and LLM excluded) and the measured retention. The paper reports
< 40 ms for its pruning step on a GPU.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from fusion.model.annotate import annotate_tokens
from fusion.model.configs import real_config
from fusion.model.layout import SpecialIds, av_block_ids
from fusion.pruners import METHODS


def paper_tokens(config, seconds: int, dim: int, seed: int = 0):
    """AVTokens of one clip: ``seconds`` grids of 12x12 merged tokens (fps 2), 25 audio tokens per second."""
    ids = SpecialIds.from_config(config)
    block = av_block_ids(ids, seconds, 144, 1.0, 25 * seconds)
    input_ids = torch.tensor([[11] * 20 + block + [11] * 30])
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, input_ids.shape[1], dim, generator=g)
    positions = torch.arange(input_ids.shape[1]).expand(3, 1, -1).clone()
    grid = torch.tensor([[seconds, 24, 24]])
    tokens = annotate_tokens(embeds, input_ids, torch.ones_like(input_ids), positions, grid, config)
    scores = torch.full(input_ids.shape, float("nan"))
    scores[tokens.audio_mask] = torch.rand(int(tokens.audio_mask.sum()), generator=g)
    tokens.extras["audio_attention_global"] = scores
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, nargs="+", default=[30, 120])
    parser.add_argument("--dim", type=int, default=3584, help="embedding width (3584 = 7B, 2048 = 3B)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = real_config("qwen2_5_omni_7b")
    print(f"torch {torch.__version__}, {platform.processor() or 'cpu'}, {torch.get_num_threads()} threads, fp32, "
          f"width {args.dim}, median of {args.repeats}")
    methods = {
        "omnizip core (.3/.6)": METHODS.build("omnizip", rho_audio=0.3, rho_video=0.6),
        "omnizip units (.3/.6)": METHODS.build("omnizip", rho_audio=0.3, rho_video=0.6, variant="units"),
        "omnizip core (r=.35)": METHODS.build("omnizip", retention=0.35),
        "segment_topk (r=.25)": METHODS.build("segment_topk", retention=0.25),
    }
    print("| clip | AV tokens | method | select (ms) | kept video | kept audio | kept total |")
    print("|---|---|---|---|---|---|---|")
    for seconds in args.seconds:
        tokens = paper_tokens(config, seconds, args.dim)
        n_v, n_a = int(tokens.n_video[0]), int(tokens.n_audio[0])
        for name, method in methods.items():
            times = []
            for _ in range(args.repeats + 1):
                start = time.perf_counter()
                keep = method(tokens).keep
                times.append(time.perf_counter() - start)
            kv, ka = int((keep & tokens.video_mask).sum()), int((keep & tokens.audio_mask).sum())
            print(f"| {seconds} s | {n_v + n_a} | {name} | {statistics.median(times[1:]) * 1e3:.0f} | "
                  f"{kv / n_v:.3f} | {ka / n_a:.3f} | {(kv + ka) / (n_v + n_a):.3f} |")


if __name__ == "__main__":
    main()
