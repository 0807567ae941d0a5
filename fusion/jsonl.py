"""The run's append-only JSONL files (eval's ``samples.jsonl``, train's ``metrics.jsonl``): durable appends, and
reading them back after a crash.

A row is written with one ``write`` of ``json + "\\n"``, flushed and fsynced, so a killed process leaves at most one
torn row: the file's last line, cut short (no valid JSON object, no newline). :func:`read_rows` drops that line,
cuts it from the file and says so; the row's work is then redone. A bad line anywhere else is no crash's doing
and raises :class:`~fusion.errors.RunFileError` naming the file and line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

from fusion.errors import RunFileError


def append_row(f: IO[str], row: dict) -> None:
    """Append ``row`` as one line of the open text file ``f``, flushed and fsynced (on disk when this returns)."""
    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _parse(line: bytes) -> dict | None:
    try:
        row = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return row if isinstance(row, dict) else None


def read_rows(path: str | Path, log: Callable[[str], None] = print, repair: bool = True) -> list[dict]:
    """The rows of ``path`` (none when it does not exist), in file order; blank lines are skipped.

    A last line that is not a JSON object is a row torn by a crash: it is dropped with a message to ``log`` and,
    with ``repair``, cut from the file (which then ends after the last good row, newline included), so that the
    next append starts on a line of its own.

    Raises:
        RunFileError: a line before the last is not a JSON object (the file was edited or damaged otherwise).
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    numbered, start = [], 0  # (line number, byte offset, bytes) of each non-blank line
    for i, line in enumerate(data.split(b"\n")):  # the piece after the last newline is b"" for a complete file
        if line.strip():
            numbered.append((i + 1, start, line))
        start += len(line) + 1
    rows: list[dict] = []
    for k, (number, offset, line) in enumerate(numbered):
        row = _parse(line)
        if row is not None:
            rows.append(row)
            continue
        if k < len(numbered) - 1:
            raise RunFileError(f"{path}, line {number}: not a JSON row ({line[:80]!r}); the file was edited or damaged "
                               "(a crash only ever tears the last line). Delete that line (its sample or step is "
                               "redone on the next resume) or the whole file")
        log(f"{path}, line {number}: a row torn by a crash ({len(line)} bytes, {line[:40]!r}...): dropped, its work "
            "is redone")
        if repair:
            with path.open("r+b") as f:  # keep everything up to the torn line's start (after a newline)
                f.truncate(offset)
        return rows
    if repair and data and not data.endswith(b"\n"):  # a complete last row whose newline was not written
        with path.open("ab") as f:
            f.write(b"\n")
    return rows


def rewrite_rows(path: str | Path, rows: list[dict]) -> None:
    """Replace ``path`` by ``rows`` atomically (a temporary file, fsynced, then renamed over it)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
