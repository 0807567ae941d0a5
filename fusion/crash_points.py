"""Fault injection for the crash-safety tests: kill this process with SIGKILL at a named point of the code.

Inert unless the environment variable ``AV_FUSION_CRASH_AT`` is set (a test hook, never a way to change what a run
computes). Its value is ``point:n`` (or several, comma-separated): the ``n``-th time this process reaches
``point``, it sends itself SIGKILL, exactly as an OOM killer or a pre-empted job would (no cleanup, no ``finally``).
::

    AV_FUSION_CRASH_AT=checkpoint-save:2 python train/run.py ...      # dies inside its 2nd checkpoint save

The points (each one call of :func:`crash_point`):

- ``train-step``: mid optimizer step, after ``backward`` of a micro-batch, before ``engine.step()``;
- ``checkpoint-save``: inside a checkpoint save, every file written to the temporary tag, before the rename;
- ``checkpoint-latest``: the checkpoint renamed into place, before ``latest`` names it;
- ``adapter-save``: inside the adapter export, the new adapter staged, before it replaces ``adapter/``;
- ``eval-row``: the evaluation harness just appended one row to ``samples.jsonl``.
"""

from __future__ import annotations

import os
import signal
import sys

from fusion.errors import ConfigError

ENV = "AV_FUSION_CRASH_AT"
POINTS = ("train-step", "checkpoint-save", "checkpoint-latest", "adapter-save", "eval-row")

_hits: dict[str, int] = {}
_parsed: tuple[str, dict[str, int]] | None = None


def parse(spec: str) -> dict[str, int]:
    """``"point:n,point2:m"`` -> ``{point: n, point2: m}``; raises :class:`ConfigError` naming a bad entry."""
    targets = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        name, _, count = entry.partition(":")
        if name not in POINTS:
            raise ConfigError(f"{ENV}: unknown crash point {name!r}; the points are {', '.join(POINTS)}")
        try:
            n = int(count or "1")
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"{ENV}: {entry!r} needs a positive count after the colon, e.g. {name}:2")
        targets[name] = n
    return targets


def _targets() -> dict[str, int]:
    global _parsed
    spec = os.environ.get(ENV, "")
    if _parsed is None or _parsed[0] != spec:
        _parsed = (spec, parse(spec))
    return _parsed[1]


def crash_point(name: str) -> None:
    """Count one pass through point ``name``; SIGKILL this process if ``AV_FUSION_CRASH_AT`` asks for this pass."""
    if name not in POINTS:  # a typo in the code itself: fail loudly in every run, not only in the crash tests
        raise ValueError(f"crash_point({name!r}): not one of {POINTS}")
    if ENV not in os.environ:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _targets().get(name) == _hits[name]:
        print(f"[{ENV}] killing process {os.getpid()} at {name}:{_hits[name]}", flush=True)
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
