"""What a run reports (rank 0 only): a progress bar, periodic log lines, ``metrics.jsonl`` and optional wandb.

``metrics.jsonl`` holds one row per optimizer step, appended durably (:mod:`fusion.jsonl`). A run that starts at
step ``s`` (0, or the checkpoint it resumed from) first cuts the rows after ``s`` (steps a killed run did past its
last checkpoint, and a torn last row), so the file always reads as one loss curve, ``1, 2, ..., steps``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from fusion.config import to_dict
from fusion.jsonl import append_row, read_rows, rewrite_rows

METRICS = "metrics.jsonl"


@dataclass
class StepMetrics:
    """One optimizer step (token counts summed over its micro-batches)."""

    step: int
    loss: float
    ce: float
    kd: float
    lr: float
    block_lr: float
    step_ms: float
    video_kept: int
    video_total: int
    audio_kept: int
    audio_total: int
    split: float = 0.0
    """The searched split's head loss (0 without ``fusion.split: searched``)."""

    @property
    def kept(self) -> float:
        total = self.video_total + self.audio_total
        return (self.video_kept + self.audio_kept) / total if total else 1.0

    def line(self, steps: int) -> str:
        return (f"step {self.step}/{steps} | loss {self.loss:.4f} | ce {self.ce:.4f} | kd {self.kd:.4f} | "
                + (f"split {self.split:.4f} | " if self.split else "")
                + f"kept {100 * self.kept:.1f}% (video {self.video_kept}/{self.video_total}, "
                f"audio {self.audio_kept}/{self.audio_total}) | lr {self.lr:.2e} (block {self.block_lr:.2e}) | "
                f"{self.step_ms:.0f} ms/step")


class RunLogger:
    """Rank-0 reporting. Other ranks get an inert logger (every method is a no-op)."""

    def __init__(self, cfg, run_dir: Path, active: bool, start_step: int) -> None:
        self.cfg, self.run_dir, self.active = cfg, Path(run_dir), active
        self.bar = self.wandb = self._metrics = None
        if not active:
            return
        self._continue_metrics(start_step)
        if cfg.train.progress:
            from fusion.progress import progress

            # a tqdm bar on a terminal; in a log, a plain line every 10 % of the steps or 30 s
            self.bar = progress(total=cfg.train.steps, initial=start_step, desc="train", unit="step", file=sys.stderr,
                                dynamic_ncols=True, leave=False)
        mode = os.environ.get("WANDB_MODE", cfg.wandb.mode)
        if cfg.wandb.enabled and mode != "disabled":
            import wandb

            f = cfg.fusion
            name = cfg.wandb.name or f"fusion-{f.scorer}-r{f.retention}-s{cfg.train.seed}"
            self.wandb = wandb.init(project=cfg.wandb.project, name=name, group=cfg.wandb.group, mode=mode,
                                    dir=str(self.run_dir), config=to_dict(cfg), resume="allow")

    def _continue_metrics(self, start_step: int) -> None:
        """Keep the rows of steps ``<= start_step`` (the steps this run does not redo), then append to them."""
        path = self.run_dir / METRICS
        rows = read_rows(path)
        kept = [r for r in rows if r.get("step", 0) <= start_step]
        if len(kept) < len(rows):
            print(f"{path}: dropped {len(rows) - len(kept)} row(s) after step {start_step}, the steps this run "
                  "(re)does", flush=True)
            rewrite_rows(path, kept)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = path.open("a", encoding="utf-8")

    def info(self, text: str) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)
        sys.stdout.flush()

    def step(self, metrics: StepMetrics) -> None:
        if not self.active:
            return
        row = {k: v for k, v in vars(metrics).items()}
        append_row(self._metrics, row)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{metrics.loss:.3f}", kept=f"{100 * metrics.kept:.0f}%")  # shown by update
            self.bar.update(1)
        if metrics.step % self.cfg.train.log_every == 0 or metrics.step == self.cfg.train.steps:
            self.info(metrics.line(self.cfg.train.steps))
        if self.wandb is not None:
            self.wandb.log({**row, "kept": metrics.kept}, step=metrics.step)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()
