"""One method setting on one prepared batch: predictions, kept tokens, FLOPs, latency and memory per sample.

Scoring modes:

* ``logits``: one forward (the prefill, timed): ``pred = argmax_k logits[last real position, id(letter_k)]`` over the
  sample's option letters (:func:`fusion.data.scoring.predict_from_output`). At batch size 1 only the last position's
  logits are computed (``logits_to_keep=1``).
* ``generate``: greedy ``model.generate`` (timed as ``generate_ms``), then the letter is parsed from the new text as
  lmms-eval's WorldSense scorer does (:func:`fusion.data.scoring.parse_letter`); with ``time_prefill`` a separate
  prefill forward is timed first (``prefill_ms``).

Times are per batch divided by its size. Kept counts come from ``model.last_stats`` of the call, FLOPs from
:mod:`eval.flops` with ``layer_tokens`` for in-LLM methods.
"""

from __future__ import annotations

import torch

from eval.config import EvalConfig
from eval.data import Prepared
from eval.flops import block_flops, group_counts, llm_flops
from eval.matrix import Setting
from eval.measure import Measure
from eval.models import thinker_of
from fusion.bench.flops import ffn_width
from fusion.data.mcq import LETTERS
from fusion.data.scoring import letter_token_ids, parse_letter, predict_from_output
from fusion.errors import DatasetError
from fusion.model.llm_hooks import layer_token_counts

KEPT = ("video_before", "video_after", "audio_before", "audio_after", "sequence_before", "sequence_after")


@torch.no_grad()
def _forward(model, inputs: dict):
    batch = inputs["input_ids"].shape[0]
    return model(**inputs, logits_to_keep=1 if batch == 1 else 0)


@torch.no_grad()
def _generate(model, inputs: dict, max_new_tokens: int, pad_token_id: int):
    return model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_token_id)


def tell_samples(model, prepared: Prepared) -> None:
    """Give a scene-aware compressor (the ToyWorld ``evidence_oracle``) the batch's scenes and categories."""
    compressor = thinker_of(model).compressor
    if not hasattr(compressor, "set_batch"):
        return
    scenes = [s.extra.get("scene") for s in prepared.samples]
    if any(scene is None for scene in scenes):
        missing = next(s.id for s, scene in zip(prepared.samples, scenes) if scene is None)
        raise DatasetError(f"method {compressor.name!r} reads each sample's ToyWorld scene, and sample {missing!r} "
                           "has none (extra.scene); run it on the toyworld benchmark only")
    compressor.set_batch(scenes, [s.category for s in prepared.samples])


def warm_up(model, prepared: Prepared, cfg: EvalConfig, processor) -> None:
    """``cfg.scoring.warmup`` untimed calls of the kind the setting will be timed on."""
    tell_samples(model, prepared)
    for _ in range(cfg.scoring.warmup):  # one warm-up call per iteration
        if cfg.scoring.mode == "logits" or cfg.scoring.time_prefill:
            _forward(model, prepared.inputs)
        if cfg.scoring.mode == "generate":
            _generate(model, prepared.inputs, cfg.scoring.max_new_tokens, processor.tokenizer.pad_token_id)


def sample_flops(model, setting: Setting, steps: int) -> dict[str, list[float]]:
    """Per-sample ``llm_prefill``, ``llm_decode`` and ``block`` (the selection's own: the learned block, or the
    attention oracle's uncompressed teacher prefill) FLOPs of the model's last call."""
    thinker = thinker_of(model)
    text = thinker.config.get_text_config()
    stats = thinker.last_stats
    per_layer = layer_token_counts(stats, text.num_hidden_layers)  # (B, T)
    prefill, decode = llm_flops(per_layer, text.hidden_size, ffn_width(text), steps)  # MoE: active width
    block = torch.zeros_like(prefill)
    if setting.method == "fusion":
        compressor = thinker.compressor
        video, audio, question = group_counts(thinker.last_tokens, compressor.base.turn_end_token_id)
        block = block_flops(compressor.config, text.hidden_size, video, audio, question)
    elif setting.method == "attention_oracle":  # its teacher is one more, uncompressed, prefill: counted as selection
        full = thinker.last_tokens.attention_mask.sum(1)[:, None].expand_as(per_layer)  # (B, T)
        block = llm_flops(full, text.hidden_size, ffn_width(text), steps)[0]
    return {"llm_prefill": prefill.tolist(), "llm_decode": decode.tolist(), "block": block.tolist()}


def run_batch(model, prepared: Prepared, setting: Setting, cfg: EvalConfig, processor,
              device: torch.device) -> list[dict]:
    """Score ``prepared`` with ``model`` (its compressor installed); one result dict per sample (module doc)."""
    inputs, samples = prepared.inputs, prepared.samples
    B = len(samples)
    tell_samples(model, prepared)
    prefill_ms = generate_ms = None
    peak = 0.0
    responses: list[str | None] = [None] * B
    if cfg.scoring.mode == "logits" or cfg.scoring.time_prefill:
        with Measure(device) as m:
            out = _forward(model, inputs)
        prefill_ms, peak = m.result.ms / B, m.result.peak_mb
    thinker = thinker_of(model)
    if cfg.scoring.mode == "logits":
        letter_ids = letter_token_ids(processor.tokenizer, LETTERS[: int(prepared.n_options.max())])
        pred = predict_from_output(out, inputs["attention_mask"], letter_ids, prepared.n_options.to(device)).tolist()
        predictions = [LETTERS[i] for i in pred]
    else:
        with Measure(device) as m:
            sequences = _generate(model, inputs, cfg.scoring.max_new_tokens, processor.tokenizer.pad_token_id)
        generate_ms, peak = m.result.ms / B, max(peak, m.result.peak_mb)
        new = sequences[:, inputs["input_ids"].shape[1]:]
        responses = processor.tokenizer.batch_decode(new, skip_special_tokens=True)
        predictions = [parse_letter(text, s.options) for text, s in zip(responses, samples)]
    kept = thinker.last_stats.rows()
    flops = sample_flops(model, setting, cfg.flops.decode_tokens)
    rows = []
    for i, sample in enumerate(samples):  # one sample per iteration
        rows.append({
            "id": sample.id, "answer": sample.answer, "prediction": predictions[i],
            "correct": predictions[i] == sample.answer, "response": responses[i],
            "kept": {k: int(kept[i][k]) for k in KEPT},
            "flops": {k: float(v[i]) for k, v in flops.items()},
            "prefill_ms": prefill_ms, "generate_ms": generate_ms, "peak_memory_mb": peak, "batch_size": B,
            "error": None,
        })
    return rows
