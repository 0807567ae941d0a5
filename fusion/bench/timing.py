"""Timing for benchmarks: named stage spans inside one call, and interleaved repeats of several runs.

A :class:`StageTimer` records marks without synchronising: CUDA events on a GPU (``Event.record`` only enqueues a
timestamp on the stream, so the run is not perturbed), ``time.perf_counter`` on the CPU. Spans are opened and
closed by module hooks (:func:`module_span`) or by wrapping a function (:func:`function_span`); the elapsed times
are read once, after the call (one ``synchronize``)::

    timer = StageTimer(device)
    with module_span(timer, model.model.visual, "video encoder"):
        timer.start("total"); model(**inputs); timer.stop("total")
    timer.seconds()   # {"total": ..., "video encoder": ...}  (spans of the same name are summed)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

T = TypeVar("T")


class StageTimer:
    """Accumulates named spans of one call (see module doc). Not re-entrant per name."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.cuda = torch.device(device).type == "cuda"
        self._open: dict[str, object] = {}
        self._spans: list[tuple[str, object, object]] = []

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self, name: str) -> None:
        self._open[name] = self._mark()

    def stop(self, name: str) -> None:
        self._spans.append((name, self._open.pop(name), self._mark()))

    def reset(self) -> None:
        self._open.clear()
        self._spans.clear()

    def seconds(self) -> dict[str, float]:
        """``{stage: seconds}``, the sum over the spans of each name since the last :meth:`reset`."""
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for name, start, end in self._spans:
            elapsed = start.elapsed_time(end) / 1e3 if self.cuda else end - start
            out[name] = out.get(name, 0.0) + elapsed
        return out


@contextlib.contextmanager
def module_span(timer: StageTimer, start_module: torch.nn.Module, name: str,
                end_module: torch.nn.Module | None = None) -> Iterator[None]:
    """Open span ``name`` when ``start_module``'s forward starts, close it when ``end_module``'s (default: the same
    module) forward returns. Hooks are removed on exit."""
    handles = [
        start_module.register_forward_pre_hook(lambda *_: timer.start(name)),
        (end_module or start_module).register_forward_hook(lambda *_: timer.stop(name)),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def function_span(timer: StageTimer, owner: object, attr: str, name: str,
                  around: Callable[[Callable[[], T]], T] | None = None) -> Iterator[None]:
    """Replace ``owner.attr`` (a function looked up at call time, e.g. a module global) by a wrapper timing each
    call as span ``name``; ``around(call)`` optionally runs the call (e.g. under a FLOP counter). Restored on exit."""
    original = getattr(owner, attr)

    def timed(*args, **kwargs):
        timer.start(name)
        try:
            return around(lambda: original(*args, **kwargs)) if around else original(*args, **kwargs)
        finally:
            timer.stop(name)

    setattr(owner, attr, timed)
    try:
        yield
    finally:
        setattr(owner, attr, original)


def seconds_of(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of ``fn()`` (``perf_counter``; synchronises CUDA before and after if it is in use)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() and torch.cuda.is_initialized() else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def interleave(runs: dict[str, Callable[[], T]], repeats: int, warmup: int = 1) -> dict[str, list[T]]:
    """Call every run once per round, ``warmup + repeats`` rounds, and keep the last ``repeats`` results per run.

    Runs are interleaved (so drift on a shared machine hits all alike) and the order is rotated by one each round
    (so no run always follows the same neighbour). Each run returns its own measurement (seconds, a stage dict ...).
    """
    names = list(runs)
    results: dict[str, list[T]] = {name: [] for name in names}
    for i in range(warmup + repeats):
        shift = i % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            value = runs[name]()
            if i >= warmup:
                results[name].append(value)
    return results


class Fanout:
    """Forwards ``start``/``stop`` marks to every listener in :attr:`listeners` (a :class:`StageTimer`, a
    :class:`~fusion.bench.memory.PeakMemory` ...), so one set of hooks serves several measurements."""

    def __init__(self, *listeners) -> None:
        self.listeners = list(listeners)

    def start(self, name: str) -> None:
        for listener in self.listeners:
            listener.start(name)

    def stop(self, name: str) -> None:
        for listener in reversed(self.listeners):
            listener.stop(name)
