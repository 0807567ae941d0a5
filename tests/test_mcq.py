"""The MCQ schema and the generic JSONL loader: round trip, path resolution, prefix stripping, errors."""

from __future__ import annotations

import json

import pytest

from fusion.data.mcq import MCQSample, load_jsonl, save_jsonl, strip_letter_prefixes
from fusion.errors import DatasetError


def _row(**over):
    row = {"id": "q1", "video": "clips/a.mp4", "question": "what colour ?", "options": ["red", "green", "blue"],
           "answer": "B", "category": "colour"}
    row.update(over)
    return row


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_load_resolves_relative_video_paths_and_keeps_extra_keys(tmp_path):
    path = _write(tmp_path / "set.jsonl", [_row(domain="music"), "", _row(id="q2", video="/abs/b.mp4", answer="C")])
    a, b = load_jsonl(path)
    assert a.video == str(tmp_path / "clips" / "a.mp4") and b.video == "/abs/b.mp4"
    assert a.extra == {"domain": "music"} and a.answer_index == 1 and b.answer_index == 2
    assert a.letters == "ABC"


def test_round_trip_writes_relative_paths(tmp_path):
    samples = [MCQSample("x", str(tmp_path / "v" / "x.mp4"), "how many ?", ["one", "two"], "A", "count",
                         {"seconds": 4})]
    path = save_jsonl(samples, tmp_path / "out.jsonl")
    assert json.loads(path.read_text())["video"] == "v/x.mp4"
    assert load_jsonl(path) == samples


@pytest.mark.parametrize("options, expected", [
    (["A. red", "B. green"], ["red", "green"]),
    (["(A) red", "(B) green"], ["red", "green"]),
    (["A: red", "B) green"], ["red", "green"]),
    (["A. red", "C. green"], ["A. red", "C. green"]),  # letters out of order: left alone
    (["red", "B. green"], ["red", "B. green"]),  # not every option prefixed: left alone
    (["Apple pie", "Banana"], ["Apple pie", "Banana"]),
])
def test_strip_letter_prefixes(options, expected):
    assert strip_letter_prefixes(options) == expected


def test_prefixed_options_in_a_row_are_stripped(tmp_path):
    (sample,) = load_jsonl(_write(tmp_path / "p.jsonl", [_row(options=["A. red", "B. green", "C. blue"])]))
    assert sample.options == ["red", "green", "blue"]


@pytest.mark.parametrize("row, message", [
    ({"id": "q", "video": "a.mp4"}, "missing key"),
    (_row(answer="D"), "'answer' must be one of"),
    (_row(answer="b"), "'answer' must be one of"),
    (_row(options=["only one"]), "2 to 8"),
    (_row(options="red, green"), "2 to 8"),
    (_row(options=["red", ""]), "non-empty"),
    (_row(question=""), "'question'"),
    ([1, 2], "expected a JSON object"),
])
def test_malformed_rows_name_file_and_line(tmp_path, row, message):
    path = _write(tmp_path / "bad.jsonl", [_row(id="fine"), row])
    with pytest.raises(DatasetError, match=message) as info:
        load_jsonl(path)
    assert f"{path}:2" in str(info.value)


def test_invalid_json_line(tmp_path):
    path = _write(tmp_path / "broken.jsonl", [_row(), "{not json"])
    with pytest.raises(DatasetError, match=r"broken.jsonl:2: not valid JSON"):
        load_jsonl(path)


def test_duplicate_ids(tmp_path):
    path = _write(tmp_path / "dup.jsonl", [_row(), _row(question="again ?")])
    with pytest.raises(DatasetError, match=r"dup.jsonl:2: id 'q1' already used on line 1"):
        load_jsonl(path)


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_jsonl(tmp_path / "none.jsonl")
