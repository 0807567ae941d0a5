"""Per-sample rows -> one result row per method setting (the fields of ``results.json``).

For a setting with rows ``S`` (``F`` of them failed, ``S_ok = S - F`` scored):

* accuracy (%), per grouping: per value ``100 * correct / n`` over the scored samples of that value, ``all`` over
  every scored sample, ``mean`` = the unweighted mean over the values; unscored samples are left out of every
  accuracy but never out of sight: ``n_failed`` counts them all, ``n_skipped`` those whose media could not be used
  (``stage: data``, ``data.on_error: skip``), ``unscored`` names each (id, stage, error), and ``accuracy_strict`` =
  ``100 * correct / S`` counts them as wrong;
* measured retention per modality ``m`` in (video, audio, total): token-weighted ``sum_i after_i / sum_i before_i``
  and per-sample mean ``mean_i (after_i / before_i)`` over samples with ``before_i > 0`` (null when none);
* ``prefill_ms`` / ``generate_ms``: mean and median of the per-sample times (batch time / batch size);
  ``peak_memory_mb``: the max over the setting's calls;
* FLOPs: mean per sample of ``llm_prefill``, ``llm_decode``, ``block`` and their ``total``, and ``ratio`` = total /
  the uncompressed setting's total (the first ``none`` setting of the run; null without one).

Data parallel (rows written by more than one process): accuracy, retention and FLOPs pool every rank's rows as
above; latency and peak memory are each rank's own measurements (its process, its device), pooled the same way
(mean / median / max over the rows) and split in ``per_rank`` (``{"rank01-of-02": {n_samples, prefill_ms,
generate_ms, peak_memory_mb}}``, scored rows, keyed like the samples files).
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

from eval.config import EvalConfig, GroupSpec
from eval.data import group_value
from eval.matrix import Setting
from eval.measure import memory_kind
from eval.models import Runtime
from eval.sharding import Ranks
from fusion.config import to_dict


def group_order(spec: GroupSpec, values: set[str]) -> list[str]:
    """``spec.order`` first (those present or not), then the other values, sorted."""
    first = list(spec.order or [])
    return first + sorted(v for v in values if v not in first)


def accuracy_table(rows: list[dict], group: str, order: list[str]) -> dict:
    """``{"per": {value: acc or None}, "n": {value: count}, "all": acc, "mean": acc}`` over scored rows."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        hits[row["groups"][group]].append(bool(row["correct"]))
    per = {v: (100.0 * sum(hits[v]) / len(hits[v]) if hits[v] else None) for v in order}
    present = [a for a in per.values() if a is not None]
    n_all = sum(len(h) for h in hits.values())
    return {"per": per, "n": {v: len(hits[v]) for v in order},
            "all": 100.0 * sum(sum(h) for h in hits.values()) / n_all if n_all else None,
            "mean": sum(present) / len(present) if present else None}


def retention_table(rows: list[dict]) -> tuple[dict, dict]:
    """``(retention, token sums)``; see module doc for the two retention averages."""
    sums = defaultdict(int)
    for row in rows:
        for k, v in row["kept"].items():
            sums[k] += v
        sums["total_before"] += row["kept"]["video_before"] + row["kept"]["audio_before"]
        sums["total_after"] += row["kept"]["video_after"] + row["kept"]["audio_after"]
    out = {}
    for m in ("video", "audio", "total"):
        if m == "total":
            pairs = [(r["kept"]["video_after"] + r["kept"]["audio_after"],
                      r["kept"]["video_before"] + r["kept"]["audio_before"]) for r in rows]
        else:
            pairs = [(r["kept"][f"{m}_after"], r["kept"][f"{m}_before"]) for r in rows]
        ratios = [a / b for a, b in pairs if b > 0]
        before = sums[f"{m}_before"]
        out[m] = {"token_weighted": sums[f"{m}_after"] / before if before else None,
                  "per_sample_mean": sum(ratios) / len(ratios) if ratios else None}
    return out, dict(sums)


def _times(values: list[float | None]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "median": statistics.median(values)}


def rank_label(row: dict) -> str:
    """``rank01-of-02`` (the samples file's tag) for a data-parallel row, ``single`` for a one-process one."""
    return Ranks(int(row.get("rank", 0)), int(row.get("world_size", 1))).tag or "single"


def per_rank(rows: list[dict]) -> dict:
    """``{label: {"n_samples", "prefill_ms", "generate_ms", "peak_memory_mb"}}`` over scored ``rows`` per
    :func:`rank_label`, labels sorted."""
    by: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by[rank_label(row)].append(row)
    return {label: {"n_samples": len(rs), "prefill_ms": _times([r["prefill_ms"] for r in rs]),
                    "generate_ms": _times([r["generate_ms"] for r in rs]),
                    "peak_memory_mb": max((r["peak_memory_mb"] for r in rs), default=None)}
            for label, rs in sorted(by.items())}


def setting_row(setting: Setting, rows: list[dict], cfg: EvalConfig, orders: dict[str, list[str]],
                runtime: Runtime) -> dict:
    """The result row of one setting (module doc)."""
    ok = [r for r in rows if not r.get("error")]
    failed = [r for r in rows if r.get("error")]
    skipped = [r for r in failed if r.get("stage") == "data"]
    retention, tokens = retention_table(ok)
    flops = None
    if ok:
        flops = {k: statistics.fmean(r["flops"][k] for r in ok) for k in ("llm_prefill", "llm_decode", "block")}
        flops["total"] = flops["llm_prefill"] + flops["llm_decode"] + flops["block"]
    errors = list(dict.fromkeys(r["error"] for r in failed))
    parallel = {"per_rank": per_rank(ok)} if any(int(r.get("world_size", 1)) > 1 for r in rows) else {}
    return {
        "name": setting.name, "key": setting.key, "method": setting.method, "params": setting.params,
        "retention_nominal": setting.retention, "adapter": setting.adapter, "hash": setting.hash,
        "n_samples": len(rows), "n_failed": len(failed), "n_skipped": len(skipped), "errors": errors[:5],
        "unscored": [{"id": r["id"], "stage": r.get("stage", "model"), "error": r["error"]} for r in failed],
        "accuracy": {g.name: accuracy_table(ok, g.name, orders[g.name]) for g in cfg.groups},
        "accuracy_strict": 100.0 * sum(bool(r["correct"]) for r in ok) / len(rows) if rows else None,
        "retention": retention, "tokens": tokens,
        "prefill_ms": _times([r["prefill_ms"] for r in ok]), "generate_ms": _times([r["generate_ms"] for r in ok]),
        "peak_memory_mb": max((r["peak_memory_mb"] for r in ok), default=None),
        "flops": flops, **parallel, **runtime.describe(),
    }


def aggregate(cfg: EvalConfig, settings: list[Setting], rows: list[dict], runtime: Runtime, samples=(),
              world_size: int = 1) -> dict:
    """The ``results.json`` document: run facts (``world_size``: processes of the run that aggregates), group
    orders and one row per setting (config order)."""
    by_hash: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_hash[row["hash"]].append(row)
    orders = {}
    for g in cfg.groups:  # one grouping per iteration
        values = {group_value(s, g.key) for s in samples} or {r["groups"][g.name] for r in rows}
        orders[g.name] = group_order(g, values)
    out_rows = [setting_row(s, by_hash[s.hash], cfg, orders, runtime) for s in settings]
    base = next((r for r in out_rows if r["method"] == "none" and r["flops"]), None)
    for r in out_rows:
        if r["flops"] is not None:
            r["flops"]["ratio"] = r["flops"]["total"] / base["flops"]["total"] if base else None
    import torch

    latency = ("per sample = batch wall time / batch size; CUDA events on GPU, perf_counter on CPU; warm-up calls "
               "excluded")
    if world_size > 1 or any(int(r.get("world_size", 1)) > 1 for r in rows):
        latency += ("; data parallel: latency and peak memory are per-rank measurements (each rank times its own "
                    "calls on its own device; per_rank splits them)")
    run = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "benchmark": cfg.data.benchmark, "model": cfg.model.name,
           **runtime.describe(), "world_size": world_size, "memory": memory_kind(runtime.device),
           "torch": torch.__version__, "scoring": cfg.scoring.mode, "decode_tokens_in_flops": cfg.flops.decode_tokens,
           "latency": latency, "config": to_dict(cfg)}
    return {"run": run, "groups": orders, "rows": out_rows}
