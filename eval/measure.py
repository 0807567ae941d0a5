"""Latency and peak memory of one model call.

* Latency: CUDA events around the call on a GPU (``elapsed_time`` after a synchronize), ``time.perf_counter`` on
  CPU. The harness times one call per batch and divides by the batch size (= per sample at batch size 1); warm-up
  calls are not timed.
* Peak memory, GPU: ``torch.cuda.reset_peak_memory_stats`` before the call, ``max_memory_allocated`` after (tensors
  allocated by PyTorch on that device, weights included; not the allocator's reserve).
* Peak memory, CPU: the process's peak resident set size (RSS, weights included) while the call runs, sampled every
  ``interval`` seconds by a background thread (plus once before and after); a spike shorter than the interval can
  be missed, so it is a lower bound of the true peak.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import torch

MIB = 1024 * 1024


def rss_bytes() -> int:
    """The process's current resident set size in bytes (``/proc/self/statm``, else psutil)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import psutil

        return psutil.Process().memory_info().rss


class RssSampler:
    """Peak RSS while the ``with`` block runs (a daemon thread samples every ``interval`` s)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> RssSampler:
        self.peak = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())


@dataclass
class Measurement:
    """One measured call: wall time in ms and peak memory in MiB."""

    ms: float = 0.0
    peak_mb: float = 0.0


class Measure:
    """``with Measure(device) as m: call()`` -> ``m.result`` (see module doc for what is measured)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.result = Measurement()

    def __enter__(self) -> Measure:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start, self._end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._sampler = RssSampler().__enter__()
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self._end.record()
            torch.cuda.synchronize(self.device)
            self.result = Measurement(self._start.elapsed_time(self._end),
                                      torch.cuda.max_memory_allocated(self.device) / MIB)
        else:
            ms = 1000 * (time.perf_counter() - self._t0)
            self._sampler.__exit__(*exc)
            self.result = Measurement(ms, self._sampler.peak / MIB)


def memory_kind(device: torch.device) -> str:
    """What ``peak_memory_mb`` means on ``device`` (written into results)."""
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated during the calls (weights included)"
    return "peak process RSS sampled every 5 ms during the calls (weights included)"
