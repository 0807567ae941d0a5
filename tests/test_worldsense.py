"""WorldSense loader on small fixtures written in the exact `worldsense_qa.json` layout."""

from __future__ import annotations

import json

import pytest

from fusion.data.worldsense import load_worldsense
from fusion.errors import DatasetError


def _task(task_type, question, answer, domain="Recognition"):
    return {"task_domain": domain, "task_type": task_type, "question": question, "answer": answer,
            "candidates": ["A. a dog", "B. a cat", "C. a car", "D. a bell"]}


def _entry(video_id, domain, tasks, duration="<1min"):
    entry = {"video_id": video_id, "video_duration": 42.5, "duration": duration, "domain": domain,
             "sub_category": "Pets", "audio_class": ["Speech", "Animal"], "video_caption": "a pet at home"}
    entry.update({f"task{i}": t for i, t in enumerate(tasks)})
    return entry


@pytest.fixture
def worldsense_root(tmp_path):
    data = {
        "vidA": _entry("vidA", "Daily Life", [_task("Audio Recognition", "What makes the sound?", "B"),
                                                _task("Object Counting", "How many animals?", "D", "Reasoning")]),
        "vidB": _entry("vidB", "Music", [_task("Temporal Localization", "When does the bell ring?", "C")], "1-2min"),
    }
    (tmp_path / "worldsense_qa.json").write_text(json.dumps(data))
    return tmp_path


def test_every_task_becomes_a_sample(worldsense_root):
    samples = load_worldsense(worldsense_root)
    assert [s.id for s in samples] == ["vidA/task0", "vidA/task1", "vidB/task0"]
    a0, a1, b0 = samples
    assert a0.video == str(worldsense_root / "videos" / "vidA.mp4")
    assert a0.options == ["a dog", "a cat", "a car", "a bell"] and a0.answer == "B" and a1.answer_index == 3
    assert [s.category for s in samples] == ["Audio Recognition", "Object Counting", "Temporal Localization"]
    assert a1.extra["domain"] == "Daily Life" and a1.extra["task_domain"] == "Reasoning"
    assert b0.extra["duration"] == "1-2min" and b0.extra["audio_class"] == ["Speech", "Animal"]
    assert a0.question == "What makes the sound?"


def test_tasks_are_ordered_by_number(tmp_path):
    tasks = {f"task{i}": _task("Event Recognition", f"q{i}", "A") for i in (10, 2, 0, 1)}
    entry = {"video_id": "v", "domain": "Games", "duration": "<1min", **tasks}
    (tmp_path / "worldsense_qa.json").write_text(json.dumps({"v": entry}))
    assert [s.question for s in load_worldsense(tmp_path)] == ["q0", "q1", "q2", "q10"]


def test_missing_qa_file(tmp_path):
    with pytest.raises(DatasetError, match="no worldsense_qa.json"):
        load_worldsense(tmp_path)


def test_check_videos(worldsense_root):
    with pytest.raises(DatasetError, match="vidA.mp4 is missing"):
        load_worldsense(worldsense_root, check_videos=True)
    (worldsense_root / "videos").mkdir()
    for v in ("vidA", "vidB"):
        (worldsense_root / "videos" / f"{v}.mp4").write_bytes(b"x")
    assert len(load_worldsense(worldsense_root, check_videos=True)) == 3


@pytest.mark.parametrize("task, message", [
    ({"task_type": "X", "question": "q", "answer": "A"}, r"missing field\(s\) \['candidates'\]"),
    ({**_task("X", "q", "E")}, "'answer' must be one of"),
    ({**_task("X", "q", "A"), "candidates": ["a dog", "a cat"]}, "candidates must read 'A. ...'"),
])
def test_bad_task_names_video_and_task(tmp_path, task, message):
    (tmp_path / "worldsense_qa.json").write_text(json.dumps({"vid9": _entry("vid9", "Sports", [task])}))
    with pytest.raises(DatasetError, match=message) as info:
        load_worldsense(tmp_path)
    assert "'vid9'" in str(info.value) and "task0" in str(info.value)


def test_entry_without_tasks(tmp_path):
    (tmp_path / "worldsense_qa.json").write_text(json.dumps({"v": {"video_id": "v", "domain": "Music"}}))
    with pytest.raises(DatasetError, match="no task0..taskN"):
        load_worldsense(tmp_path)
