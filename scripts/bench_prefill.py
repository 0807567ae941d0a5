#!/usr/bin/env python
"""Prefill speed-up against the ideal, peak memory and FLOPs of every method at real model sizes (issue 7).

    python scripts/bench_prefill.py [--model qwen2_5_omni_7b] [--seconds 60] [--repeats 5] [--json r.json] ...

Everything (options, what is measured, the JSON fields) is described in ``fusion/bench/prefill.py``; ``--help``
lists the options.
"""

from __future__ import annotations

from fusion.bench.prefill import main

if __name__ == "__main__":
    main()
