"""The evaluation loop: every method setting on every question, sample-major, resumable.

For each batch of questions (fixed order and size): decode the media once (:func:`eval.data.prepare`), then run
every setting that still has work on this batch; each result row is appended to ``samples.jsonl`` at once. A batch
that raises is retried sample by sample; a sample that still raises is recorded with its error (``stage: model``,
counted as FAILED, never scored). A sample whose media cannot be used (missing, corrupt, longer than the model's
context) is, with ``data.on_error: skip``, recorded the same way with ``stage: data`` (counted as skipped and failed,
never scored); with ``data.on_error: fail`` the run stops there with a :class:`~fusion.errors.DatasetError`. Each
setting gets ``scoring.warmup`` untimed calls before its first timed one.

Data parallel (:mod:`eval.sharding`, launched by torchrun / ``accelerate launch``): each rank runs the same loop on
its shard of the questions, on its own device, appending to its own ``samples.<rank tag>.jsonl``; every samples
file of the folder counts as done (:mod:`eval.samples`). :meth:`Runner.gather` waits for every rank and hands rank 0
the results of all ranks' rows. Rank 0 writes ``config.yaml`` and generates a missing ToyWorld split before the
others load it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from eval.config import EvalConfig
from eval.data import Prepared, error_text, group_value, load_benchmark, prepare
from eval.matrix import Setting, expand
from eval.models import ModelPool
from eval.predict import run_batch, warm_up
from eval.samples import SampleLog, samples_name
from eval.sharding import Ranks
from fusion.config import dump_yaml
from fusion.errors import DatasetError

HEADER = "Resolved config of this run; rerun (resumes) with: python eval/run.py --config {path} [key=value ...]"


class Runner:
    """Holds a run's settings, models and sample log (``run()`` does the work, ``results()`` aggregates)."""

    def __init__(self, cfg: EvalConfig, log: Callable[[str], None] = print, ranks: Ranks | None = None) -> None:
        """``ranks``: this process's place in a data-parallel run (default: one process)."""
        self.ranks = ranks or Ranks()
        self.cfg, self.log = cfg, self.ranks.logger(log)
        self.run_dir = Path(cfg.run.output_dir)
        self.settings = expand(cfg)
        self.pool = ModelPool(cfg.model, self.ranks.local_rank if self.ranks.distributed else None)
        self.store = SampleLog(self.run_dir / samples_name(self.ranks.tag), self.log)
        self.samples = []  # every question of the run (rank 0 aggregates over them)
        self.shard = []  # this rank's questions
        self.calls = 0  # model calls made by run_batch (tests count them)
        self.warm: set[str] = set()

    def _row(self, setting: Setting, sample, result: dict) -> dict:
        groups = {g.name: group_value(sample, g.key) for g in self.cfg.groups}
        return {"key": setting.key, "hash": setting.hash, "name": setting.name, "id": sample.id,
                "category": sample.category, "groups": groups, "rank": self.ranks.rank,
                "world_size": self.ranks.world_size, **result}

    def _failure(self, setting: Setting, sample, error: str, stage: str = "model") -> None:
        """Record ``sample`` unscored: ``stage`` "data" (its media could not be used) or "model" (the call raised)."""
        if stage == "data" and self.cfg.data.on_error == "fail":
            raise DatasetError(f"data.on_error=fail: question {sample.id!r} ({sample.video}) cannot be used: {error}; "
                               "fix or remove it, or set data.on_error=skip to record it (counted, named in the "
                               "results, never scored) and go on")
        self.store.append(self._row(setting, sample, {
            "id": sample.id, "answer": sample.answer, "prediction": None, "correct": None, "response": None,
            "kept": None, "flops": None, "prefill_ms": None, "generate_ms": None, "peak_memory_mb": None,
            "batch_size": None, "error": error, "stage": stage}))
        self.log(f"{'SKIPPED' if stage == 'data' else 'FAILED'} {setting.key} {sample.id}: {error}")

    def _score(self, setting: Setting, prepared: Prepared, todo: set[str]) -> None:
        """Run ``setting`` on ``prepared``; store the rows of the samples in ``todo``; isolate failures."""
        processor, device = self.pool.processor, self.pool.runtime.device
        try:
            model = self.pool.get(setting)
            if setting.key not in self.warm:
                warm_up(model, prepared, self.cfg, processor)
                self.warm.add(setting.key)
            self.calls += 1
            rows = run_batch(model, prepared, setting, self.cfg, processor, device)
        except Exception as e:  # noqa: BLE001 - a failure is counted and reported, never scored
            if len(prepared.samples) == 1:
                self._failure(setting, prepared.samples[0], error_text(e))
                return
            for sample in prepared.samples:  # one sample per iteration: find the one(s) that fail
                if sample.id in todo:
                    part = self._prepare([sample])
                    for failed, error in part.failed:
                        self._failure(setting, failed, error, stage="data")
                    if part.samples:
                        self._score(setting, part, {sample.id})
            return
        for sample, result in zip(prepared.samples, rows):
            if sample.id in todo:
                self.store.append(self._row(setting, sample, result))

    def _prepare(self, batch) -> Prepared:
        rt = self.pool.runtime
        try:
            return prepare(batch, self.pool.processor, self.cfg.data, rt.device, rt.dtype, context=self.pool.context)
        except Exception as e:  # noqa: BLE001
            return Prepared([], None, None, [(s, error_text(e)) for s in batch])

    def _load_questions(self) -> None:
        """All the run's questions (rank 0 first: it may generate them) and this rank's shard of them."""
        cfg, ranks = self.cfg, self.ranks
        with ranks.main_first():
            if ranks.rank == 0:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                dump_yaml(cfg, self.run_dir / "config.yaml", header=HEADER.format(path=self.run_dir / "config.yaml"))
            self.samples = load_benchmark(cfg.data, self.log)
        self.shard = ranks.shard(self.samples)
        if not ranks.distributed:
            return
        if self.shard:
            self.log(f"{len(self.shard)} of {len(self.samples)} questions (longest clips first onto the least-loaded "
                     f"of {ranks.world_size} ranks)")
        else:
            self.log(f"no questions for this rank: {ranks.world_size} ranks for {len(self.samples)} question(s); it "
                     "only waits for the others (start at most as many processes as questions)")

    def run(self) -> None:
        """Evaluate everything of this rank's shard that no samples file of the run folder holds yet."""
        cfg = self.cfg
        if cfg.model.threads:
            torch.set_num_threads(cfg.model.threads)
        self._load_questions()
        hashes = {s.hash for s in self.settings}
        stale = self.store.stale(hashes)
        if stale:
            self.log(f"{stale} row(s) of {self.store.path} belong to settings that are no longer in the config or "
                     "whose settings changed (hash differs): ignored")
        done = self.store.done(cfg.run.retry_failed)
        size = cfg.scoring.batch_size
        batches = [self.shard[i:i + size] for i in range(0, len(self.shard), size)]
        work = [(b, [s for s in self.settings if any((s.hash, x.id) not in done for x in b)]) for b in batches]
        total = sum(len(b) * len(todo) for b, todo in work)
        if total == 0:
            scope = "this rank's shard" if self.ranks.distributed else "the run"
            self.log(f"nothing to do: every setting x question of {scope} is in the samples files of {self.run_dir}")
            return
        self.pool.base()
        from fusion.progress import progress

        bar = progress(total=total, desc="eval", unit="row", disable=not cfg.run.progress or self.ranks.rank != 0,
                       dynamic_ncols=True)  # one bar: rank 0's rows
        try:
            for batch, settings in work:  # one batch of questions per iteration
                if not settings:
                    continue
                prepared = self._prepare(batch)
                for setting in settings:  # every setting on the same decoded media
                    todo = {x.id for x in batch if (setting.hash, x.id) not in done}
                    for sample, error in prepared.failed:
                        if sample.id in todo:
                            self._failure(setting, sample, error, stage="data")
                    if prepared.samples:
                        self._score(setting, prepared, todo)
                    bar.set_postfix_str(setting.key)  # shown by update (a log line names the setting just done)
                    bar.update(len(todo))
        finally:
            bar.close()
            self.store.close()

    def gather(self) -> dict | None:
        """Wait until every rank has run; on rank 0 re-read every rank's samples file and return :meth:`results`
        (None on the other ranks). One process: :meth:`results` at once."""
        self.ranks.barrier()
        if self.ranks.rank != 0:
            return None
        if self.ranks.distributed:
            self.store.reload()  # the other ranks' rows, complete now
        return self.results()

    def results(self) -> dict:
        """Aggregate the samples files (current settings only) into the results document."""
        from eval.aggregate import aggregate

        return aggregate(self.cfg, self.settings, self.store.current({s.hash for s in self.settings}),
                         self.pool.runtime, self.samples, world_size=self.ranks.world_size)
