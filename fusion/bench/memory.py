"""Peak memory of one call, and of named stages inside it: CUDA allocator peaks on a GPU, sampled RSS on the CPU.

``with PeakMemory(device) as mem: model(**inputs)`` gives

* ``mem.base``: bytes in use just before the call (the loaded model, its inputs, allocator caches on the CPU);
* ``mem.peak``: the highest bytes in use during the call; ``mem.delta = peak - base``: what the call needed on top
  (activations, KV cache, encoder buffers);
* ``mem.stage_delta[name]``: the same increase (over ``base``), restricted to the spans opened and closed with
  ``mem.start(name)`` / ``mem.stop(name)`` during the call (e.g. from module hooks: the LLM's own peak).

GPU: ``reset_peak_memory_stats()`` then ``max_memory_allocated()`` (tensor bytes as the caching allocator counts
them). Stage marks read and reset the allocator's host-side counters (no synchronisation); the running peak is
folded in before each reset, so ``peak`` still covers the whole call. CPU: torch keeps no allocator statistics
there, so a thread samples the resident set size every ``interval`` seconds (``psutil``); the figure is the OS's view
(it includes allocator slack) and can miss a spike shorter than the interval. Before the call ``malloc_trim(0)``
(glibc) hands freed heap back to the OS so ``base`` does not carry earlier runs' leftovers. glibc keeps freed blocks
below its (adaptive, up to 32 MiB) mmap threshold in the heap and reuses them, so within one call RSS follows the
high-water mark (an upper bound of the stages that come after a big one). :func:`track_rss_closely`, called before
anything is allocated, makes each allocation of 64 KiB or more its own ``mmap``, unmapped on free, so RSS follows
live memory; it is process-wide and slows large allocations (20-40 % on a prefill here), so time in another run.
"""

from __future__ import annotations

import ctypes
import threading
import time

import torch

CPU_KIND = "peak RSS increase over the RSS before the call (sampled every {ms:g} ms)"
GPU_KIND = "torch.cuda.max_memory_allocated increase over memory_allocated before the call"


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def track_rss_closely(threshold: int = 64 * 1024) -> bool:
    """glibc only: ``mallopt(M_MMAP_THRESHOLD, threshold)`` and ``mallopt(M_TRIM_THRESHOLD, 2 * threshold)``, so freed
    large blocks go back to the OS at once (module doc). Returns False where there is no glibc (nothing changed)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, threshold)) and bool(libc.mallopt(-1, 2 * threshold))  # M_MMAP_, M_TRIM_
    except (OSError, AttributeError):
        return False


class PeakMemory:
    """Context manager measuring the peak memory of its body and of marked stages (see module doc)."""

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.001) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.interval = interval
        self.kind = GPU_KIND if self.cuda else CPU_KIND.format(ms=interval * 1e3)
        self.base = self.peak = 0
        self.stage_delta: dict[str, int] = {}
        self._open: dict[str, float] = {}
        self._spans: list[tuple[str, float, float]] = []
        self._samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ whole call
    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = self.peak = torch.cuda.memory_allocated()
            return self
        import psutil

        self._process = psutil.Process()
        _malloc_trim()
        self.base = self.peak = self._process.memory_info().rss
        self._samples = [(time.perf_counter(), self.base)]
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._samples.append((time.perf_counter(), self._process.memory_info().rss))

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = max(self.peak, torch.cuda.max_memory_allocated())
            return
        self._stop.set()
        self._thread.join()
        self._samples.append((time.perf_counter(), self._process.memory_info().rss))
        self.peak = max(rss for _, rss in self._samples)
        for name, start, end in self._spans:
            inside = [rss for t, rss in self._samples if start <= t <= end]
            if inside:
                self.stage_delta[name] = max(self.stage_delta.get(name, 0), max(inside) - self.base)

    @property
    def delta(self) -> int:
        return self.peak - self.base

    # ------------------------------------------------------------------ stages
    def start(self, name: str) -> None:
        if self.cuda:
            self.peak = max(self.peak, torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()
        self._open[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        start = self._open.pop(name)
        if self.cuda:
            stage = torch.cuda.max_memory_allocated()
            self.peak = max(self.peak, stage)
            self.stage_delta[name] = max(self.stage_delta.get(name, 0), stage - self.base)
        else:
            self._spans.append((name, start, time.perf_counter()))
