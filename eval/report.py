"""The run's outputs: ``results.json`` (the document of :mod:`eval.aggregate`), ``results.md`` (tables like the
papers': methods as rows, groups as columns, then retention / latency / memory / FLOPs) and
``accuracy_vs_retention.png`` (one line per method, x = measured total retention, token-weighted)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _flops(value: float | None) -> str:
    """MACs in the largest fitting SI unit (G/T)."""
    if value is None:
        return "–"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def _row_label(row: dict) -> str:
    budget = row["key"].split("@", 1)[1] if "@" in row["key"] else ""
    return f"{row['name']} ({budget})" if budget else row["name"]


def markdown(results: dict) -> str:
    """``results.md``: the main table (first grouping's columns + efficiency) and one table per other grouping."""
    run, rows, groups = results["run"], results["rows"], results["groups"]
    names = list(groups)
    main, others = names[0], names[1:]
    lines = [f"# Results: {run['benchmark']} on {run['model']}", "",
             f"Device {run['device']}, {run['dtype']}, attention {run['attn_implementation']}, scoring "
             f"{run['scoring']}. Accuracy in % over scored samples (failed and skipped ones are counted and named "
             "under 'Unscored questions', never scored); retention "
             "= measured fraction kept, token-weighted (per-sample mean in results.json); latency per sample; "
             f"memory = {run['memory']}; FLOPs = LLM prefill + {run['decode_tokens_in_flops']} decoded tokens "
             "(DyCoke/FastV formula) + the fusion block, per sample."]
    if "data parallel" in run.get("latency", ""):
        lines += ["", f"Data parallel (world size {run.get('world_size', 1)}): questions sharded over the ranks; "
                  "latency and peak memory are per-rank measurements (each rank times its own calls on its own "
                  "device), pooled here; per_rank in results.json splits them."]
    lines.append("")
    cols = groups[main]
    head = (["method (budget)"] + cols + ["all", "mean", "n", "failed", "skipped", "video kept", "audio kept",
                                          "total kept", "prefill ms", "peak MiB", "FLOPs", "FLOPs %"])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        acc = r["accuracy"][main]
        ret = r["retention"]
        cells = [_row_label(r)] + [_pct(acc["per"][c]) for c in cols] + [
            _pct(acc["all"]), _pct(acc["mean"]), str(r["n_samples"]), str(r["n_failed"]), str(r.get("n_skipped", 0)),
            _ratio(ret["video"]["token_weighted"]), _ratio(ret["audio"]["token_weighted"]),
            _ratio(ret["total"]["token_weighted"]),
            _pct(r["prefill_ms"]["mean"] if r["prefill_ms"] else None, 2), _pct(r["peak_memory_mb"], 0),
            _flops(r["flops"]["total"] if r["flops"] else None),
            _ratio(r["flops"]["ratio"] if r["flops"] else None)]
        lines.append("| " + " | ".join(cells) + " |")
    for name in others:  # one extra table per grouping
        cols = groups[name]
        lines += ["", f"## Accuracy by {name}", "", "| " + " | ".join(["method (budget)"] + cols + ["all", "mean"])
                  + " |", "|" + "---|" * (len(cols) + 3)]
        for r in rows:
            acc = r["accuracy"][name]
            lines.append("| " + " | ".join([_row_label(r)] + [_pct(acc["per"][c]) for c in cols]
                                             + [_pct(acc["all"]), _pct(acc["mean"])]) + " |")
    lines += unscored_section(rows)
    failures = [(r["key"], e) for r in rows for e in r["errors"]]
    if failures:
        lines += ["", "## Failures (first distinct messages per setting; full list in samples.jsonl)", ""]
        lines += [f"- `{key}`: {error}" for key, error in failures]
    return "\n".join(lines) + "\n"


def unscored_section(rows: list[dict], shown: int = 20) -> list[str]:
    """``## Unscored questions``: per setting with any, how many were skipped (data) or failed (model), the accuracy
    that counts them as wrong, and their ids (the first ``shown``; all of them in results.json)."""
    lines = []
    for r in rows:
        unscored = r.get("unscored") or []
        if not unscored:
            continue
        skipped = sum(u["stage"] == "data" for u in unscored)
        ids = ", ".join(f"{u['id']} ({u['stage']})" for u in unscored[:shown])
        more = f", ... {len(unscored) - shown} more in results.json" if len(unscored) > shown else ""
        lines.append(f"- `{r['key']}`: {len(unscored)} of {r['n_samples']} unscored ({skipped} skipped for their data, "
                     f"{len(unscored) - skipped} failed in the model); accuracy counting them as wrong "
                     f"{_pct(r.get('accuracy_strict'))}: {ids}{more}")
    return ["", "## Unscored questions", ""] + lines if lines else []


def plot(results: dict, path: str | Path) -> Path:
    """``accuracy_vs_retention.png``: per method name one line through its settings (x = measured total retention,
    y = overall accuracy), uncompressed rows as a horizontal reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    references = []
    for r in results["rows"]:
        x = r["retention"]["total"]["token_weighted"]
        y = r["accuracy"][next(iter(results["groups"]))]["all"]
        if x is None or y is None:
            continue
        (references if r["method"] == "none" else lines[r["name"]]).append((x, y))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours, markers = plt.get_cmap("tab20").colors, "osD^v<>ph*X"
    for i, (name, points) in enumerate(lines.items()):  # one method per iteration
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=markers[i % len(markers)],
                color=colours[i % len(colours)], label=name)
    for x, y in references:
        ax.axhline(y, color="grey", linestyle="--", linewidth=1)
        ax.plot([x], [y], marker="*", color="black", markersize=10, label="uncompressed")
    ax.set_xlabel("measured retention (audio + video tokens kept, token-weighted)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{results['run']['benchmark']} on {results['run']['model']}")
    ax.grid(alpha=0.3)
    if lines or references:  # every row unscored: an empty plot without a legend
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_by_group(results: dict, group: str, path: str | Path) -> Path:
    """``accuracy_vs_<group>.png``: x = the grouping's values in table order (e.g. clip-length buckets), y = that
    group's accuracy; one panel per nominal retention with one line per method, the uncompressed row in every
    panel as a dashed black line. Shows where each method degrades as, e.g., clips grow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = results["groups"][group]
    rows = results["rows"]
    references = [r for r in rows if r["method"] == "none"]
    retentions = sorted({r["retention_nominal"] for r in rows if r["method"] != "none"}, reverse=True) or [1.0]
    fig, axes = plt.subplots(1, len(retentions), figsize=(5.5 * len(retentions), 4.5), squeeze=False, sharey=True)
    colours, markers = plt.get_cmap("tab20").colors, "osD^v<>ph*X"
    names = list(dict.fromkeys(r["name"] for r in rows if r["method"] != "none"))
    x = list(range(len(cols)))
    for ax, retention in zip(axes[0], retentions):  # one panel per retention
        for r in rows:
            if r["method"] != "none" and r["retention_nominal"] != retention:
                continue
            per = r["accuracy"][group]["per"]
            y = [per.get(c) if per.get(c) is not None else float("nan") for c in cols]
            if r["method"] == "none":
                ax.plot(x, y, color="black", linestyle="--", marker="*", label="uncompressed")
                continue
            i = names.index(r["name"])
            ax.plot(x, y, marker=markers[i % len(markers)], color=colours[i % len(colours)], label=r["name"])
        ax.set_xticks(x, cols)
        ax.set_xlabel(group)
        ax.set_title(f"retention {retention:g}" + ("" if references else " (no uncompressed row)"))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{results['run']['benchmark']} on {results['run']['model']}: accuracy by {group}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(results: dict, run_dir: str | Path) -> dict[str, Path]:
    """Write results.json/md, accuracy_vs_retention.png and an accuracy_vs_<name>.png per grouping with ``plot``
    into ``run_dir`` (json and md atomically; a rerun redraws the plots); return their paths."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": run_dir / "results.json", "md": run_dir / "results.md",
             "png": run_dir / "accuracy_vs_retention.png"}
    for key, text in (("json", json.dumps(results, indent=2, default=str)), ("md", markdown(results))):
        tmp = paths[key].with_name(paths[key].name + ".tmp")  # write-then-rename: a kill never leaves a torn table
        tmp.write_text(text)
        tmp.replace(paths[key])
    plot(results, paths["png"])
    for g in results["run"].get("config", {}).get("groups", []):  # groupings asked to be drawn
        if g.get("plot") and g["name"] in results["groups"]:
            paths[f"png_{g['name']}"] = plot_by_group(results, g["name"], run_dir / f"accuracy_vs_{g['name']}.png")
    return paths
