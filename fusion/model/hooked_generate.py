"""Greedy decoding for methods that act inside the language model (FastV, DyCoke stage 2).

HF ``generate`` keeps one attention mask and one cache length for all layers, which cannot express a prefix whose
length differs per layer (FastV) or per-step restrictions of the cache (DyCoke stage 2), so hooked methods decode
with this small loop instead. It supports greedy decoding only:

* ``max_new_tokens`` (default: the generation config's ``max_new_tokens``, else its ``max_length``),
  ``min_new_tokens`` (EOS is suppressed before it, as HF's ``MinNewTokensLengthLogitsProcessor``),
  ``eos_token_id`` (int or list; default from the generation config), ``pad_token_id`` (written after a sample
  finished), ``do_sample=False``, ``num_beams=1``, ``num_return_sequences=1``, ``use_cache=True``,
  ``return_dict_in_generate=False``; ``temperature`` / ``top_p`` / ``top_k`` are accepted and ignored when not
  sampling (as HF does).
* anything else raises :class:`~fusion.errors.UnsupportedOptionError`.

Like the stock thinker it returns the ORIGINAL ``input_ids`` followed by the new tokens; decoding stops when every
sample produced EOS (later tokens of a finished sample are ``pad_token_id``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fusion.errors import UnsupportedOptionError
from fusion.model.hooked_lm import decode_step, record_stats, run_prefill
from fusion.model.keep import PrunedBatch
from fusion.model.llm_hooks import LLMHook

_FIXED = {"do_sample": (False,), "num_beams": (1,), "num_return_sequences": (1,), "use_cache": (True,),
          "return_dict_in_generate": (False,), "output_scores": (False,), "output_logits": (False,),
          "output_attentions": (False,), "output_hidden_states": (False,)}
_IGNORED_WHEN_GREEDY = ("temperature", "top_p", "top_k")
_VALUES = ("max_new_tokens", "min_new_tokens", "eos_token_id", "pad_token_id")


def _options(thinker, hook: LLMHook, kwargs: dict) -> tuple[int, int, list[int], int]:
    """Validate generate kwargs; return ``(max_new_tokens, min_new_tokens, eos_ids, pad_id)``."""
    unknown = sorted(set(kwargs) - set(_FIXED) - set(_IGNORED_WHEN_GREEDY) - set(_VALUES))
    if unknown:
        raise UnsupportedOptionError(
            f"{hook.name} decodes with av-fusion's greedy loop, which does not support {unknown}; supported: "
            f"{sorted(_VALUES)}, {sorted(_FIXED)} at their greedy values, and {list(_IGNORED_WHEN_GREEDY)} (ignored)"
        )
    for name, allowed in _FIXED.items():
        if kwargs.get(name) is not None and kwargs[name] not in allowed:
            raise UnsupportedOptionError(
                f"{hook.name}: {name}={kwargs[name]!r} is not supported inside the language-model hook (greedy "
                f"decoding only: {name} must be {allowed[0]!r}); use a pre-LLM method to sample or beam-search"
            )
    config = thinker.generation_config
    max_new = kwargs.get("max_new_tokens") or config.max_new_tokens or config.max_length
    min_new = kwargs.get("min_new_tokens") or 0
    eos = kwargs.get("eos_token_id", config.eos_token_id)
    eos_ids = [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    pad = kwargs.get("pad_token_id", config.pad_token_id)
    pad = pad if pad is not None else (thinker.config.get_text_config().pad_token_id or 0)
    if int(max_new) < 1:
        raise UnsupportedOptionError(f"max_new_tokens must be >= 1, got {max_new}")
    return int(max_new), int(min_new), eos_ids, int(pad)


@torch.no_grad()
def hooked_generate(thinker, pruned: PrunedBatch, hook: LLMHook, input_ids: Tensor, **kwargs) -> Tensor:
    """Greedy decoding from a left-padded pruned prompt through the hook; ``(B, L + T)`` original ids + new tokens.

    Step 0 takes the argmax of the prefill's last logits; each later step runs :func:`decode_step` on the previous
    token. ``min_new_tokens`` masks EOS logits to ``-inf`` while fewer tokens were produced.
    """
    max_new, min_new, eos_ids, pad = _options(thinker, hook, kwargs)
    tokens = thinker.last_tokens
    state = run_prefill(thinker, tokens, pruned, hook, padding_side="left", use_cache=True)
    logits = thinker.lm_head(state.hidden[:, -1])  # (B, V): left padding puts every prompt's end last
    B = logits.shape[0]
    eos = torch.tensor(eos_ids, dtype=torch.long, device=logits.device)
    unfinished = torch.ones(B, dtype=torch.bool, device=logits.device)
    new = []
    for step in range(max_new):  # one iteration per generated token
        if step > 0:
            logits = decode_step(thinker, tokens, state, hook, new[-1])
        if step < min_new and eos.numel():
            logits = logits.index_fill(1, eos, float("-inf"))
        token = logits.argmax(-1)  # (B,)
        token = torch.where(unfinished, token, torch.full_like(token, pad))
        new.append(token)
        if eos.numel():
            unfinished &= ~torch.isin(token, eos)
            if not bool(unfinished.any()):
                break
    record_stats(thinker, tokens, state, hook)
    return torch.cat([input_ids, torch.stack(new, dim=1).to(input_ids.device)], dim=1)
