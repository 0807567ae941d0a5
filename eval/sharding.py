"""Data-parallel evaluation: which rank evaluates which question, and the ranks' rendezvous.

``torchrun --nproc_per_node N eval/run.py ...`` and ``accelerate launch eval/run.py ...`` start N copies of the
harness with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set (:meth:`Ranks.from_env`; none set = one process, the
plain ``python eval/run.py``). Every rank loads the same question list and keeps its shard (:func:`assign`, a pure
function of the question list and the world size, so the ranks agree without exchanging anything), evaluates it
on its own device and appends to its own samples file; rank 0 then waits for the others (:meth:`Ranks.barrier`)
and writes the results from every rank's rows.

Balance (longest processing time first): question ``i`` costs ``c_i`` = its clip length in seconds
(:func:`costs_of`: the dataset's metadata, else the container's duration; an unknown length costs the median of
the known ones, 1 when none is known). Questions are taken in order of decreasing ``c_i`` (ties: file order) and
each goes to the rank with the least load ``L_r = sum of its c_i`` (ties: fewer questions, then the lower rank).
The rank that ends with the largest load was the least loaded when it took its last question, so
``max_r L_r - min_r L_r <= max_i c_i``; a shard keeps its questions in file order.
"""

from __future__ import annotations

import datetime
import heapq
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from fusion.errors import ConfigError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
METADATA_SECONDS = ("seconds", "video_duration", "duration")  # ToyWorld(-Long), WorldSense, any JSONL extra
# a rank waits at the final barrier until the slowest rank finishes its shard (hours on a long benchmark)
BARRIER_TIMEOUT = datetime.timedelta(hours=24)


def metadata_seconds(sample) -> float | None:
    """The clip length the dataset states: the first positive numeric ``extra`` key of :data:`METADATA_SECONDS`
    (WorldSense's ``duration`` is a bucket name like ``"<1min"`` and is passed over)."""
    for key in METADATA_SECONDS:
        try:
            seconds = float(sample.extra.get(key))
        except (TypeError, ValueError):
            continue
        if np.isfinite(seconds) and seconds > 0:
            return seconds
    return None


def probe_seconds(path) -> float | None:
    """The media container's duration in seconds (its header only, nothing decoded); None when unreadable."""
    try:
        import av

        with av.open(str(path)) as container:
            return container.duration / 1e6 if container.duration else None
    except Exception:  # noqa: BLE001 - an unreadable clip is the harness's to report; here it only costs the median
        return None


def costs_of(samples: Sequence) -> np.ndarray:
    """``(n,)`` float64 per-question cost ``c_i``: :func:`metadata_seconds`, else :func:`probe_seconds` (once per
    file); unknown ones cost the median of the known ones (1 when none is known)."""
    probed: dict[str, float | None] = {}
    raw = []
    for s in samples:  # one question per iteration
        seconds = metadata_seconds(s)
        if seconds is None:
            if str(s.video) not in probed:
                probed[str(s.video)] = probe_seconds(s.video)
            seconds = probed[str(s.video)]
        raw.append(np.nan if seconds is None else seconds)
    costs = np.array(raw, dtype=np.float64)
    known = costs[~np.isnan(costs)]
    return np.where(np.isnan(costs), float(np.median(known)) if known.size else 1.0, costs)


def assign(costs: Sequence[float] | np.ndarray, world_size: int) -> np.ndarray:
    """``(n,)`` int64: the rank of each question, by longest-processing-time-first greedy (module doc).

    Deterministic (a function of ``costs`` and ``world_size`` only), every question on exactly one rank, and
    ``max_r L_r - min_r L_r <= max_i c_i`` for the loads ``L_r``. ``world_size`` larger than the number of questions
    leaves the extra ranks empty.

    Raises:
        ConfigError: ``world_size < 1``, or a cost that is negative or not finite.
    """
    costs = np.asarray(costs, dtype=np.float64)
    if world_size < 1:
        raise ConfigError(f"world size {world_size}: data-parallel evaluation needs at least one rank")
    if costs.ndim != 1 or not np.isfinite(costs).all() or (costs < 0).any():
        raise ConfigError("shard costs must be a 1-D array of finite, non-negative clip lengths")
    order = np.lexsort((np.arange(costs.size), -costs))  # decreasing cost, ties in file order
    heap = [(0.0, 0, r) for r in range(world_size)]  # (load, questions, rank): the least loaded on top
    ranks = np.empty(costs.size, dtype=np.int64)
    for i in order.tolist():  # one question per iteration onto the least-loaded rank (sequential by nature)
        load, count, r = heapq.heappop(heap)
        ranks[i] = r
        heapq.heappush(heap, (load + float(costs[i]), count + 1, r))
    return ranks


@dataclass
class Ranks:
    """This process's place in a data-parallel run (``world_size == 1``: one process, every method a no-op).

    Attributes:
        rank: global rank, ``0 <= rank < world_size``.
        world_size: number of processes.
        local_rank: rank on this node (picks ``cuda:local_rank``).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    _group: bool = field(default=False, repr=False, compare=False)  # joined by init()

    @classmethod
    def from_env(cls, environ: dict | None = None) -> Ranks:
        """Read ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (as torchrun and ``accelerate launch`` set them).

        Raises:
            ConfigError: a value that is not an integer, or ``RANK`` outside ``[0, WORLD_SIZE)``.
        """
        environ = os.environ if environ is None else environ
        values = {}
        for key, default in zip(ENV_KEYS, ("0", "1", None)):
            text = environ.get(key, default)
            if text is None:  # LOCAL_RANK defaults to RANK (one node)
                text = values["RANK"]
            try:
                values[key] = int(text)
            except ValueError:
                raise ConfigError(f"environment variable {key}={text!r} is not an integer; launch data-parallel "
                                  "runs with torchrun --nproc_per_node N or accelerate launch, which set it") from None
        rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
        if world < 1 or not 0 <= rank < world or local < 0:
            raise ConfigError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}: need WORLD_SIZE >= 1, "
                              "0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0; unset all three for one process")
        return cls(rank, world, local)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def tag(self) -> str:
        """``"rank01-of-04"`` (empty for one process): names the rank's samples file and prefixes its log lines."""
        if not self.distributed:
            return ""
        width = max(2, len(str(self.world_size - 1)))
        return f"rank{self.rank:0{width}d}-of-{self.world_size:0{width}d}"

    def shard(self, samples: Sequence, costs: np.ndarray | None = None) -> list:
        """This rank's questions, in file order (:func:`assign` on :func:`costs_of`); all of them for one process."""
        if not self.distributed:
            return list(samples)
        ranks = assign(costs_of(samples) if costs is None else costs, self.world_size)
        return [s for s, r in zip(samples, ranks.tolist()) if r == self.rank]

    def init(self) -> None:
        """Join the process group (gloo: only barriers travel over it, so GPU runs need no NCCL binding)."""
        import torch.distributed as dist

        if not self.distributed or dist.is_initialized():
            return
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
        if missing:
            raise ConfigError(f"WORLD_SIZE={self.world_size} but {', '.join(missing)} unset: launch with "
                              "torchrun --nproc_per_node N eval/run.py ... or accelerate launch eval/run.py ..., "
                              "or unset RANK/WORLD_SIZE/LOCAL_RANK for one process")
        dist.init_process_group("gloo", rank=self.rank, world_size=self.world_size, timeout=BARRIER_TIMEOUT)
        self._group = True

    def barrier(self) -> None:
        """Wait until every rank arrives (no-op for one process)."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. generates the ToyWorld split), the other ranks after it."""
        if self.rank != 0:
            self.barrier()
        yield
        if self.rank == 0:
            self.barrier()

    def close(self) -> None:
        """Leave the process group joined by :meth:`init`."""
        if self._group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._group = False

    def logger(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log`` with this rank's tag in front of each line (unchanged for one process)."""
        if not self.distributed:
            return log
        return lambda message: log(f"[{self.tag}] {message}")
