"""The recipes' shared command line (``train/run.py``, ``eval/run.py``): ``--config FILE [dotted.key=value ...]``,
``--help`` that lists every config key, and the error contract: a typed :class:`~fusion.errors.AVFusionError` is
printed as one ``error: ...`` line and exits with status 2, never as a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from fusion.config import describe
from fusion.errors import AVFusionError


def recipe_parser(prog: str, description: str, example: str, overrides_example: str) -> argparse.ArgumentParser:
    """``prog --config FILE [-h] [dotted.key=value ...]``; callers may add options before :func:`parse_recipe`."""
    parser = argparse.ArgumentParser(prog=prog, description=description, add_help=False,
                                     epilog=f"Overrides are dotted.key=value pairs, e.g. {overrides_example}.")
    parser.add_argument("--config", help=f"YAML recipe (e.g. {example})")
    parser.add_argument("-h", "--help", action="store_true", help="show the options and every config key")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value")
    return parser


def parse_recipe(parser: argparse.ArgumentParser, config_cls: type, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; ``--help`` prints the options and every key of ``config_cls`` (type, default, meaning)."""
    args = parser.parse_args(argv)
    if args.help:
        parser.print_help()
        print("\nconfig keys:\n  " + "\n  ".join(describe(config_cls)))
        raise SystemExit(0)
    return args


def run_reporting_errors(body: Callable[[], Any]) -> int:
    """Run ``body``; 0 when it returns, 2 (with its message on stderr) when it raises an :class:`AVFusionError`."""
    try:
        body()
    except AVFusionError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0
