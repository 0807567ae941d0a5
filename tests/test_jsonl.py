"""The run's append-only JSONL files after a crash: a torn last line is dropped, cut from the file and reported (its
work is redone); a bad line anywhere else is a RunFileError naming the file and line."""

from __future__ import annotations

import json

import pytest

from eval.samples import SampleLog
from fusion.errors import RunFileError
from fusion.jsonl import append_row, read_rows, rewrite_rows

ROWS = [{"id": "a", "x": 1}, {"id": "b", "x": "é"}, {"id": "c", "x": 3}]


def _text(rows):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def test_a_torn_last_line_is_dropped_cut_off_and_reported(tmp_path):
    path = tmp_path / "samples.jsonl"
    full = _text(ROWS)
    path.write_text(full[:-9], encoding="utf-8")  # the last row cut mid-write
    messages = []
    assert read_rows(path, messages.append) == ROWS[:2]
    assert len(messages) == 1 and "line 3: a row torn by a crash" in messages[0] and str(path) in messages[0]
    assert path.read_text(encoding="utf-8") == _text(ROWS[:2])  # cut back to the last complete row
    with path.open("a", encoding="utf-8") as f:
        append_row(f, ROWS[2])
    assert read_rows(path, messages.append) == ROWS and len(messages) == 1


def test_a_line_torn_inside_a_multibyte_character_is_torn_too(tmp_path):
    path = tmp_path / "samples.jsonl"
    data = _text(ROWS[:2]).encode()
    path.write_bytes(data[: data.index("é".encode()) + 1])  # half of the two-byte é
    assert read_rows(path, lambda _: None) == ROWS[:1]
    assert path.read_bytes() == _text(ROWS[:1]).encode()


def test_a_complete_last_row_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_text(ROWS).rstrip("\n"), encoding="utf-8")
    messages = []
    assert read_rows(path, messages.append) == ROWS and not messages
    assert path.read_text(encoding="utf-8") == _text(ROWS)  # the newline added: the next row starts its own line


def test_a_bad_line_before_the_last_is_a_typed_error_naming_file_and_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    lines = _text(ROWS).splitlines()
    path.write_text("\n".join([lines[0], lines[1][:10], "", lines[2]]) + "\n", encoding="utf-8")
    with pytest.raises(RunFileError, match=r"samples\.jsonl, line 2: not a JSON row.*Delete that line"):
        read_rows(path)
    with pytest.raises(RunFileError, match="line 2"):
        SampleLog(path)
    path.write_text(_text(ROWS[:1]) + "[1, 2]\n" + _text(ROWS[2:]), encoding="utf-8")  # JSON, but not a row
    with pytest.raises(RunFileError, match="line 2"):
        read_rows(path)


def test_missing_and_rewritten_files(tmp_path):
    path = tmp_path / "none.jsonl"
    assert read_rows(path) == [] and not path.exists()
    rewrite_rows(path, ROWS[:2])
    assert read_rows(path) == ROWS[:2] and not (tmp_path / "none.jsonl.tmp").exists()


def test_the_sample_log_redoes_a_torn_row(tmp_path):
    path = tmp_path / "samples.jsonl"
    rows = [{"hash": "h", "id": i, "correct": True} for i in ("a", "b")]
    path.write_text(_text(rows)[:-5])
    messages = []
    log = SampleLog(path, messages.append)
    assert log.done() == {("h", "a")} and messages
    log.append(rows[1])
    log.close()
    assert read_rows(path) == rows
