#!/usr/bin/env python
"""Selection overhead of every registered method next to ONE LLM layer's prefill on the same sequence.

    python scripts/bench_selection.py [--retention 0.25] [--repeats 5] [--layer-repeats 3] [--out table.md]
        [--also 'omnizip:{"variant": "units", "rho_audio": 0.3, "rho_video": 0.6}' ...] [--seconds 60]

Layout: a 60-second clip as Qwen2.5-Omni's processor lays it out (60 temporal grids x 144 video tokens at 336 px,
1,500 audio tokens, interleaved in 2-s chunks, text around it), D = 3584, random features, TMRoPE ids from
transformers' ``get_rope_index``, annotated with ``annotate_tokens`` (no encoders run).

* Selection: ``compressor(tokens)`` on freshly annotated tokens (so a method also pays for the lazy annotations it
  reads: time ids, 2-s groups, grid places). Methods that require ``audio_attention_global`` / ``_window`` also pay
  for computing it exactly as the thinker does (``fusion.model.audio_attention.attention_received``) on one
  real-size audio-encoder last layer (d_model 1280, 20 heads, random weights) and the 3,000 pre-pooling frames of
  60 s. In-LLM methods (``llm_hook()`` is not None) get their pre-LLM part timed and a note: what they do inside
  the LLM is not timed here.
* Reference: one Qwen2.5-Omni-7B decoder layer built from configs/models/qwen2_5_omni_7b.json (random weights,
  fp32, SDPA, causal), with the real multimodal rotary embedding applied to the TMRoPE ids of the same sequence.

Every method in ``fusion.METHODS`` is run with its defaults (methods merged later appear automatically); ``--also``
adds rows for other settings, ``name:{json params}`` (a ``retention`` key overrides ``--retention``), e.g. OmniZip's
paper settings and its older ``units`` variant (the paper reports < 40 ms for its pruning step on a GPU)::

    python scripts/bench_selection.py --seconds 120 \
        --also 'omnizip:{"rho_audio": 0.3, "rho_video": 0.6, "retention": 1}' \
               'omnizip:{"variant": "units", "rho_audio": 0.3, "rho_video": 0.6, "retention": 1}'

The ``/ 7B LLM`` column divides by the layer's time x the 7B model's 28 layers: the selection as a fraction of the
7B language model's uncompressed prefill (encoders excluded, so an upper bound of its share of the whole prefill).
Figures are medians over ``--repeats`` runs after one warm-up run; the layer gets one warm-up on a short prefix and
``--layer-repeats`` full runs (one run costs tens of seconds on a laptop-class CPU). The goal stated by issue 4:
every pre-LLM method's selection costs less than one LLM layer's prefill.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import (
    Qwen2_5OmniAudioEncoderLayer,
    Qwen2_5OmniDecoderLayer,
    Qwen2_5OmniRotaryEmbedding,
)

from fusion.bench.report import environment, markdown_table
from fusion.errors import AVFusionError, RetentionError
from fusion.model.audio_attention import MODES, attention_received
from fusion.model.configs import real_config
from fusion.model.layout import audio_tokens_for_frames
from fusion.model.lm_attention import LM_ATTENTION
from fusion.model.synthetic import synthetic_tokens
from fusion.pruners import METHODS
from fusion.tokens import AVTokens

GRID_HW = (24, 24)  # 336 px -> 144 merged tokens per temporal grid
MEL_PER_SECOND = 100


def audio_attention_extra(tokens: AVTokens, layer: Qwen2_5OmniAudioEncoderLayer, hidden: torch.Tensor,
                          cu_seqlens: torch.Tensor, feature_lens: torch.Tensor, mode: str) -> torch.Tensor:
    """``(B, L)`` attention received per audio token (NaN elsewhere), computed like the thinker does."""
    scores = attention_received(layer, hidden, cu_seqlens, feature_lens, mode)  # (N_a,)
    full = torch.full(tokens.input_ids.shape, float("nan"))
    full[tokens.audio_mask] = scores
    return full


def audio_encoder_inputs(config, seconds: int) -> tuple[Qwen2_5OmniAudioEncoderLayer, torch.Tensor, torch.Tensor,
                                                        torch.Tensor]:
    """One real-size audio-encoder layer and its input: 100 mel frames per second (60 s: 6,000 mel frames ->
    3,000 frames after the stride-2 conv), cut into the encoder's ``2 * n_window``-frame attention windows."""
    audio_config = config.audio_config
    audio_config._attn_implementation = "sdpa"
    layer = Qwen2_5OmniAudioEncoderLayer(audio_config).eval()
    n_mel = seconds * MEL_PER_SECOND
    window = 2 * audio_config.n_window  # mel frames per encoder attention window
    chunks = [window] * (n_mel // window) + ([n_mel % window] if n_mel % window else [])
    after_conv = torch.tensor([(c - 1) // 2 + 1 for c in chunks])
    cu_seqlens = torch.nn.functional.pad(after_conv.cumsum(0), (1, 0)).to(torch.int32)
    frames = int(cu_seqlens[-1])
    hidden = torch.randn(frames, audio_config.d_model, generator=torch.Generator().manual_seed(1))  # (3000, 1280)
    return layer, hidden, cu_seqlens, torch.tensor([n_mel])


def fresh(tokens: AVTokens) -> AVTokens:
    """The same tensors without the lazily computed annotations (each timed run pays for what it reads)."""
    return dataclasses.replace(tokens, extras={})


def time_method(compressor, tokens: AVTokens, audio, repeats: int) -> tuple[list[float], object]:
    """Seconds per run (after one warm-up) of extras + selection; returns the times and the last Selection."""
    needs = [m for m in MODES if f"audio_attention_{m}" in getattr(compressor, "requires", frozenset())]
    times, selection = [], None
    with torch.no_grad():
        for i in range(repeats + 1):
            run = fresh(tokens)
            start = time.perf_counter()
            for mode in needs:
                run.extras[f"audio_attention_{mode}"] = audio_attention_extra(run, *audio, mode)
            selection = compressor(run)
            if i > 0:
                times.append(time.perf_counter() - start)
    return times, selection


def time_layer(config, tokens: AVTokens, repeats: int) -> list[float]:
    """Seconds per prefill of one 7B decoder layer on the whole sequence (fp32, SDPA, causal, TMRoPE)."""
    text = config.get_text_config()
    text._attn_implementation = "sdpa"
    layer = Qwen2_5OmniDecoderLayer(text, layer_idx=0).eval()
    rotary = Qwen2_5OmniRotaryEmbedding(text)
    hidden = torch.randn(tokens.embeds.shape, generator=torch.Generator().manual_seed(2))  # (1, L, D)
    times = []
    with torch.no_grad():
        warm = 1024
        layer(hidden[:, :warm], position_embeddings=rotary(hidden[:, :warm], tokens.position_ids[:, :, :warm]))
        for _ in range(repeats):
            start = time.perf_counter()
            cos_sin = rotary(hidden, tokens.position_ids)  # (1, L, head_dim) each
            layer(hidden, attention_mask=None, position_embeddings=cos_sin)
            times.append(time.perf_counter() - start)
    return times


def build(name: str, retention: float, params: dict | None = None):
    """The method at ``retention`` with ``params`` (default: its defaults; ``none`` only exists at 1.0)."""
    params = dict(params or {})
    retention = params.pop("retention", retention)
    try:
        return METHODS.build(name, retention=retention, **params), retention
    except RetentionError:
        if params:
            raise
        return METHODS.build(name, retention=1.0), 1.0


def parse_spec(spec: str) -> tuple[str, dict]:
    """``name`` or ``name:{json}`` -> ``(name, params)``."""
    name, _, params = spec.partition(":")
    try:
        return name, json.loads(params) if params else {}
    except json.JSONDecodeError as e:
        raise SystemExit(f"--also {spec!r}: the part after ':' must be a JSON object of parameters ({e})") from None


def selection_row(label: str, compressor, r: float, tokens: AVTokens, audio, repeats: int, layer_s: float,
                  layers: int) -> list:
    """One table row: time the selection, measure what it kept, compare with one layer and the whole LLM."""
    n_v, n_a = int(tokens.n_video[0]), int(tokens.n_audio[0])
    unknown = {x for x in getattr(compressor, "requires", frozenset())
               if x not in {f"audio_attention_{m}" for m in MODES}}
    if unknown:
        return [label, r, *["–"] * 7, f"needs {sorted(unknown)}, not available here"]
    try:
        times, selection = time_method(compressor, tokens, audio, repeats)
    except AVFusionError as err:
        return [label, r, *["–"] * 7, f"failed on this layout: {err}"]
    median = statistics.median(times)
    keep = selection.keep
    notes = []
    if compressor.llm_hook() is not None:
        notes.append("in-LLM method: only its pre-LLM part is timed")
    if "audio_attention_global" in compressor.requires or "audio_attention_window" in compressor.requires:
        notes.append("includes audio-encoder attention")
    return [label, r, f"{median * 1e3:.1f}", f"{min(times) * 1e3:.1f}–{max(times) * 1e3:.1f}",
            f"{median / layer_s:.4f}", f"{median / (layers * layer_s):.5f}",
            f"{int((keep & tokens.video_mask).sum()) / n_v:.3f}", f"{int((keep & tokens.audio_mask).sum()) / n_a:.3f}",
            "yes" if median < layer_s else "**no**", "; ".join(notes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retention", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method (after one warm-up)")
    parser.add_argument("--layer-repeats", type=int, default=3, help="timed full-sequence runs of the LLM layer")
    parser.add_argument("--seconds", type=int, default=60, help="clip length (60 for the issue's figures)")
    parser.add_argument("--also", nargs="+", default=[], metavar="NAME:JSON",
                        help="extra rows: a method with parameters, e.g. 'omnizip:{\"variant\": \"units\"}'")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    extra = [parse_spec(spec) for spec in args.also]

    config = real_config("qwen2_5_omni_7b")
    layers = config.get_text_config().num_hidden_layers
    tokens = synthetic_tokens(config, grid_t=args.seconds, grid_hw=GRID_HW,
                              n_audio=audio_tokens_for_frames(args.seconds * MEL_PER_SECOND), seed=0)
    n_v, n_a, L = int(tokens.n_video[0]), int(tokens.n_audio[0]), tokens.seq_len
    header = "\n".join([
        environment("cpu", torch.float32, "sdpa"),
        f"layout: {args.seconds} s clip, {n_v} video + {n_a} audio tokens, sequence {L}, "
        f"D {tokens.embeds.shape[-1]}, retention {args.retention}",
    ])
    print(header, flush=True)

    layer_times = time_layer(config, tokens, args.layer_repeats)
    layer_s = statistics.median(layer_times)
    print(f"one Qwen2.5-Omni-7B decoder layer, prefill of {L} tokens: median {layer_s:.2f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in layer_times)})", flush=True)

    audio = audio_encoder_inputs(config, args.seconds)
    rows = []
    specs = [(name, {}) for name in METHODS] + extra  # every registered method, sorted by name, then --also
    for name, params in specs:
        label = name + (f" {json.dumps(params)}" if params else "")
        try:
            compressor, r = build(name, args.retention, params)
        except AVFusionError as err:
            rows.append([label, "–", *["–"] * 7, f"not built: {err}"])
            continue
        if LM_ATTENTION in getattr(compressor, "requires", frozenset()):  # attention_oracle
            rows.append([label, "–", *["–"] * 7, "not timed: an oracle, its selection is a whole uncompressed prefill"])
            continue
        rows.append(selection_row(label, compressor, r, tokens, audio, args.repeats, layer_s, layers))
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    table = markdown_table(["method", "r", "selection median (ms)", "min–max (ms)", "/ one layer",
                            f"/ 7B LLM ({layers} layers)", "kept video", "kept audio", "goal", "note"], rows)
    print("\n" + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"```\n{header}\none LLM layer: median {layer_s:.2f} s over {len(layer_times)} runs\n```\n\n"
                    f"{table}\n")

if __name__ == "__main__":
    main()
