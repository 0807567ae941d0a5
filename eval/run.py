"""Evaluate every configured method on one benchmark: accuracy (overall, per category), measured retention, prefill
latency, peak memory and FLOPs in one table.

    python eval/run.py --config configs/eval_toy.yaml [dotted.key=value ...]
    python eval/run.py --config configs/eval_toy.yaml model.name=tiny-random data.limit=8 run.output_dir=runs/x
    python eval/run.py --help                                         # every key, its type, default and meaning

Writes ``run.output_dir/``: ``config.yaml`` (resolved), ``samples.jsonl`` (per question, appended as produced; a rerun
with the same directory resumes), ``results.json``, ``results.md`` and ``accuracy_vs_retention.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python eval/run.py` puts eval/ itself first on sys.path; drop it so `import eval` finds the package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(_HERE.parent) not in sys.path:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import time  # noqa: E402

from eval.config import EvalConfig  # noqa: E402
from fusion.config import describe, load_config  # noqa: E402
from fusion.errors import AVFusionError  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="eval/run.py", description=__doc__.split("\n\n")[0], add_help=False,
                                     epilog="Overrides are dotted.key=value pairs, e.g. data.limit=50 "
                                            "scoring.mode=generate run.output_dir=runs/eval2.")
    parser.add_argument("--config", help="YAML recipe (e.g. configs/eval_toy.yaml)")
    parser.add_argument("-h", "--help", action="store_true", help="show the options and every config key")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value")
    args = parser.parse_args(argv)
    if args.help:
        parser.print_help()
        print("\nconfig keys:\n  " + "\n  ".join(describe(EvalConfig)))
        raise SystemExit(0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from eval.report import write_outputs
        from eval.runner import Runner

        cfg = load_config(EvalConfig, args.config, args.overrides)
        start = time.perf_counter()
        runner = Runner(cfg)
        runner.run()
        paths = write_outputs(runner.results(), runner.run_dir)
        print(paths["md"].read_text())
        print(f"wrote {', '.join(str(p) for p in paths.values())} ({time.perf_counter() - start:.1f} s)")
    except AVFusionError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
