"""``samples.jsonl``: one line per (method setting, question), appended as soon as it is produced.

A row::

    {"key": "uniform@25%", "hash": "3f1c0a9b2d4e", "name": "uniform", "id": "test-00007", "category": "beep_count",
     "groups": {"category": "beep_count"}, "answer": "C", "prediction": "C", "correct": true, "response": null,
     "kept": {"video_before": 32, "video_after": 8, "audio_before": 100, "audio_after": 25, "sequence_before": 170,
              "sequence_after": 71},
     "flops": {"llm_prefill": ..., "llm_decode": ..., "block": 0.0}, "prefill_ms": 12.3, "generate_ms": null,
     "peak_memory_mb": 812.0, "batch_size": 1, "error": null}

A failed sample has ``"error": "ErrorType: message"``, ``"stage"``: ``"data"`` (its media could not be used; skipped
under ``data.on_error: skip``) or ``"model"`` (the model call raised), and null prediction/correct/kept. Rows are
keyed by ``(hash, id)``: a rerun skips keys already present (failed ones too, unless asked to retry them), and rows
whose hash no setting of the current config has are ignored (the config changed since they were written).

Crash safety (:mod:`fusion.jsonl`): each row is one flushed, fsynced write, so a killed run loses at most the row
being written. On reopening, a torn last line is reported, cut from the file and its sample redone; a bad line
anywhere else raises :class:`~fusion.errors.RunFileError` naming the file and line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fusion.crash_points import crash_point
from fusion.jsonl import append_row, read_rows


class SampleLog:
    """Append-only store of per-sample rows (see module doc)."""

    def __init__(self, path: str | Path, log: Callable[[str], None] = print) -> None:
        self.path = Path(path)
        self.rows: list[dict] = read_rows(self.path, log)  # a torn last line is cut off: its sample is redone
        self._file = None

    def done(self, retry_failed: bool = False) -> set[tuple[str, str]]:
        """``{(hash, id)}`` of the rows that count as done (the latest row per key decides)."""
        latest: dict[tuple[str, str], dict] = {}
        for row in self.rows:
            latest[(row["hash"], row["id"])] = row
        return {k for k, row in latest.items() if not (retry_failed and row.get("error"))}

    def append(self, row: dict) -> None:
        """Write ``row`` now (flushed and fsynced), and keep it in memory."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")  # read_rows left the file ending in a newline
        append_row(self._file, row)
        self.rows.append(row)
        crash_point("eval-row")

    def current(self, hashes: set[str]) -> list[dict]:
        """The latest row per ``(hash, id)`` for the given setting hashes, in first-written order."""
        latest: dict[tuple[str, str], dict] = {}
        for row in self.rows:
            if row.get("hash") in hashes:
                latest[(row["hash"], row["id"])] = row
        return list(latest.values())

    def stale(self, hashes: set[str]) -> int:
        """Rows whose setting is no longer in the config (or whose settings changed)."""
        return sum(1 for row in self.rows if row.get("hash") not in hashes)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
