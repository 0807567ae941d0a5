"""The one progress helper: tqdm on a terminal, a few plain lines (no carriage returns) in a log."""

from __future__ import annotations

import io

import pytest

from fusion.progress import PlainProgress, is_terminal, progress


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal (as stderr in an interactive shell)."""

    def isatty(self) -> bool:
        return True


class Clock:
    """A hand-driven clock for the 30-second rule."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_log_gets_at_most_one_line_per_tenth_and_no_carriage_return():
    log = io.StringIO()
    bar = progress(total=1000, desc="caching train.safetensors", unit="clip", file=log)
    assert isinstance(bar, PlainProgress)
    for _ in range(1000):  # 1,000 fast updates
        bar.update(1)
    bar.close()
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert 1 <= len(lines) <= 11
    assert lines[-1].startswith("caching train.safetensors: 1000/1000 clip (100%)")
    assert "clip/s" in lines[-1] and "elapsed" in lines[-1]


def test_iterating_a_sequence_in_a_log_writes_the_final_count_once():
    log = io.StringIO()
    items = list(progress(range(37), desc="eval", unit="row", file=log))
    assert items == list(range(37))
    lines = log.getvalue().splitlines()
    assert len(lines) <= 11 and lines[-1].startswith("eval: 37/37 row (100%)")
    assert sum(line.startswith("eval: 37/37") for line in lines) == 1


def test_thirty_seconds_without_a_tenth_still_write_a_line():
    log, clock = io.StringIO(), Clock()
    bar = PlainProgress(total=10_000, desc="train", unit="step", file=log, clock=clock)
    bar.update(1)
    assert log.getvalue() == ""  # 0.01 % done, no time passed
    clock.now = 31.0
    bar.set_postfix(loss="0.512")
    bar.update(1)
    line = log.getvalue().splitlines()[-1]
    assert line.startswith("train: 2/10000 step (0%)") and "0:00:31 elapsed" in line and line.endswith("loss=0.512")


def test_an_unknown_total_writes_on_time_only_and_on_close():
    log, clock = io.StringIO(), Clock()
    bar = PlainProgress(desc="requests", file=log, clock=clock)
    for _ in range(500):
        bar.update(1)
    assert log.getvalue() == ""
    bar.close()
    bar.close()  # a second close writes nothing
    assert log.getvalue().splitlines() == [log.getvalue().splitlines()[0]]
    assert log.getvalue().startswith("requests: 500 it")


def test_resumed_bar_counts_from_its_initial_step():
    log = io.StringIO()
    bar = progress(total=100, initial=50, desc="train", file=log)
    for _ in range(50):
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 5 and lines[-1].startswith("train: 100/100 it (100%)")


def test_disabled_bar_writes_nothing_anywhere():
    for stream in (io.StringIO(), FakeTerminal()):
        bar = progress(total=10, file=stream, disable=True)
        for _ in range(10):
            bar.update(1)
        bar.close()
        assert stream.getvalue() == ""


def test_write_passes_messages_through():
    log, out = io.StringIO(), io.StringIO()
    bar = progress(total=10, file=log)
    bar.write("step 5/10 | loss 0.1", file=out)
    assert out.getvalue() == "step 5/10 | loss 0.1\n" and log.getvalue() == ""


def test_a_terminal_gets_tqdm():
    from tqdm import tqdm

    tty = FakeTerminal()
    bar = progress(total=50, desc="caching", unit="clip", file=tty, mininterval=0)
    assert isinstance(bar, tqdm)
    for _ in range(50):
        bar.update(1)
    bar.close()
    text = tty.getvalue()
    assert "\r" in text and "caching" in text and "50/50" in text


@pytest.mark.parametrize("stream, expected", [(io.StringIO(), False), (FakeTerminal(), True), (None, False)])
def test_is_terminal(stream, expected):
    assert is_terminal(stream) is expected


def test_a_closed_stream_is_not_a_terminal():
    stream = io.StringIO()
    stream.close()
    assert is_terminal(stream) is False
