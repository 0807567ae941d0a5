"""The one multiple-choice sample schema every benchmark loader produces, and the generic JSONL loader.

A JSONL row (one JSON object per line)::

    {"id": "clip-0001", "video": "videos/clip-0001.mp4", "question": "how many beeps are heard ?",
     "options": ["one", "two", "three", "four"], "answer": "C", "category": "beep_count",
     ...any other keys (kept in ``extra``)}

* ``options`` are the option TEXTS, without ``"A. "`` prefixes (a list whose every entry carries its own
  letter prefix, ``["A. x", "B. y", ...]``, is accepted and stripped);
* ``answer`` is the letter of the correct option (``A`` for the first);
* ``video`` is a path, resolved against the JSONL file's folder when relative.

Malformed rows raise :class:`~fusion.errors.DatasetError` naming the file and line.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fusion.errors import DatasetError

LETTERS = "ABCDEFGH"
REQUIRED = ("id", "video", "question", "options", "answer", "category")
_PREFIX = re.compile(r"^\s*\(?([A-H])\s*[.):]\s*")


@dataclass
class MCQSample:
    """One multiple-choice question about one video.

    Attributes:
        id: unique id within its dataset.
        video: path of the media file (absolute after loading).
        question: the question text.
        options: option texts in letter order (``options[0]`` is ``A``), 2 to 8 of them.
        answer: the correct option's letter.
        category: the category results are grouped by (ToyWorld category, WorldSense task type, ...).
        extra: anything else the dataset provides (e.g. WorldSense ``domain``, ``duration``).
    """

    id: str
    video: str
    question: str
    options: list[str]
    answer: str
    category: str
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = validate(self)
        if problems:
            raise DatasetError(f"sample {self.id!r}: {problems}")

    @property
    def letters(self) -> str:
        """The option letters, e.g. ``"ABCD"``."""
        return LETTERS[: len(self.options)]

    @property
    def answer_index(self) -> int:
        """Index of the correct option (0 for ``A``)."""
        return LETTERS.index(self.answer)

    def to_row(self, relative_to: str | Path | None = None) -> dict:
        """The JSONL row (``extra`` keys flattened in); ``video`` relative to ``relative_to`` when possible."""
        row = {k: v for k, v in asdict(self).items() if k != "extra"}
        if relative_to is not None:
            try:
                row["video"] = Path(self.video).resolve().relative_to(Path(relative_to).resolve()).as_posix()
            except ValueError:
                pass
        return {**row, **self.extra}


def validate(sample: MCQSample) -> str:
    """What is wrong with ``sample`` (empty string when nothing)."""
    if not isinstance(sample.options, list) or not 2 <= len(sample.options) <= len(LETTERS):
        return f"'options' must be a list of 2 to {len(LETTERS)} option texts, got {sample.options!r}"
    if not all(isinstance(o, str) and o.strip() for o in sample.options):
        return f"every option must be a non-empty string, got {sample.options!r}"
    if not isinstance(sample.answer, str) or sample.answer not in LETTERS[: len(sample.options)]:
        return (f"'answer' must be one of the option letters {list(LETTERS[: len(sample.options)])}, "
                f"got {sample.answer!r}")
    for key in ("id", "video", "question", "category"):
        value = getattr(sample, key)
        if not isinstance(value, str) or not value.strip():
            return f"{key!r} must be a non-empty string, got {value!r}"
    return ""


def strip_letter_prefixes(options: list[str]) -> list[str]:
    """``["A. x", "B. y"]`` -> ``["x", "y"]`` when EVERY option carries its own letter prefix in order
    (``A.``, ``(A)``, ``A)`` or ``A:``); any other list is returned unchanged."""
    matches = [_PREFIX.match(o) if isinstance(o, str) else None for o in options]
    if all(m is not None and m.group(1) == LETTERS[i] for i, m in enumerate(matches)) and len(options) <= len(LETTERS):
        return [o[m.end():].strip() for o, m in zip(options, matches)]
    return list(options)


def sample_from_row(row: dict, base: Path, where: str) -> MCQSample:
    """Build a sample from a JSON object; ``where`` (file:line) goes into error messages."""
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}; each line holds one question "
                           "as an object with keys " + ", ".join(REQUIRED))
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise DatasetError(f"{where}: missing key(s) {missing}; every row needs {list(REQUIRED)}")
    options = row["options"]
    if isinstance(options, list):
        options = strip_letter_prefixes(options)
    video = row["video"]
    if isinstance(video, str) and video and not Path(video).is_absolute():
        video = str(base / video)
    extra = {k: v for k, v in row.items() if k not in REQUIRED}
    try:
        return MCQSample(id=str(row["id"]), video=video, question=row["question"], options=options,
                         answer=row["answer"], category=row["category"], extra=extra)
    except DatasetError as e:
        raise DatasetError(f"{where}: {e}; fix that line") from None


def load_jsonl(path: str | Path) -> list[MCQSample]:
    """Read an MCQ JSONL file (schema in the module doc). Blank lines are skipped; ids must be unique.

    Raises:
        DatasetError: the file is missing, a line is not JSON, a row breaks the schema, or an id repeats.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"MCQ file {path} does not exist")
    samples: list[MCQSample] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):  # one row per line
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); fix or delete that line "
                                   "(one JSON object per line, schema in fusion/data/mcq.py)") from None
            sample = sample_from_row(row, path.parent, where)
            if sample.id in seen:
                raise DatasetError(f"{where}: id {sample.id!r} already used on line {seen[sample.id]}; ids must be "
                                   "unique")
            seen[sample.id] = number
            samples.append(sample)
    return samples


def save_jsonl(samples: list[MCQSample], path: str | Path) -> Path:
    """Write ``samples`` as JSONL, video paths relative to the file's folder where possible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(sample.to_row(relative_to=path.parent), ensure_ascii=False) + "\n")
    return path
