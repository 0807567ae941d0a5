"""Cost of the learned fusion block on long clips: parameters, forward / forward+backward time, and how many
attention scores it computes versus a clip-wide V <-> A cross-attention (2 N_v N_a scores per head).

    python scripts/bench_fusion_block.py [--width 2048] [--seconds 10 30 60 120] [--repeats 5]

The token layout is the real Qwen2.5-Omni one (2 fps video at --frame px, 25 audio tokens/s, interleaved in 2-s
chunks), built by the tiny thinker; the embeddings are random at the backbone width (2048 = Qwen2.5-Omni-3B,
3584 = 7B). CPU timings are medians over --repeats runs; on a shared machine they are upper bounds.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

import fusion.block.cross_attention as cross_attention
from fusion import load_model
from fusion.bench.report import environment, markdown_table
from fusion.bench.timing import interleave, seconds_of
from fusion.block import BaseIdentity, FusionBlock, FusionConfig
from fusion.testing import random_inputs


def count_scores(block, tokens) -> list[int]:
    """Attention scores (groups x queries x keys, per head) of every SDPA call of one forward."""
    scores, original = [], cross_attention.sdpa

    def counting(q, k, v, mask):
        scores.append(q.shape[0] * q.shape[2] * k.shape[2])
        return original(q, k, v, mask)

    cross_attention.sdpa = counting
    try:
        with torch.no_grad():
            block(tokens)
    finally:
        cross_attention.sdpa = original
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=2048, help="backbone hidden size D")
    parser.add_argument("--dim", type=int, default=256, help="block width d")
    parser.add_argument("--neighbours", type=int, default=1)
    parser.add_argument("--seconds", type=int, nargs="+", default=[10, 30, 60])
    parser.add_argument("--frame", type=int, default=224, help="frame side in px (224 -> 64 video tokens/grid)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)

    tiny, _ = load_model("tiny-random")
    base = BaseIdentity(model_type="bench", hidden_size=args.width, num_hidden_layers=0, num_attention_heads=0,
                        num_key_value_heads=0, intermediate_size=0, vocab_size=0)
    config = FusionConfig(retention=0.25, dim=args.dim, neighbours=args.neighbours, scorer_hidden=args.dim)
    block = FusionBlock(config, base).train()
    params = sum(p.numel() for p in block.parameters())
    print(environment("cpu", torch.float32))
    print(f"block: D={args.width}, d={args.dim}, neighbours={args.neighbours}: {params / 1e6:.2f} M parameters")
    rows = []
    for seconds in args.seconds:
        with torch.no_grad():
            tokens = tiny.build_tokens(**random_inputs(tiny, seconds=seconds, frame_size=args.frame, seed=0))
        tokens = copy.copy(tokens)
        tokens.embeds = torch.randn(*tokens.input_ids.shape, args.width)
        n_v, n_a = int(tokens.n_video[0]), int(tokens.n_audio[0])
        scores = count_scores(block, tokens)

        def forward(t=tokens):
            with torch.no_grad():
                block(t)

        def forward_backward(t=tokens):
            selection = block(t)
            selection.embeds[selection.keep].float().square().mean().backward()
            block.zero_grad(set_to_none=True)

        times = interleave({"fwd": lambda f=forward: seconds_of(f), "both": lambda f=forward_backward: seconds_of(f)},
                           args.repeats, warmup=0)
        computed = sum(scores)
        full = 2 * n_v * n_a  # both directions over the whole clip
        rows.append([seconds, n_v, n_a, f"{1000 * statistics.median(times['fwd']):.1f}",
                     f"{1000 * statistics.median(times['both']):.1f}", f"{computed:,}", f"{full:,}",
                     f"{computed / full:.3f}"])
    print(markdown_table(["seconds", "N_v", "N_a", "forward ms", "fwd+bwd ms", "scores computed",
                          "clip-wide 2 N_v N_a", "ratio"], rows))

if __name__ == "__main__":
    main()
