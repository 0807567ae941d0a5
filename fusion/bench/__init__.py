"""Benchmark helpers shared by ``scripts/bench_*.py``: stage timing and interleaved repeats (``timing``), peak
memory (``memory``), FLOPs (``flops``), the ideal prefill and speed-up arithmetic (``ideal``), tables
(``report``), one instrumented prefill (``instrument``), and the prefill benchmark itself (``prefill``,
``prefill_report``).

Importing this package is light; each submodule imports torch/transformers as it needs.
"""
