"""``AVFusionOmni``: any av-fusion method on a Qwen2.5-Omni or Qwen3-Omni thinker as an lmms-eval model (imports
lmms-eval).

``--model_args`` (``key=value`` pairs, typed by lmms-eval: true/false, numbers, else strings; a ``{...}`` JSON value
is parsed, e.g. ``audio={"method":"audio_attn","retention":0.4}`` for a pair):

* ``pretrained``: hub id / local checkpoint (its own processor files are loaded: OmniProcessor.from_pretrained, not
  a fixed 7B processor), or ``tiny-random`` / ``toy`` / ``tiny-random-qwen3``. The family follows the checkpoint
  (``fusion.load_model``): ``Qwen/Qwen3-Omni-30B-A3B-Instruct``, a local Qwen3-Omni directory or ``tiny-random-qwen3``
  load the Qwen3 thinker with a Qwen3-layout processor (:attr:`AVFusionOmni.family` says which); FastV and DyCoke's
  decode stage raise ``UnsupportedOptionError`` there when the model is built;
* ``method``, ``retention`` (fraction KEPT), ``adapter`` (method=fusion), and every other key is a parameter of the
  method (``rho_audio``, ``rho_video``, ``k``, ``video``, ``audio`` ...);
* ``dtype`` (auto: bfloat16 on cuda, float32 on cpu), ``attn_implementation`` (sdpa), ``device`` (auto; under
  a launcher ``auto`` / ``cuda`` mean ``cuda:LOCAL_RANK``),
  ``max_num_frames`` (768), ``system_prompt`` (Qwen's), ``max_new_tokens`` (default when the task gives none),
  ``on_error`` (``record`` or ``raise``), ``failures_path`` (a JSONL file the failures are appended to).

``generate_until`` returns :class:`GenerationResult` with ``TokenCounts(input_tokens = tokens the LLM saw after
compression, output_tokens = new tokens)``; :attr:`AVFusionOmni.stats` keeps each request's kept counts. A request
that raises is never silently an empty answer: with ``on_error=raise`` the run stops; with ``record`` (default) the
error is logged, kept in :attr:`AVFusionOmni.failures` (and ``failures_path``), and the response is
``"[av-fusion failed] ErrorType: message"``. lmms-eval's task scorer still turns that text into some answer (WorldSense
parses it to "A"), so report lmms-eval's metric together with :func:`rescore`, which recomputes a task's accuracy
over the requests that did not fail and counts the failures.

Data parallel (lmms-eval's own mode: ``accelerate launch --multi_gpu --num_processes N -m lmms_eval --model av_fusion
...``, or ``torchrun --nproc_per_node N -m lmms_eval ...``): the model reads ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` (:meth:`eval.sharding.Ranks.from_env`), reports them as lmms-eval's ``rank`` / ``world_size`` (global
rank, so lmms-eval shards the documents over every process of every node) and loads itself on
``cuda:LOCAL_RANK`` (cpu without CUDA). lmms-eval itself splits the requests, builds its ``Accelerator`` for the
collectives and gathers the results on rank 0; the model is never wrapped in DDP (inference only).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from loguru import logger

from fusion.data.processor import QWEN_SYSTEM_PROMPT
from fusion.errors import ConfigError
from fusion.progress import progress

FAILED_PREFIX = "[av-fusion failed]"


def _value(v):
    """lmms-eval leaves JSON values as strings; parse ``{...}`` / ``[...]``."""
    if isinstance(v, str) and v[:1] in "{[":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v


class AVFusionOmni(lmms):
    """An av-fusion compressed Qwen2.5-/Qwen3-Omni thinker behind lmms-eval's simple model API (module doc)."""

    is_simple = True

    def __init__(self, pretrained: str = "Qwen/Qwen2.5-Omni-7B", method: str = "none", retention: float | None = None,
                 adapter: str | None = None, dtype: str = "auto", attn_implementation: str = "sdpa",
                 device: str = "auto", batch_size: int | str = 1, max_num_frames: int = 768,
                 system_prompt: str = QWEN_SYSTEM_PROMPT, max_new_tokens: int = 128, on_error: str = "record",
                 failures_path: str | None = None, seed: int = 0, **method_params) -> None:
        super().__init__()
        from eval.models import resolve_device, resolve_dtype
        from eval.sharding import Ranks
        from fusion import load_model
        from fusion.data.media import MediaSettings

        if on_error not in ("record", "raise"):
            raise ConfigError(f"on_error={on_error!r}: use 'record' or 'raise'")
        if int(batch_size) != 1:
            logger.warning(f"av_fusion runs one request at a time; batch_size={batch_size} is ignored")
        ranks = Ranks.from_env()
        self._rank, self._world_size = ranks.rank, ranks.world_size
        self._device = resolve_device(str(device), ranks.local_rank if ranks.distributed else None)
        if self._device.type == "cuda" and ranks.distributed:
            torch.cuda.set_device(self._device)
        self._dtype = resolve_dtype(dtype, self._device)
        params = {k: _value(v) for k, v in method_params.items()}
        self.model, self.processor = load_model(str(pretrained), method=method, retention=retention, adapter=adapter,
                                                dtype=self._dtype, attn_implementation=attn_implementation,
                                                device=self._device, seed=seed, **params)
        if self.processor is None:
            raise ConfigError(f"pretrained={pretrained!r} has no processor (random weights at a real size); pass a "
                              "checkpoint, 'toy', 'tiny-random' or 'tiny-random-qwen3'")
        self.family = self.processor.family  # "qwen2_5" or "qwen3": the layout the requests are built in
        self.media = MediaSettings.from_processor(self.processor, max_frames=int(max_num_frames))
        self.system_prompt, self.max_new_tokens = system_prompt, int(max_new_tokens)
        self.on_error, self.failures_path = on_error, failures_path
        self.failures: list[dict] = []
        self.stats: list[dict] = []
        self.batch_size_per_gpu = 1

    # ------------------------------------------------------------------ lmms-eval properties
    @property
    def batch_size(self) -> int:
        return 1

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    # ------------------------------------------------------------------ inputs
    def _inputs(self, context: str, visuals: list, continuation: str = "") -> dict:
        """Processor batch for one request: system prompt, the video(s) (audio track interleaved), the task's text."""
        from eval.data import to_device
        from fusion.data.media import load_media

        videos = [v for v in visuals if isinstance(v, (str, Path))]
        if len(videos) != len(visuals) or len(videos) > 1:
            raise ConfigError(f"av_fusion takes one video file per request, got {[type(v).__name__ for v in visuals]}")
        content = [{"type": "video", "video": str(videos[0])}] if videos else []
        content.append({"type": "text", "text": context})
        messages = [{"role": "system", "content": [{"type": "text", "text": self.system_prompt}]},
                    {"role": "user", "content": content}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True) + continuation
        if not videos:
            batch = self.processor(text)
            return to_device(dict(batch), self._device, self._dtype)
        media = load_media(videos[0], self.media)
        batch = self.processor(text, videos=[media.frames], audio=[media.audio], use_audio_in_video=True)
        inputs = to_device(dict(batch), self._device, self._dtype)
        inputs["use_audio_in_video"] = media.has_audio
        return inputs

    def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        return [visuals] if isinstance(visuals, (str, Path)) else list(visuals or [])

    def _fail(self, request: Instance, error: Exception) -> str:
        record = {"task": request.task_name, "doc_id": request.doc_id, "rank": self.rank,
                  "error": f"{type(error).__name__}: {error}"}
        if self.on_error == "raise":
            raise error
        self.failures.append(record)
        logger.error(f"av_fusion: request {record['task']}/{record['doc_id']} failed ({record['error']}); counted as "
                     "a failure (eval.lmms_model.rescore excludes it)")
        if self.failures_path:
            with open(self.failures_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        return f"{FAILED_PREFIX} {record['error']}"

    # ------------------------------------------------------------------ lmms-eval API
    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Greedy generation per request; ``until`` strings cut the text; token counts after compression."""
        out = []
        bar = progress(requests, desc="av_fusion", unit="request", disable=self.rank != 0)
        for request in bar:  # one request per iteration
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            try:
                inputs = self._inputs(context, self._visuals(doc_to_visual, doc_id, task, split))
                n_new = int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens)
                sequences = self.model.generate(**inputs, max_new_tokens=n_new, do_sample=False,
                                                pad_token_id=self.tokenizer.pad_token_id)
                new = sequences[0, inputs["input_ids"].shape[1]:]
                text = self.tokenizer.decode(new, skip_special_tokens=True)
                for stop in until:
                    text = text.split(stop)[0] if stop else text
                stats = self.model.last_stats.rows()[0]
                self.stats.append({"task": task, "doc_id": doc_id, **stats})
                counts = TokenCounts(input_tokens=int(stats["sequence_after"]), output_tokens=int(new.numel()))
                out.append(GenerationResult(text=text, token_counts=counts))
            except Exception as e:  # noqa: BLE001 - counted and reported (module doc)
                out.append(GenerationResult(text=self._fail(request, e), token_counts=None))
        if self.failures:
            logger.warning(f"av_fusion: {len(self.failures)} request(s) failed so far; see .failures / rescore()")
        return out

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """``sum_t log p(continuation_t | prompt, continuation_<t)`` and whether every token is the argmax; the
        continuation is text, never pruned, so its logits are the last ``c + 1`` positions of the (compressed) call."""
        out = []
        for request in requests:  # one request per iteration
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            try:
                inputs = self._inputs(context, self._visuals(doc_to_visual, doc_id, task, split), continuation)
                target = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
                c = len(target)
                logits = self.model(**inputs, logits_to_keep=c + 1).logits[0, :-1].float()  # (c, V)
                logp = torch.log_softmax(logits, -1)
                ids = torch.tensor(target, device=logp.device)
                out.append((float(logp[torch.arange(c), ids].sum()), bool((logits.argmax(-1) == ids).all())))
            except Exception as e:  # noqa: BLE001
                self._fail(request, e)
                out.append((float("-inf"), False))
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("av_fusion: multi-round generation is not supported; use single-turn tasks")


def rescore(samples: list[dict], score_key: str) -> dict:
    """A task's accuracy over the requests that did not fail.

    Args:
        samples: ``results["samples"][task]`` of ``simple_evaluate(..., log_samples=True)``.
        score_key: the task's per-sample metric key (e.g. ``worldsense_score``, whose value holds ``score``).

    Returns:
        ``{"n": all, "failed": f, "scored": n - f, "accuracy": 100 * mean score over the scored ones}``.
    """
    failed = scored = 0
    total = 0.0
    for sample in samples:  # one logged sample per iteration
        responses = sample.get("filtered_resps") or sample.get("resps") or []
        flat = [r for item in responses for r in (item if isinstance(item, list) else [item])]
        if any(isinstance(r, str) and r.startswith(FAILED_PREFIX) for r in flat):
            failed += 1
            continue
        value = sample[score_key]
        total += float(value["score"] if isinstance(value, dict) else value)
        scored += 1
    return {"n": failed + scored, "failed": failed, "scored": scored,
            "accuracy": 100.0 * total / scored if scored else None}
