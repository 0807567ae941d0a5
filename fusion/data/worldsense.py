"""WorldSense (Hong et al., arXiv 2502.04326) from a local copy of the HF dataset ``honglyhly/WorldSense``.

Expected layout (the dataset's ``worldsense_qa.json`` plus its unzipped videos)::

    ROOT/worldsense_qa.json
    ROOT/videos/<video_id>.mp4

``worldsense_qa.json`` maps each video id to an entry with ``video_id, video_duration, duration, domain,
sub_category, audio_class, video_caption`` and ``task0 ... taskN``; each task holds ``task_domain, task_type,
question, answer`` (a letter) and ``candidates`` (``["A. ...", "B. ...", ...]``). Every task becomes one
:class:`~fusion.data.mcq.MCQSample` with ``id = "<video_id>/<taskK>"``, ``category = task_type`` and
``extra = {domain, task_domain, sub_category, audio_class, duration, video_duration, video_id, task}``, so
results can be grouped by task type (the category), domain or duration as lmms-eval does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from fusion.data.mcq import MCQSample, strip_letter_prefixes
from fusion.errors import DatasetError

QA_FILE = "worldsense_qa.json"
VIDEO_DIR = "videos"
_TASK = re.compile(r"^task(\d+)$")
VIDEO_KEYS = ("domain", "sub_category", "audio_class", "duration", "video_duration")
TASK_KEYS = ("task_type", "question", "answer", "candidates")


def load_worldsense(root: str | Path, qa_file: str = QA_FILE, video_dir: str = VIDEO_DIR,
                    check_videos: bool = False) -> list[MCQSample]:
    """All WorldSense questions under ``root`` as MCQ samples, in file order (video, then task number).

    Args:
        root: the dataset folder.
        qa_file: the QA file's name inside ``root``.
        video_dir: the videos' folder inside ``root``.
        check_videos: raise if a referenced video file is missing (otherwise decoding reports it later).

    Raises:
        DatasetError: missing/invalid JSON, an entry without tasks, or a task missing a field (names the
            video id and task).
    """
    root = Path(root)
    path = root / qa_file
    if not path.is_file():
        raise DatasetError(f"no {qa_file} in {root}; download the WorldSense dataset (honglyhly/WorldSense) and "
                           f"unzip its videos into {root / video_dir}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: the top level must map video ids to entries, got {type(data).__name__}")
    samples = []
    for key, entry in data.items():  # one video per iteration
        where = f"{path} [{key!r}]"
        if not isinstance(entry, dict):
            raise DatasetError(f"{where}: expected an object, got {type(entry).__name__}")
        video_id = str(entry.get("video_id", key))
        video = root / video_dir / f"{video_id}.mp4"
        if check_videos and not video.is_file():
            raise DatasetError(f"{where}: video {video} is missing")
        tasks = sorted((int(m.group(1)), name) for name in entry if (m := _TASK.match(name)))
        if not tasks:
            raise DatasetError(f"{where}: no task0..taskN entries")
        shared = {k: entry[k] for k in VIDEO_KEYS if k in entry}
        for _, name in tasks:  # one question per iteration
            samples.append(_task_sample(entry[name], video_id, name, str(video), shared, f"{where}.{name}"))
    return samples


def _task_sample(task, video_id: str, name: str, video: str, shared: dict, where: str) -> MCQSample:
    if not isinstance(task, dict):
        raise DatasetError(f"{where}: expected an object, got {type(task).__name__}")
    missing = [k for k in TASK_KEYS if k not in task]
    if missing:
        raise DatasetError(f"{where}: missing field(s) {missing}")
    candidates = task["candidates"]
    if not isinstance(candidates, list):
        raise DatasetError(f"{where}: 'candidates' must be a list of 'A. ...' strings")
    options = strip_letter_prefixes(candidates)
    if options == list(candidates):
        raise DatasetError(f"{where}: candidates must read 'A. ...', 'B. ...' in order, got {candidates!r}")
    extra = {**shared, "task_domain": task.get("task_domain"), "video_id": video_id, "task": name}
    try:
        return MCQSample(id=f"{video_id}/{name}", video=video, question=task["question"], options=options,
                         answer=str(task["answer"]).strip(), category=task["task_type"], extra=extra)
    except DatasetError as e:
        raise DatasetError(f"{where}: {e}") from None
