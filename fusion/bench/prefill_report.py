"""The prefill benchmark's targets (issue 7) and its markdown report (tables from the JSON result)."""

from __future__ import annotations

from fusion.bench.report import fmt, markdown_table

#: Issue 7's targets: achieved speed-up >= 0.95 of the ideal for every pre-LLM method (the learned block included)
#: at 10-35 % retention; the learned block's selection <= 2 % of the uncompressed prefill; prefill memory at 20 %
#: retention <= 0.6 of the uncompressed prefill's.
TARGETS = {"achieved_min": 0.95, "achieved_retentions": [0.1, 0.35], "learned_overhead_max": 0.02,
           "memory_retention": 0.2, "memory_ratio_max": 0.6}
MIB = 2 ** 20
LEGEND = [
    "- *prefill*: `model(**inputs, logits_to_keep=1)`; *select*: the compressor call + the audio-encoder attention it "
    "requires (+ FastV's in-LLM attention row and gather); *LLM*: decoder layers + final norm",
    "- *ideal*: the same prefill with the method's kept tokens replayed at no cost (FastV: + its first K layers at "
    "full length); *speed-up*: T_none / T",
    "- *achieved*: speed-up / ideal speed-up = T_ideal / T_method, from the medians; *paired*: the same ratio as the "
    "median over rounds of T_ideal,i / T_method,i of back-to-back runs (robust to drift; target >= 0.95)",
    "- *select / none*: T_select / T_none (learned block target <= 2 %); *excess / none*: "
    "(T_method - T_ideal) / T_none",
    "- *memory*: peak increase over the memory in use before the call; *ratio*: to `none`'s (target at r = 0.2: "
    "<= 0.6); *ideal memory ratio*: the same for the ideal run; *LLM memory ratio*: the peak inside the LLM stage",
    "- *LLM FLOPs*: sum over layers of 4nd^2 + 2n^2d + 2ndm (FastV/DyCoke formula); *select GFLOP*: counted "
    "matmul/attention FLOPs of the selection",
]


def misses(row: dict) -> list[str]:
    """The targets a result row misses (an in-LLM method is held to none of them: they are about pre-LLM
    selection; its figures are reported for comparison)."""
    out, c = [], row["comparison"]
    if row["kind"] == "in-llm":
        return out
    low, high = TARGETS["achieved_retentions"]
    achieved = row["achieved_paired"]
    if low - 1e-9 <= row["retention"] <= high + 1e-9 and achieved < TARGETS["achieved_min"]:
        out.append(f"achieved {achieved:.3f} < {TARGETS['achieved_min']} of the ideal speed-up")
    if row["kind"] == "learned" and c["select_overhead"] > TARGETS["learned_overhead_max"]:
        out.append(f"selection {100 * c['select_overhead']:.1f} % > {100 * TARGETS['learned_overhead_max']:g} % of "
                   "the uncompressed prefill")
    ratio = row.get("memory_ratio")
    if abs(row["retention"] - TARGETS["memory_retention"]) < 1e-9 and ratio is not None \
            and ratio > TARGETS["memory_ratio_max"]:
        out.append(f"memory {ratio:.2f} > {TARGETS['memory_ratio_max']} of the uncompressed prefill's")
    return out


def _kept(row: dict) -> str:
    parts = [fmt(row[k], 2) for k in ("kept_video", "kept_audio")]
    return f"{parts[0]} / {parts[1]}"


def results_table(result: dict) -> str:
    """One row per case (columns explained under the table in :func:`render`)."""
    header = ["method", "r", "kept V / A", "seq", "prefill ms", "select ms", "LLM ms", "ideal ms", "speed-up",
              "ideal speed-up", "achieved", "paired", "select / none", "excess / none", "memory MiB", "memory ratio",
              "ideal memory ratio", "LLM memory ratio", "LLM FLOPs ratio", "select GFLOP", "misses"]
    base_mem = result["baseline"]["memory_delta"]
    rows = []
    for r in result["rows"]:
        c = r["comparison"]
        ideal_mem = r["ideal_memory_delta"] / base_mem if r["ideal_memory_delta"] is not None and base_mem else None
        name = r["method"] + (f" ({', '.join(f'{k}={v}' for k, v in r['params'].items())})" if r["params"] else "")
        rows.append([
            name, f"{r['retention']:g}", _kept(r), r["sequence"], fmt(1e3 * c["t_method"], 1),
            fmt(1e3 * c["t_select"], 1), fmt(1e3 * r["stages"]["llm"], 1), fmt(1e3 * c["t_ideal"], 1),
            fmt(c["speedup"]), fmt(c["ideal_speedup"]), fmt(c["achieved"], 3), fmt(r["achieved_paired"], 3),
            fmt(c["select_overhead"], 1, True), fmt(c["excess"], 1, True), fmt(r["memory_delta"] / MIB, 0),
            fmt(r["memory_ratio"]), fmt(ideal_mem), fmt(r["llm_memory_ratio"]), fmt(r["flops_ratio"], 3),
            fmt(r["select_flops"] / 1e9, 2), "; ".join(r["misses"]) or "–",
        ])
    return markdown_table(header, rows)


def render(result: dict) -> str:
    """The whole report: settings, the uncompressed baseline, the results table, its legend, skips and misses."""
    m, b = result["meta"], result["baseline"]
    s = b["stages"]
    lines = [
        "```", m["command"], m["environment"],
        f"model {m['model']} ({m['size']}, random weights): {m['params_m']} M params; text {m['text']}; "
        f"vision {m['vision']}; audio {m['audio']}",
        f"input: {m['seconds']:g} s clip at 2 fps, {m['frame_size']} px frames, with audio: {m['n_video']} video + "
        f"{m['n_audio']} audio tokens, sequence {m['sequence']}, batch 1",
        f"times: medians of {m['repeats']} interleaved rounds after {m['warmup']} warm-up round(s); memory: "
        f"{m['memory_kind']}",
        "```", "",
        f"Uncompressed (`none`): prefill {1e3 * s['total']:.1f} ms = video encoder {1e3 * s['video_encoder']:.1f} + "
        f"audio encoder {1e3 * s['audio_encoder']:.1f} + LLM {1e3 * s['llm']:.1f} + other {1e3 * s['other']:.1f} "
        f"(selection {1e3 * s['select']:.2f}); memory +{b['memory_delta'] / MIB:.0f} MiB, of which the LLM stage's "
        f"peak +{b['llm_memory_delta'] / MIB:.0f} MiB (absolute peak {b['memory_peak'] / MIB:.0f} MiB); LLM prefill "
        f"{b['llm_flops'] / 1e12:.3f} TFLOPs.", "",
        results_table(result), "",
        *LEGEND,
    ]
    notes = [f"{r['method']} at r={r['retention']:g}: {r['note']}" for r in result["rows"] if r["note"]]
    if notes:
        lines += ["", "Notes: " + "; ".join(notes)]
    if result["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{x['method']} at r={x['retention']:g} ({x['reason']})"
                                              for x in result["skipped"])]
    missed = result["targets"]["misses"]
    lines += ["", "Targets missed: " + ("; ".join(missed) if missed else "none.")]
    return "\n".join(lines)
