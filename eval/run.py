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

import time  # noqa: E402

from eval.config import EvalConfig  # noqa: E402
from fusion.cli import parse_recipe, recipe_parser, run_reporting_errors  # noqa: E402
from fusion.config import load_config  # noqa: E402
from fusion.progress import quiet_library_bars  # noqa: E402


def evaluate(config: str | None, overrides: list[str]) -> None:
    """Run the matrix, write the outputs, print the table."""
    from eval.report import write_outputs
    from eval.runner import Runner

    cfg = load_config(EvalConfig, config, overrides)
    start = time.perf_counter()
    runner = Runner(cfg)
    runner.run()
    paths = write_outputs(runner.results(), runner.run_dir)
    print(paths["md"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())} ({time.perf_counter() - start:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser("eval/run.py", __doc__.split("\n\n")[0], "configs/eval_toy.yaml",
                           "data.limit=50 scoring.mode=generate run.output_dir=runs/eval2")
    args = parse_recipe(parser, EvalConfig, argv)
    quiet_library_bars()  # transformers' "Loading weights" bar: off in a log
    return run_reporting_errors(lambda: evaluate(args.config, args.overrides))


if __name__ == "__main__":
    sys.exit(main())
