"""``samples.jsonl``: one line per (method setting, question), appended as soon as it is produced.

A data-parallel run (:mod:`eval.sharding`) gives each rank its own file, ``samples.rank01-of-04.jsonl``; one process
keeps ``samples.jsonl``. Every rank reads EVERY samples file of the run folder as done (its own one repaired after a
crash, the others read only), so a rerun with any world size (one process included) redoes exactly the rows no file
holds. Across files the latest row per key decides, except that a scored row is never replaced by a failed one
(the files are read in :func:`sample_files` order; within one file the two rules agree, since only failed rows are
ever redone).

A row::

    {"key": "uniform@25%", "hash": "3f1c0a9b2d4e", "name": "uniform", "id": "test-00007", "category": "beep_count",
     "groups": {"category": "beep_count"}, "rank": 0, "world_size": 1, "answer": "C", "prediction": "C",
     "correct": true, "response": null,
     "kept": {"video_before": 32, "video_after": 8, "audio_before": 100, "audio_after": 25, "sequence_before": 170,
              "sequence_after": 71},
     "flops": {"llm_prefill": ..., "llm_decode": ..., "block": 0.0}, "prefill_ms": 12.3, "generate_ms": null,
     "peak_memory_mb": 812.0, "batch_size": 1, "error": null}

A failed sample has ``"error": "ErrorType: message"``, ``"stage"``: ``"data"`` (its media could not be used; skipped
under ``data.on_error: skip``) or ``"model"`` (the model call raised), and null prediction/correct/kept. ``rank`` and
``world_size`` name the process that wrote the row. Rows are keyed by ``(hash, id)``: a rerun skips keys already
present (failed ones too, unless asked to retry them), and rows whose hash no setting of the current config has are
ignored (the config changed since they were written).

Crash safety (:mod:`fusion.jsonl`): each row is one flushed, fsynced write, so a killed run loses at most the row
being written. On reopening, a torn last line is reported, cut from the file and its sample redone; a bad line
anywhere else raises :class:`~fusion.errors.RunFileError` naming the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from fusion.crash_points import crash_point
from fusion.jsonl import append_row, read_rows

SINGLE = "samples.jsonl"
_RANK_FILE = re.compile(r"^samples\.rank(\d+)-of-(\d+)\.jsonl$")


def samples_name(tag: str = "") -> str:
    """``samples.jsonl`` for one process, ``samples.<tag>.jsonl`` for a rank (``tag`` as :attr:`Ranks.tag`)."""
    return f"samples.{tag}.jsonl" if tag else SINGLE


def sample_files(run_dir: str | Path) -> list[Path]:
    """Every samples file in ``run_dir``: ``samples.jsonl`` first, then the rank files by (world size, rank)."""
    run_dir = Path(run_dir)
    ranked = []
    for path in run_dir.glob("samples.rank*-of-*.jsonl"):
        match = _RANK_FILE.match(path.name)
        if match and path.is_file():
            ranked.append(((int(match.group(2)), int(match.group(1))), path))
    single = [run_dir / SINGLE] if (run_dir / SINGLE).is_file() else []
    return single + [p for _, p in sorted(ranked)]


def latest(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """``{(hash, id): row}``: the latest row per key, a scored row never replaced by a failed one (module doc)."""
    out: dict[tuple[str, str], dict] = {}
    for row in rows:
        key = (row["hash"], row["id"])
        if row.get("error") and key in out and not out[key].get("error"):
            continue
        out[key] = row
    return out


class SampleLog:
    """Append-only store of per-sample rows (see module doc): appends to ``path``, reads every samples file beside
    it."""

    def __init__(self, path: str | Path, log: Callable[[str], None] = print) -> None:
        self.path = Path(path)
        self._log = log
        self._file = None
        self.rows: list[dict] = []
        self.reload()

    def reload(self) -> None:
        """Read ``path`` (a torn last line is cut off: its sample is redone) and the other samples files of its
        folder (read only: their own rank repairs them)."""
        self.close()
        files = sample_files(self.path.parent)
        if self.path not in files:
            files.append(self.path)
        rows: list[dict] = []
        for path in files:  # one file per iteration
            rows += read_rows(path, self._log, repair=path == self.path)
        self.rows = rows

    def done(self, retry_failed: bool = False) -> set[tuple[str, str]]:
        """``{(hash, id)}`` of the rows that count as done (:func:`latest` decides)."""
        return {k for k, row in latest(self.rows).items() if not (retry_failed and row.get("error"))}

    def append(self, row: dict) -> None:
        """Write ``row`` now (flushed and fsynced), and keep it in memory."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")  # read_rows left the file ending in a newline
        append_row(self._file, row)
        self.rows.append(row)
        crash_point("eval-row")

    def current(self, hashes: set[str]) -> list[dict]:
        """The row per ``(hash, id)`` (:func:`latest`) for the given setting hashes, in first-written order."""
        return [row for key, row in latest(self.rows).items() if key[0] in hashes]

    def stale(self, hashes: set[str]) -> int:
        """Rows whose setting is no longer in the config (or whose settings changed)."""
        return sum(1 for row in self.rows if row.get("hash") not in hashes)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
