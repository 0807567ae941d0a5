"""Prefill benchmark at real model sizes: every method's speed-up against its ideal, memory and FLOPs (issue 7).

    python scripts/bench_prefill.py [--model qwen2_5_omni_7b|qwen2_5_omni_3b|qwen3_omni_30b_a3b|tiny-random|
                                     tiny-random-qwen3|<config.json>]
        [--seconds S] [--frame-size PX] [--methods ...] [--retentions 0.35 0.2 0.1] [--repeats N] [--threads T]
        [--json out.json] [--markdown out.md]

**Model.** The thinker of the shipped config with random weights (speed does not depend on the weights). On a GPU:
the real size, bf16, flash-attn 2 when installed (else SDPA). On the CPU: fp32, SDPA, the config shrunk by
``fusion.model.configs.scaled_config`` to :data:`CPU_SIZE` (``--size real`` keeps the real size). ``tiny-random``
is the test model. Qwen3-Omni-30B-A3B (``qwen3_omni_30b_a3b``; ``tiny-random-qwen3`` in tests): scaled by
``scaled_qwen3_config`` to :data:`CPU_SIZE_QWEN3` (the same decoder and encoders, MoE with 8 of 32 experts active).

**Input.** ``fusion.testing.random_inputs``: one clip of ``--seconds`` at 2 fps, ``--frame-size`` px square frames
(336 px = 144 video tokens per 1-s grid) with its audio (25 tokens/s), interleaved as Qwen's processor does. GPU
default: 60 s (8,640 video + 1,500 audio tokens); CPU default: :data:`CPU_SECONDS` at 336 px. Qwen3-Omni:
``fusion.testing_qwen3.random_qwen3_inputs`` at 2 fps, 384 px by default (patch 16: 144 video tokens per 1-s grid),
13 audio tokens/s merged into the video block by time id.

**Cases.** ``none`` (the uncompressed baseline), every pre-LLM method at each retention, FastV (acts inside the
LLM), the learned block untrained (``fusion``; its speed does not depend on training; on the scaled config its width
d shrinks with the decoder's, see :func:`block_size`). A method that cannot reach a
retention with its defaults is retried with :data:`REACH` (noted in the row) or listed as skipped with the reason;
so is a method the backbone refuses (on Qwen3-Omni the in-LLM hooks: FastV, DyCoke's decode stage).

**Measured per case**, interleaved (rotated order each round; a method and its ideal run back to back, alternating
which goes first), medians over ``--repeats`` rounds after ``--warmup`` rounds and one untimed calibration call:

* ``total``: ``model(**inputs, logits_to_keep=1)`` (encoders + selection + LLM; one logit row, so the 152k-vocab
  head over every position does not dominate); ``use_cache`` as default (the prefill builds its KV cache; FastV's
  forward path builds none);
* stages from hooks that only record marks (CUDA events on GPU, ``perf_counter`` on CPU; ``fusion.bench.instrument``):
  ``video_encoder``, ``audio_encoder``, ``select`` (the compressor call + the audio-encoder attention scores it
  requires + FastV's in-LLM attention row and gather), ``llm`` (decoder layer 0 to the final norm, minus FastV's
  in-LLM selection), ``other`` (embedding, TMRoPE ids, annotation, ``apply_keep``, ``lm_head``);
* ``ideal``: the same call with :class:`~fusion.bench.ideal.FixedKeep` replaying the method's keep mask (same kept
  tokens, no selection cost); FastV's ideal adds its first ``K`` layers at full length (``fusion.bench.ideal``);
* memory of the method and of its ideal (one more call each, after all timing; ``fusion.bench.memory``): the peak
  increase over what was in use before the call, for the whole call and inside the LLM stage, and the absolute peak
  (GPU: allocator counters; CPU: sampled RSS, an upper bound since glibc reuses freed heap within the call; with
  ``--memory-exact`` glibc's mmap threshold is lowered at start so RSS follows live memory, which slows large
  allocations by 20-40 % for every method alike: use that run for memory, a plain run for times);
* FLOPs (calibration call): the analytic LLM prefill FLOPs from the per-layer token counts, and the counted FLOPs of
  the selection (``fusion.bench.flops``).

**JSON** (``--json``): ``meta`` (``environment``, ``command``, ``device``, ``dtype``, ``attn``, ``threads``, model
size, input layout, ``repeats``, ``warmup``, ``memory_kind``), ``baseline`` (``none``: ``stages`` medians in s,
``memory_delta``, ``llm_memory_delta``, ``memory_peak`` in bytes, ``llm_flops``), ``rows`` (one per case:
``method``, ``retention``, ``params``, ``note``, ``kind`` (pre-llm / in-llm / learned), ``kept_video``,
``kept_audio``, ``kept_total`` (fractions), ``sequence``, ``layer_tokens``, ``stages`` and ``ideal_stages`` (medians,
s), ``comparison`` (``t_none``, ``t_method``, ``t_ideal``, ``t_select``, ``speedup``, ``ideal_speedup``, ``achieved``,
``saving_achieved``, ``select_overhead``, ``excess``), ``achieved_paired``, ``memory_delta``, ``llm_memory_delta``,
``memory_peak``, ``ideal_memory_delta``, ``memory_ratio``, ``llm_memory_ratio``, ``llm_flops``, ``flops_ratio``,
``select_flops``, ``misses``), ``skipped`` (``method``, ``retention``, ``reason``) and ``targets`` (thresholds and
every miss). ``--markdown`` writes the report printed at the end.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys

import torch

import fusion.model.hooked_lm as hooked_lm
from fusion.bench.flops import ffn_width
from fusion.bench.ideal import Comparison, FixedKeep, fastv_ideal, paired_ratio
from fusion.bench.instrument import STAGES, Bench
from fusion.bench.memory import PeakMemory, track_rss_closely
from fusion.bench.prefill_report import TARGETS, misses, render
from fusion.bench.report import environment
from fusion.bench.timing import interleave
from fusion.errors import AVFusionError, ModelLoadError, RetentionError, UnsupportedOptionError
from fusion.model.configs import QWEN3_CONFIGS, REAL_CONFIGS, real_config, scaled_config, scaled_qwen3_config
from fusion.model.loading import TINY, TINY_QWEN3
from fusion.model.qwen3_thinker import CompressedQwen3Thinker
from fusion.pruners import METHODS
from fusion.testing import random_inputs
from fusion.testing_qwen3 import random_qwen3_inputs

#: CPU size: a decoder 512 wide x 8 layers (head dim 128), encoders 256 wide x 4 layers. On a 12-s 336-px clip
#: (~2k tokens) the encoders take ~30 % of the prefill and attention ~20 % of the LLM's FLOPs, close to the 7B
#: model on a 60-s clip (~25 % and ~13 %), and the uncompressed prefill takes ~3 s on one core.
CPU_SIZE = dict(text_hidden=512, text_layers=8, heads=4, kv_heads=2, vision_depth=4, vision_hidden=256,
                audio_layers=4, audio_hidden=256)
#: CPU size of Qwen3-Omni-30B-A3B: the same decoder/encoder shrink, experts 768 -> 192 wide, 32 in the pool, 8 active.
CPU_SIZE_QWEN3 = {**CPU_SIZE, "experts": 32}
#: CPU clip length: 60 s would be ~10k tokens, where attention (n^2) would dominate a 512-wide decoder.
CPU_SECONDS = 12.0
GPU_SECONDS = 60.0
BY_NAME = ("none", "fastv", "fusion")  # the baseline and the two cases added by name, after the pre-LLM methods
#: Parameters that let a method reach a retention its paper defaults cannot (used only after a RetentionError).
REACH = {"omnizip": {"rho_max": 0.95}}
#: A method whose in-LLM part acts only at decode, as the pre-LLM method with the same prefill (used where the backbone
#: refuses in-LLM hooks: Qwen3-Omni).
PRE_LLM_FORM = {"dycoke": {"stage2": False}}


def kind_of(compressor) -> str:
    """``learned`` (the block), ``in-llm`` (tokens drop inside the LLM at prefill: FastV) or ``pre-llm``."""
    if getattr(compressor, "name", "") == "fusion":
        return "learned"
    hook = compressor.llm_hook() if hasattr(compressor, "llm_hook") else None
    return "in-llm" if hook is not None and hook.prefill_layer is not None else "pre-llm"


def build_model(args, device: torch.device, dtype: torch.dtype, size: str):
    """The thinker at ``size`` (tiny / scaled / real) with seeded random weights, built on ``device`` in ``dtype``."""
    from fusion.model.loading import build_random_thinker, load_model

    if size == "tiny":
        return load_model(args.model, dtype=dtype, attn_implementation=args.attn, device=device)[0]
    if args.model not in REAL_CONFIGS and not args.model.endswith(".json"):
        raise ModelLoadError(f"--model {args.model!r}: the benchmark builds random weights from a config, so give one "
                             f"of {list(REAL_CONFIGS)}, {TINY!r}, {TINY_QWEN3!r} or the path of a thinker config .json")
    if size != "scaled":
        config = real_config(args.model)
    elif args.model in QWEN3_CONFIGS:
        config = scaled_qwen3_config(args.model, **CPU_SIZE_QWEN3)
    else:
        config = scaled_config(args.model, **CPU_SIZE)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # weights made in their dtype on the device: no fp32 host copy of a 7B model
    try:
        with torch.device(device):
            model = build_random_thinker(config, seed=0, attn_implementation=args.attn)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def model_summary(model) -> dict:
    c = model.config
    text, vision, audio = c.get_text_config(), c.vision_config, c.audio_config
    ffn = f"FFN {text.intermediate_size}"
    if getattr(text, "num_experts", 0):
        ffn = f"MoE {text.num_experts_per_tok} of {text.num_experts} experts x {text.moe_intermediate_size} " \
              f"(active FFN {ffn_width(text)})"
    return {"params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "text": f"{text.hidden_size} wide x {text.num_hidden_layers} layers, {text.num_attention_heads} heads "
                    f"({text.num_key_value_heads} kv), {ffn}",
            "vision": f"{vision.hidden_size} wide x {vision.depth} layers",
            "audio": f"{audio.d_model} wide x {audio.encoder_layers} layers"}


def make_inputs(model, seconds: float, frame_size: int, device: torch.device, dtype: torch.dtype) -> dict:
    if isinstance(model, CompressedQwen3Thinker):  # Qwen3's layout, at the processor's 2 fps
        inputs = random_qwen3_inputs(model, seconds=seconds, frame_size=frame_size, seed=0, fps=2.0)
    else:
        inputs = random_inputs(model, seconds=seconds, frame_size=frame_size, seed=0)
    for key in ("pixel_values_videos", "input_features"):  # media in the model's dtype; ids and masks as they are
        inputs[key] = inputs[key].to(dtype)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _refused(model, compressor) -> AVFusionError | None:
    """The backbone's error for the compressor's in-LLM hook (Qwen3-Omni refuses them all), or None."""
    hook = compressor.llm_hook() if hasattr(compressor, "llm_hook") else None
    try:
        if hook is not None:
            model._check_llm_hook(hook)
    except AVFusionError as err:
        return err
    return None


def plan(args, model) -> tuple[list[tuple[str, float, dict, str]], list[dict]]:
    """``[(method, retention, params, note)]`` to run and ``[{method, retention, reason}]`` skipped: in-LLM methods
    without a backend the hooked runner supports, or on a backbone that refuses them (Qwen3-Omni), unless the method
    has a pre-LLM form with the same prefill (:data:`PRE_LLM_FORM`: DyCoke without its decode stage)."""
    names = args.methods or [n for n in METHODS if n not in BY_NAME] + ["fastv", "fusion"]
    run, skipped = [], []
    for name in names:
        for r in args.retentions:
            params, note = {}, ""
            try:
                compressor = METHODS.build(name, retention=r)
                if hasattr(compressor, "set_batch"):  # evidence_oracle: reads each sample's ToyWorld scene
                    raise UnsupportedOptionError("needs each sample's ToyWorld scene (set_batch); random inputs have "
                                                 "none")
                refused = _refused(model, compressor)
                if refused is not None and name in PRE_LLM_FORM:
                    params = PRE_LLM_FORM[name]
                    note = f"{params}: {type(model).__name__} refuses the decode stage (the prefill is the same)"
                    refused = _refused(model, METHODS.build(name, retention=r, **params))
                if refused is not None:
                    raise refused
                if kind_of(compressor) == "in-llm" and args.attn not in hooked_lm.BACKENDS:
                    raise UnsupportedOptionError(f"runs inside the LLM, which needs {hooked_lm.BACKENDS} attention "
                                                 f"(this run: {args.attn}); rerun with --attn sdpa")
            except AVFusionError as err:
                skipped.append({"method": name, "retention": r, "reason": str(err)})
                continue
            run.append((name, r, params, note))
    return run, skipped


def block_size(model_name: str, model_config, size: str, block_dim: int | None) -> dict:
    """The learned block's widths for this run: ``--block-dim`` if given; at the real size the block's defaults
    (d = 256); on the scaled config d and the scorer's hidden width shrink with the decoder
    (d = 256 * D_scaled / D_real, a multiple of the heads), so the block weighs against the LLM as it does at
    the real size (``{}`` = the defaults)."""
    from fusion.block.config import FusionConfig

    default = FusionConfig()
    if block_dim is None and size != "scaled":
        return {}
    if block_dim is None:
        real = real_config(model_name).get_text_config().hidden_size
        ratio = model_config.get_text_config().hidden_size / real
        block_dim = max(default.heads, round(default.dim * ratio / default.heads) * default.heads)
    return {"dim": block_dim, "scorer_hidden": block_dim}


def calibrate_case(bench: Bench, name: str, r: float, params: dict | None = None) -> tuple[object, dict, dict, str]:
    """``(compressor, calibration, params, note)``, retrying with :data:`REACH` after a RetentionError."""
    params = params or {}
    try:
        compressor = METHODS.build(name, retention=r, **params)
        return compressor, bench.calibrate(compressor), params, ""
    except RetentionError as err:
        if name not in REACH:
            raise
        params = {**params, **REACH[name]}
        compressor = METHODS.build(name, retention=r, **params)
        note = f"{params} (defaults cannot reach r: {str(err).split(':')[0]})"
        return compressor, bench.calibrate(compressor), params, note


def medians(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(s[k] for s in samples) for k in STAGES}


def row(bench: Bench, case: dict, samples: list[dict], base: dict) -> dict:
    """One result row: medians, the comparison with the ideal, memory (one more call each), FLOPs."""
    compressor, info = case["compressor"], case["info"]
    method = medians([s["method"] for s in samples])
    fixed = medians([s["ideal"] for s in samples])
    kind = kind_of(compressor)
    ideal_of = lambda s: s["total"]  # noqa: E731
    if kind == "in-llm":  # FastV: its first K layers run at full length
        k, layers = compressor.llm_hook().prefill_layer, bench.model.config.get_text_config().num_hidden_layers
        ideal_of = lambda s: fastv_ideal(s["total"], base["llm"], s["llm"], k, layers)  # noqa: E731
    comparison = Comparison(base["total"], method["total"], ideal_of(fixed), method["select"])
    achieved_paired = paired_ratio([ideal_of(s["ideal"]) for s in samples], [s["method"]["total"] for s in samples])
    mem = bench.memory(compressor)
    ideal_mem = bench.memory(case["ideal"])["delta"] if kind != "in-llm" else None
    stats = info["stats"]
    v0, a0, v1, a1 = (int(getattr(stats, f)[0]) for f in ("video_before", "audio_before", "video_after",
                                                            "audio_after"))
    print(f"{case['name']}@{case['r']:g}: {method['total'] * 1e3:.1f} ms (ideal {comparison.t_ideal * 1e3:.1f}, "
          f"select {method['select'] * 1e3:.1f}), achieved {comparison.achieved:.3f} (paired {achieved_paired:.3f})",
          flush=True)
    return {"method": case["name"], "retention": case["r"], "params": case["params"], "note": case["note"],
            "kind": kind, "kept_video": v1 / v0 if v0 else None, "kept_audio": a1 / a0 if a0 else None,
            "kept_total": (v1 + a1) / (v0 + a0), "sequence": int(stats.sequence_after[0]),
            "layer_tokens": info["layer_tokens"], "stages": method, "ideal_stages": fixed,
            "comparison": comparison.as_dict(), "achieved_paired": achieved_paired, "memory_delta": mem["delta"],
            "llm_memory_delta": mem["llm"], "memory_peak": mem["peak"], "ideal_memory_delta": ideal_mem,
            "llm_flops": info["llm_flops"], "select_flops": info["select_flops"]}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_prefill.py", description=__doc__.split("\n\n")[0],
                                epilog="What is measured, every JSON field: the docstring of fusion/bench/prefill.py")
    p.add_argument("--model", default="qwen2_5_omni_7b", help="qwen2_5_omni_7b | qwen2_5_omni_3b | "
                   "qwen3_omni_30b_a3b | tiny-random | tiny-random-qwen3 | a thinker config .json (random weights)")
    p.add_argument("--size", choices=("auto", "real", "scaled"), default="auto",
                   help="auto: the real size on GPU, scaled to CPU_SIZE on CPU")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--dtype", default="auto", help="auto (bfloat16 on GPU, float32 on CPU) or a torch dtype name")
    p.add_argument("--attn", default="auto", help="auto (flash_attention_2 if installed on GPU, else sdpa), sdpa, "
                   "flash_attention_2 or eager")
    p.add_argument("--seconds", type=float, default=None, help=f"clip length (default {GPU_SECONDS:g} on GPU, "
                   f"{CPU_SECONDS:g} on CPU, 2 for tiny-random)")
    p.add_argument("--frame-size", type=int, default=None, help="frame side in px (default 336 -> 144 video "
                   "tokens/grid; Qwen3-Omni, patch 16: 384 -> 144)")
    p.add_argument("--methods", nargs="+", default=None, help="registry names (default: every pre-LLM method, "
                   "then fastv and fusion)")
    p.add_argument("--block-dim", type=int, default=None, help="the learned block's width d (default: 256 at the "
                   "real size; on the scaled CPU config shrunk with the decoder width, see block_size)")
    p.add_argument("--block-allocation", action="store_true", help="time the block with its coverage-aware "
                   "selection (fusion.allocation=true): the allocation head and the per-cell top-k")
    p.add_argument("--block-split", action="store_true", help="time the block with the recipe's searched modality "
                   "split (fusion.split=searched): the split head and one top-k per modality")
    p.add_argument("--retentions", nargs="+", type=float, default=[0.35, 0.2, 0.1])
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (medians)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds before them")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on CPU: on a shared "
                   "2-core machine 2 threads ran 2-4x slower and unstable)")
    p.add_argument("--memory-exact", action="store_true", help="CPU: make RSS follow live memory (glibc mmap "
                   "threshold 64 KiB from the start; slows every run alike, so take times from a run without it)")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--markdown", default=None, help="write the report as markdown here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else \
        torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.attn == "auto":
        import importlib.util

        args.attn = "flash_attention_2" if device.type == "cuda" and importlib.util.find_spec("flash_attn") else "sdpa"
    if args.threads is not None or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    size = "tiny" if args.model in (TINY, TINY_QWEN3) else \
        "scaled" if args.size == "scaled" or (args.size == "auto" and device.type == "cpu") else "real"
    if args.seconds is None:
        args.seconds = 2.0 if size == "tiny" else GPU_SECONDS if device.type == "cuda" else CPU_SECONDS

    exact = args.memory_exact and device.type == "cpu" and track_rss_closely()  # before anything is allocated
    model = build_model(args, device, dtype, size)
    if args.frame_size is None:
        args.frame_size = 384 if isinstance(model, CompressedQwen3Thinker) else 336
    bench = Bench(model, make_inputs(model, args.seconds, args.frame_size, device, dtype), device)
    todo, skipped = plan(args, model)
    block = block_size(args.model, model.config, size, args.block_dim)
    if args.block_allocation and args.block_split:
        raise SystemExit("--block-allocation and --block-split are two different selections: pass one")
    if args.block_allocation:
        block = {**block, "allocation": True}
    if args.block_split:
        block = {**block, "split": "searched"}
    meta = {"environment": environment(device, dtype, args.attn),
            "command": "python scripts/bench_prefill.py " + shlex.join(sys.argv[1:] if argv is None else argv),
            "device": device.type, "dtype": str(dtype).removeprefix("torch."), "attn": args.attn,
            "threads": torch.get_num_threads(), "model": args.model, "size": size, **model_summary(model),
            "seconds": args.seconds, "frame_size": args.frame_size,
            "sequence": int(bench.inputs["input_ids"].shape[1]), "repeats": args.repeats, "warmup": args.warmup,
            "memory_kind": PeakMemory(device).kind + (", glibc mmap threshold 64 KiB (--memory-exact)" if exact else
                                                      ", heap reuse: an upper bound, see --memory-exact")
            if device.type == "cpu" else PeakMemory(device).kind}
    print(f"{meta['environment']}\nmodel {args.model} ({size}): {meta['params_m']} M params; text {meta['text']}; "
          f"vision {meta['vision']}; audio {meta['audio']}", flush=True)
    for name, reason in dict.fromkeys((x["method"], x["reason"]) for x in skipped):  # once per method and reason
        print(f"skipped {name}: {reason}", flush=True)

    none = METHODS.build("none")
    with bench.instrument():
        base_info = bench.calibrate(none)
        meta.update(n_video=int(base_info["stats"].video_before[0]), n_audio=int(base_info["stats"].audio_before[0]))
        print(f"input: {args.seconds:g} s at {args.frame_size} px: {meta['n_video']} video + {meta['n_audio']} audio "
              f"tokens, sequence {meta['sequence']}; {len(todo)} cases, {args.repeats} rounds after {args.warmup} "
              "warm-up", flush=True)
        cases = []
        for name, r, planned, why in todo:
            try:
                compressor, info, params, note = calibrate_case(bench, name, r,
                                                                block if name == "fusion" else planned)
                note = "; ".join(x for x in (why, note) if x)
            except AVFusionError as err:
                skipped.append({"method": name, "retention": r, "reason": f"failed: {err}"})
                continue
            cases.append({"name": name, "r": r, "compressor": compressor, "info": info, "params": params,
                          "note": note, "ideal": FixedKeep(info["keep"])})
        runs = {"none": lambda: bench.call(none)[0]}
        for i, case in enumerate(cases):
            runs[i] = lambda c=case: bench.pair(c["compressor"], c["ideal"])
        timings = interleave(runs, args.repeats, args.warmup)
        base = medians(timings["none"])
        bench.call(none)  # settle once before the memory calls
        base_mem = bench.memory(none)
        rows = [row(bench, case, timings[i], base) for i, case in enumerate(cases)]
    model.set_compressor(none)
    for r in rows:
        r["memory_ratio"] = r["memory_delta"] / base_mem["delta"] if base_mem["delta"] > 0 else float("nan")
        r["llm_memory_ratio"] = r["llm_memory_delta"] / base_mem["llm"] if base_mem["llm"] > 0 else float("nan")
        r["flops_ratio"] = r["llm_flops"] / base_info["llm_flops"]
        r["misses"] = misses(r)
    result = {"meta": meta, "rows": rows, "skipped": skipped,
              "baseline": {"stages": base, "memory_delta": base_mem["delta"], "llm_memory_delta": base_mem["llm"],
                           "memory_peak": base_mem["peak"], "llm_flops": base_info["llm_flops"]},
              "targets": {**TARGETS, "misses": [f"{r['method']}@{r['retention']:g}: {m}" for r in rows
                                                for m in r["misses"]]}}
    text = render(result)
    print("\n" + text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    return result
