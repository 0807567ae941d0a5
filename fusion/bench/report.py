"""Printing benchmark results: the environment line every table carries, number formatting, markdown tables."""

from __future__ import annotations

import math
import platform
from collections.abc import Sequence

import torch

from fusion.errors import BenchmarkError


def environment(device: torch.device | str = "cpu", dtype: torch.dtype | None = None, attn: str | None = None) -> str:
    """One line naming the versions, the device (GPU name, or CPU architecture + SIMD level) and the run settings."""
    import transformers

    device = torch.device(device)
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        where = (f"CPU {platform.machine()} {torch.backends.cpu.get_cpu_capability()}, "
                 f"{torch.get_num_threads()} torch thread(s)")
    parts = [f"torch {torch.__version__}", f"transformers {transformers.__version__}",
             f"python {platform.python_version()}", where]
    if dtype is not None:
        parts.append(str(dtype).removeprefix("torch."))
    if attn is not None:
        parts.append(attn)
    return ", ".join(parts)


def fmt(value: float | None, digits: int = 2, percent: bool = False) -> str:
    """``value`` with ``digits`` decimals (as a percentage if ``percent``); ``–`` for None / NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.{digits}f} %" if percent else f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; every row must have ``len(header)`` cells (``|`` in a cell is escaped)."""
    for row in rows:
        if len(row) != len(header):
            raise BenchmarkError(f"a table row has {len(row)} cells but the header has {len(header)}: {row!r}; give "
                                 "every row one cell per column")

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])
