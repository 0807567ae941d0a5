"""Evaluate every configured method on one benchmark: accuracy (overall, per category), measured retention, prefill
latency, peak memory and FLOPs in one table.

    python eval/run.py --config configs/eval_toy.yaml [dotted.key=value ...]
    python eval/run.py --config configs/eval_toy.yaml model.name=tiny-random data.limit=8 run.output_dir=runs/x
    python eval/run.py --help                                         # every key, its type, default and meaning
    torchrun --nproc_per_node 4 eval/run.py --config configs/eval_toy.yaml        # data parallel, one GPU per rank
    accelerate launch --multi_gpu --num_processes 4 eval/run.py --config configs/eval_toy.yaml   # (no --cpu: that
                                                      # starts ONE process; --multi_gpu without CUDA runs on cpu)

Writes ``run.output_dir/``: ``config.yaml`` (resolved), ``samples.jsonl`` (per question, appended as produced; a rerun
with the same directory resumes), ``results.json``, ``results.md`` and ``accuracy_vs_retention.png``. Under a launcher
(RANK / WORLD_SIZE / LOCAL_RANK set) each rank evaluates its shard of the questions on ``cuda:LOCAL_RANK`` (cpu
without CUDA) into ``samples.rankXX-of-NN.jsonl``, and rank 0 writes the results of all ranks (:mod:`eval.sharding`).
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
    from eval.sharding import Ranks

    cfg = load_config(EvalConfig, config, overrides)
    start = time.perf_counter()
    ranks = Ranks.from_env()
    ranks.init()
    try:
        runner = Runner(cfg, ranks=ranks)
        runner.run()
        results = runner.gather()  # every rank's rows, on rank 0
    finally:
        ranks.close()
    if results is None:
        print(f"[{ranks.tag}] shard done ({time.perf_counter() - start:.1f} s); rank 0 writes the results")
        return
    paths = write_outputs(results, runner.run_dir)
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
