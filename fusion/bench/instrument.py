"""One instrumented prefill: :class:`Bench` runs ``model(**inputs, logits_to_keep=1)`` with a compressor and returns
its stage times (hooks that only record marks), and on request its selection FLOPs, keep mask and peak memory.

Stages (seconds): ``total``; ``video_encoder`` / ``audio_encoder`` (the towers' forwards); ``select`` (the compressor
call + the audio-encoder attention scores it requires, ``fusion.model.audio_attention.attention_received`` (on
Qwen3-Omni ``attention_received_tokens``), + an in-LLM method's attention row and gather,
``fusion.model.hooked_lm.last_token_row`` / ``drop_tokens``); ``llm`` (decoder layer 0's start to the final norm's
end, minus the in-LLM selection); ``other`` (the rest: embedding, TMRoPE ids, annotation, ``apply_keep``,
``lm_head``).
"""

from __future__ import annotations

import contextlib

import torch

import fusion.model.hooked_lm as hooked_lm
import fusion.model.qwen3_thinker as qwen3_module  # where Qwen3-Omni's hook calls attention_received_tokens
import fusion.model.token_building as thinker_module  # where build_tokens calls attention_received
from fusion.bench.flops import FlopTally, ffn_width, prefill_flops
from fusion.bench.ideal import keep_from_source
from fusion.bench.memory import PeakMemory
from fusion.bench.timing import Fanout, StageTimer, function_span, module_span
from fusion.model.llm_hooks import layer_token_counts
from fusion.pruners.base import Compressor

STAGES = ("total", "video_encoder", "audio_encoder", "select", "llm", "other")


class FlopCounting:
    """``around`` for the timed spans: runs the call, under a :class:`FlopTally` while :attr:`tally` is set."""

    def __init__(self) -> None:
        self.tally: FlopTally | None = None

    def __call__(self, call):
        return self.tally.count(call) if self.tally is not None else call()


class Timed(Compressor):
    """A compressor whose calls are timed as span ``select`` (and FLOP-counted while counting is on)."""

    def __init__(self, inner, timer: StageTimer, flops: FlopCounting) -> None:
        self.inner, self.timer, self.flops = inner, timer, flops
        self.name = getattr(inner, "name", type(inner).__name__)
        self.requires = getattr(inner, "requires", frozenset())
        self.retention = getattr(inner, "retention", 1.0)

    def llm_hook(self):
        make = getattr(self.inner, "llm_hook", None)
        return make() if make is not None else None

    def __call__(self, tokens):
        self.timer.start("select")
        try:
            return self.flops(lambda: self.inner(tokens))
        finally:
            self.timer.stop("select")


class Bench:
    """The instrumented model: :meth:`call` = one prefill with every stage timed (module doc). Enter
    :meth:`instrument` once around all calls."""

    def __init__(self, model, inputs: dict, device: torch.device) -> None:
        self.model, self.inputs, self.device = model, inputs, device
        self.timer, self.flops = StageTimer(device), FlopCounting()
        self.marks = Fanout(self.timer)  # module hooks feed the timer, and a PeakMemory while one is measuring
        self._swap = 0

    def instrument(self) -> contextlib.ExitStack:
        """Install every stage hook (enter once for the whole benchmark)."""
        lm, model, around = self.model.model.language_model, self.model.model, self.flops
        stack = contextlib.ExitStack()
        stack.enter_context(module_span(self.marks, model.visual, "video_encoder"))
        stack.enter_context(module_span(self.marks, model.audio_tower, "audio_encoder"))
        stack.enter_context(module_span(self.marks, lm.layers[0], "llm_span", end_module=lm.norm))
        stack.enter_context(function_span(self.timer, thinker_module, "attention_received", "scores", around))
        stack.enter_context(function_span(self.timer, qwen3_module, "attention_received_tokens", "scores", around))
        stack.enter_context(function_span(self.timer, hooked_lm, "last_token_row", "in_llm_select", around))
        stack.enter_context(function_span(self.timer, hooked_lm, "drop_tokens", "in_llm_select", around))
        return stack

    def call(self, compressor) -> tuple[dict[str, float], object]:
        """``(stage seconds, output)`` of one prefill with ``compressor``."""
        self.model.set_compressor(Timed(compressor, self.timer, self.flops))
        self.timer.reset()
        with torch.no_grad():
            self.timer.start("total")
            out = self.model(**self.inputs, logits_to_keep=1)
            self.timer.stop("total")
        raw = self.timer.seconds()
        inner = raw.get("in_llm_select", 0.0)
        stages = {"total": raw["total"], "video_encoder": raw.get("video_encoder", 0.0),
                  "audio_encoder": raw.get("audio_encoder", 0.0),
                  "select": raw.get("select", 0.0) + raw.get("scores", 0.0) + inner,
                  "llm": raw.get("llm_span", 0.0) - inner}
        stages["other"] = stages["total"] - sum(v for k, v in stages.items() if k != "total")
        return stages, out

    def calibrate(self, compressor) -> dict:
        """One untimed call: keep mask (for the ideal), kept counts, per-layer tokens, FLOPs."""
        self.flops.tally = FlopTally()
        try:
            _, out = self.call(compressor)
        finally:
            tally, self.flops.tally = self.flops.tally, None
        stats, text = self.model.last_stats, self.model.config.get_text_config()
        layers = layer_token_counts(stats, text.num_hidden_layers)[0].tolist()
        return {"keep": keep_from_source(out.source_index, self.inputs["input_ids"].shape[1]), "stats": stats,
                "layer_tokens": layers, "select_flops": tally.total,
                "llm_flops": prefill_flops(layers, text.hidden_size, ffn_width(text))}

    def pair(self, method, ideal) -> dict[str, dict[str, float]]:
        """The method and its ideal back to back, alternating which runs first."""
        self._swap ^= 1
        order = (("method", method), ("ideal", ideal)) if self._swap else (("ideal", ideal), ("method", method))
        return {label: self.call(c)[0] for label, c in order}

    def memory(self, compressor) -> dict[str, int]:
        """Peak memory of one prefill: ``delta`` (whole call), ``llm`` (inside the LLM stage), ``peak`` (bytes)."""
        with PeakMemory(self.device) as mem:
            self.marks.listeners.append(mem)
            try:
                self.call(compressor)
            finally:
                self.marks.listeners.remove(mem)
        return {"delta": mem.delta, "llm": mem.stage_delta.get("llm_span", 0), "peak": mem.peak}
