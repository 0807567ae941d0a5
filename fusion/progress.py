"""One progress bar for every loop of the repository that reports progress, quiet when its stream is a log file.

:func:`progress` returns a ``tqdm`` bar when the stream (stderr by default) is a terminal. Otherwise (``make demo >
demo.log 2>&1``, a batch job, CI) it returns a :class:`PlainProgress`, which writes one plain line, without
carriage returns, each time the count crosses another ``every_fraction`` of the total (10 %) or ``every_seconds``
(30 s) have passed since the last line, whichever comes first, plus a final line on ``close()`` if the last count
was not written yet. A line carries what the bar shows::

    caching train-b8a9.safetensors: 40/200 clip (20%) | 6.58 clip/s | 0:00:06 elapsed | loss=0.512

So 1,000 fast updates of a known total write at most 10 lines, instead of tqdm's redraw on every update (each one a
``\\r`` "line" in the file). :func:`quiet_library_bars` applies the same rule to the bars of transformers and the hub
client ("Loading weights ..."), which are theirs and cannot be throttled: off a terminal they are turned off.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import IO, Any

EVERY_SECONDS = 30.0
EVERY_FRACTION = 0.1


def is_terminal(stream: IO | None) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes, StringIO and closed streams)."""
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, file: IO | None = None, disable: bool = False, leave: bool = True,
             every_seconds: float = EVERY_SECONDS, every_fraction: float = EVERY_FRACTION, **tqdm_kwargs):
    """A progress bar over ``iterable`` (or updated by hand with ``update(n)``), written to ``file`` (stderr).

    On a terminal: ``tqdm(iterable, total=..., desc=..., unit=..., initial=..., file=..., leave=..., **tqdm_kwargs)``.
    Elsewhere: a :class:`PlainProgress` with the same methods (``update``, ``set_postfix``, ``set_postfix_str``,
    ``write``, ``close``, iteration, ``with``); ``tqdm_kwargs`` (e.g. ``dynamic_ncols``) only concern the terminal.
    ``disable=True`` writes nothing either way.
    """
    file = sys.stderr if file is None else file
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not disable and is_terminal(file):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=file, leave=leave,
                    **tqdm_kwargs)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, file=file, disable=disable,
                         every_seconds=every_seconds, every_fraction=every_fraction)


class PlainProgress:
    """A progress report for logs: plain lines at most every ``every_fraction`` of the total or ``every_seconds``
    (module doc). Attributes ``n`` (count so far) and ``total`` as tqdm's."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, file: IO | None = None, disable: bool = False,
                 every_seconds: float = EVERY_SECONDS, every_fraction: float = EVERY_FRACTION,
                 clock=time.monotonic) -> None:
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.file = sys.stderr if file is None else file
        self.disable, self.every_seconds, self.every_fraction = disable, every_seconds, every_fraction
        self.clock = clock
        self.n = self.start_n = self.written_n = initial
        self.start = self.written_at = clock()
        self.postfix = ""
        self.closed = False

    # ------------------------------------------------------------------ tqdm's interface
    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:  # one item per iteration
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total if self.total is not None else len(self.iterable)

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Add ``n`` to the count; write a line if another fraction of the total or enough time has passed."""
        self.n += n
        if self.disable or self.closed:
            return
        now = self.clock()
        if self._crossed_fraction() or now - self.written_at >= self.every_seconds:
            self._write_line(now)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Extra ``key=value`` fields shown at the end of the next line (as tqdm's)."""
        fields = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in fields.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        """Nothing to redraw in a log."""

    def write(self, text: str, file: IO | None = None, end: str = "\n") -> None:
        """Print ``text`` (tqdm's ``bar.write``: a message that does not break the bar)."""
        stream = self.file if file is None else file
        stream.write(text + end)
        stream.flush()

    def close(self) -> None:
        """Write the final line (if the last count was not written) once."""
        if self.closed:
            return
        self.closed = True
        if not self.disable and self.n != self.written_n:
            self._write_line(self.clock())

    # ------------------------------------------------------------------ lines
    def _crossed_fraction(self) -> bool:
        if not self.total or self.every_fraction <= 0:
            return False
        step = self.total * self.every_fraction
        return int(self.n / step) > int(self.written_n / step)

    def line(self, now: float | None = None) -> str:
        """``desc: n/total unit (pct%) | rate unit/s | elapsed [| postfix]``."""
        elapsed = (self.clock() if now is None else now) - self.start
        count = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        if self.total:
            count += f" ({100 * self.n / self.total:.0f}%)"
        done = self.n - self.start_n
        rate = f"{done / elapsed:.3g} {self.unit}/s" if elapsed > 0 and done > 0 else f"? {self.unit}/s"
        parts = [f"{self.desc}: {count}" if self.desc else count, rate,
                 f"{timedelta(seconds=int(elapsed))} elapsed"]
        if self.postfix:
            parts.append(self.postfix)
        return " | ".join(parts)

    def _write_line(self, now: float) -> None:
        self.write(self.line(now))
        self.written_n, self.written_at = self.n, now


def quiet_library_bars(file: IO | None = None) -> bool:
    """Turn off transformers' and huggingface_hub's own progress bars when ``file`` (stderr) is not a terminal (their
    redraws would fill a log); return whether they were turned off. Nothing is imported that is not installed."""
    if is_terminal(sys.stderr if file is None else file):
        return False
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
    return True
