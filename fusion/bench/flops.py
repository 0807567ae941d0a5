"""FLOPs: the field's analytic prefill formula for the language model, and counted FLOPs of a selection step.

LLM prefill (FastV / DyCoke App. C, the formula OmniZip's tables use), per decoder layer with ``n`` tokens, hidden
size ``d`` and FFN size ``m``::

    C(n) = 4 n d^2 + 2 n^2 d + 2 n d m          prefill FLOPs = sum over layers l of C(n_l)

(``n_l`` = tokens layer ``l`` sees: the kept count for pre-LLM methods; ``n`` for ``l < K`` and the kept count
after for FastV). It ignores GQA, the third SwiGLU matrix and causality, as the papers do; ratios between methods
are what it is for. For a mixture-of-experts decoder (Qwen3-Omni-30B-A3B) ``m`` is the ACTIVE width,
``num_experts_per_tok * moe_intermediate_size`` (:func:`ffn_width`; the router's ``n d E`` is not counted).
Encoder FLOPs are the same for every method and are not included.

Selection FLOPs are counted, not modelled: :func:`count_flops` runs a call under ``torch.utils.flop_counter``
(matrix products and attention kernels only; element-wise work, sorting and top-k count zero). The CPU SDPA kernel
(``_scaled_dot_product_flash_attention_for_cpu``) is added to torch's table with its GPU formula.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import torch

T = TypeVar("T")


def ffn_width(text_config) -> int:
    """``m`` of the formula: ``intermediate_size`` of a dense decoder; for a MoE one the active width
    ``k * moe_intermediate_size`` on its sparse layers, averaged with ``intermediate_size`` over the layers when some
    are dense (``mlp_only_layers``, ``decoder_sparse_step``; Qwen3-Omni has none)."""
    experts = int(getattr(text_config, "num_experts", 0) or 0)
    if experts == 0:
        return int(text_config.intermediate_size)
    layers = int(text_config.num_hidden_layers)
    dense = set(getattr(text_config, "mlp_only_layers", None) or [])
    step = int(getattr(text_config, "decoder_sparse_step", 1) or 1)
    sparse = sum(1 for i in range(layers) if i not in dense and (i + 1) % step == 0)
    active = int(text_config.num_experts_per_tok) * int(text_config.moe_intermediate_size)
    return round((sparse * active + (layers - sparse) * int(text_config.intermediate_size)) / layers)


def layer_flops(n: int, d: int, m: int) -> int:
    """``C(n) = 4 n d^2 + 2 n^2 d + 2 n d m`` (module doc)."""
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def prefill_flops(layer_tokens: Iterable[int], d: int, m: int) -> int:
    """``sum_l C(n_l)`` over the decoder layers, ``layer_tokens`` = ``n_l`` per layer (one sample)."""
    return sum(layer_flops(int(n), d, m) for n in layer_tokens)


def _cpu_sdpa_mapping() -> dict:
    from torch.utils.flop_counter import sdpa_flop_count

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return {}

    def formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    return {op: formula}


class FlopTally:
    """Sums the counted FLOPs of every call run through :meth:`count` (``total``)."""

    def __init__(self) -> None:
        self.total = 0

    def count(self, call: Callable[[], T]) -> T:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_mapping()) as counter:
            out = call()
        self.total += counter.get_total_flops()
        return out


def count_flops(call: Callable[[], T]) -> tuple[T, int]:
    """``(call(), FLOPs counted during it)``."""
    tally = FlopTally()
    out = tally.count(call)
    return out, tally.total
