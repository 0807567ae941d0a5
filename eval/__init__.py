"""The evaluation harness: every method, one table.

    python eval/run.py --config configs/eval_toy.yaml [dotted.key=value ...]

Modules: ``config`` (typed YAML sections), ``matrix`` (methods x retentions -> settings), ``models`` (backbone and
adapters), ``data`` (benchmarks, media decoded once per batch), ``predict`` (one setting on one batch), ``flops``,
``measure`` (latency, memory), ``samples`` (the resumable samples.jsonl), ``aggregate`` and ``report`` (results.json,
results.md, the plot), ``runner`` (the loop). ``lmms_plugin`` / ``lmms_model``: the lmms-eval model plugin, which
alone imports lmms-eval (``import eval`` never does).
"""
