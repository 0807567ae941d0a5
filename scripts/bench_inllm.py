#!/usr/bin/env python
"""Figures for the in-LLM methods: prefill and decode time through the hook, and DyCoke's measured TTM retention.

    python scripts/bench_inllm.py [--repeats 7] [--seconds 8] [--new-tokens 32] [--threads 1]

1. Language-model prefill (batch 1, KV cache, next-token logits; encoders excluded) on a mid-size random config
   (the 3B config shrunk for CPU, 6 decoder layers): HF's text model vs the hooked runner keeping everything (its
   own overhead) vs FastV r=0.5 / 0.25 at K=2 vs HF's text model on DyCoke's TTM prefix (r=0.475); median of
   interleaved runs, with each layer's token count; and the time of the TTM selection itself.
2. Greedy decoding: per-step time from ``generate`` of 1 and of ``--new-tokens`` tokens: HF generate vs the hooked
   greedy loop (DyCoke stage 2 with a threshold that never prunes, and one that prunes at every step; FastV).
3. DyCoke TTM retention measured on the OmniZip layout (144 video tokens per 1-s grid, 25 audio tokens per
   second) for several clip lengths, nominal ``(1 + 3(1-K))/4`` vs measured, last-window quirk on and off.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fusion.bench.report import environment, markdown_table
from fusion.bench.timing import interleave, seconds_of
from fusion.model.configs import scaled_config
from fusion.model.hooked_lm import run_prefill
from fusion.model.loading import build_random_thinker
from fusion.pruners import METHODS
from fusion.pruners.dycoke_ttm import ttm_keep
from fusion.pruners.fastv import POOLS, FastVHook
from fusion.testing import random_inputs


def prefill_table(model, inputs: dict, repeats: int) -> None:
    """Language-model prefill only (encoders excluded: they are the same for every method), next-token logits, KV
    cache built, all configs interleaved; plus the time of DyCoke's TTM selection itself."""
    media = {k: v for k, v in inputs.items() if k != "input_ids"}
    lm = model.model.language_model
    with torch.no_grad():
        model.set_compressor(METHODS.build("none"))
        full = model.compress(inputs["input_ids"], padding_side="left", **media)
        tokens = model.last_tokens
        dycoke = METHODS.build("dycoke", retention=0.475)
        model.set_compressor(dycoke)
        ttm = model.compress(inputs["input_ids"], padding_side="left", **media)
    model.set_compressor(METHODS.build("none"))

    def stock(batch):
        hidden = lm(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids, use_cache=True).last_hidden_state
        return model.lm_head(hidden[:, -1])

    def hooked(retention: float):
        state = run_prefill(model, tokens, full, FastVHook(2, retention, POOLS["av"]), "left", use_cache=True)
        return model.lm_head(state.hidden[:, -1]), state.layer_tokens[0].tolist()

    configs = {
        "HF text model, all tokens": lambda: (stock(full), [full.inputs_embeds.shape[1]] * 6),
        "hooked runner, keep all (FastV hook r=1, K=2)": lambda: hooked(1.0),
        "hooked runner, FastV r=0.5, K=2": lambda: hooked(0.5),
        "hooked runner, FastV r=0.25, K=2": lambda: hooked(0.25),
        "HF text model on the TTM prefix (DyCoke r=0.475)": lambda: (stock(ttm), [ttm.inputs_embeds.shape[1]] * 6),
    }

    def timed(run):
        start = time.perf_counter()
        _, counts = run()
        return time.perf_counter() - start, counts

    with torch.no_grad():  # interleaved (rotated each round) so drift hits every config alike
        results = interleave({name: lambda r=run: timed(r) for name, run in configs.items()}, repeats, warmup=2)
        ttm_times = [seconds_of(lambda: dycoke.select(tokens)) for _ in range(repeats)]
    times = {name: [t for t, _ in values] for name, values in results.items()}
    base = statistics.median(times["HF text model, all tokens"])
    rows = [[name, f"{statistics.median(times[name]) * 1e3:.1f}", f"{statistics.median(times[name]) / base:.3f}",
             results[name][-1][1]] for name in configs]
    print("\n" + markdown_table(["LLM prefill (batch 1, KV cache, last logits)", "median ms", "vs HF",
                                 "tokens per decoder layer"], rows))
    print(f"\nDyCoke TTM selection itself (video + audio, {tokens.av_mask.sum().item()} AV tokens): "
          f"{statistics.median(ttm_times) * 1e3:.2f} ms median")


def decode_table(model, inputs: dict, new_tokens: int, repeats: int) -> None:
    """Per-token decode time = (t(generate N) - t(generate 1)) / (N - 1), all calls interleaved, medians."""
    configs = {
        "HF generate (none)": METHODS.build("none"),
        "HF generate on TTM prefix (dycoke, stage2 off)": METHODS.build("dycoke", retention=0.475, stage2=False),
        "hooked loop, stage 2 never prunes (threshold 0)": METHODS.build("dycoke", retention=0.475, threshold=0.0),
        "hooked loop, stage 2 prunes every step (L=3, P=0.7)": METHODS.build("dycoke", retention=0.475,
                                                                              threshold=2.0),
        "hooked loop, FastV r=0.5, K=2": METHODS.build("fastv", retention=0.5, k=2),
    }

    def generate(compressor, n: int) -> float:
        model.set_compressor(compressor)
        return seconds_of(lambda: model.generate(**inputs, max_new_tokens=n, min_new_tokens=n))

    runs = {(name, n): lambda c=c, n=n: generate(c, n) for name, c in configs.items() for n in (1, new_tokens)}
    with torch.no_grad():
        times = interleave(runs, repeats, warmup=1)
    rows = []
    for name in configs:
        one, many = statistics.median(times[(name, 1)]), statistics.median(times[(name, new_tokens)])
        rows.append([name, f"{one:.3f}", f"{many:.3f}", f"{(many - one) / (new_tokens - 1) * 1e3:.1f}"])
    print("\n" + markdown_table(["greedy decode", "s for 1 token", f"s for {new_tokens} tokens",
                                 "ms per decode step"], rows))
    model.set_compressor(METHODS.build("none"))


def ttm_retention_table() -> None:
    rows = []
    for seconds in (8, 11, 30, 32, 60):  # the quirk only matters when the frame count is a multiple of 4
        for k in (0.7, 0.5):
            kept = {True: 0, False: 0}
            total = 0
            for quirk in (True, False):
                video = ttm_keep(torch.randn(seconds, 144, 4), k, last_window_quirk=quirk)
                audio = ttm_keep(torch.randn(seconds, 25, 4), k, last_window_quirk=quirk)
                kept[quirk] = int(video.sum() + audio.sum())
                total = video.numel() + audio.numel()
            nominal = (1 + 3 * (1 - k)) / 4
            rows.append([f"{seconds} s", k, f"{nominal:.3f}", f"{kept[True] / total:.3f}",
                         f"{kept[False] / total:.3f}"])
    print("\n" + markdown_table(["layout (144 V/grid, 25 A/s)", "K", "nominal", "measured, quirk on",
                                 "measured, quirk off"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 by default: on a shared machine every parallel op otherwise waits for "
                             "a second core, which swamps the figures)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(environment("cpu", torch.float32, "sdpa"))
    model = build_random_thinker(scaled_config("qwen2_5_omni_3b"), seed=0).eval()
    inputs = random_inputs(model, seconds=args.seconds, frame_size=112)
    print(f"mid config: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params, "
          f"{model.config.get_text_config().num_hidden_layers} decoder layers, sequence {inputs['input_ids'].shape[1]}")
    prefill_table(model, inputs, args.repeats)
    decode_table(model, inputs, args.new_tokens, max(3, args.repeats // 2))
    ttm_retention_table()


if __name__ == "__main__":
    main()
