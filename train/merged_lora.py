"""LoRA folded into its base weight for the split search's no-gradient passes: one matmul per projection instead of
three.

A PEFT LoRA ``Linear`` computes ``y = W x + b + s B (A x)``: three matmuls whose operands, at the toy's sizes (a few
hundred tokens, width 128, rank 8), cost about the same each on a CPU. Inside :func:`merged_lora` each plain LoRA
layer computes instead::

    y = (W + s B A) x + b                 W' = W + s B A built once per pass: (out, r) @ (r, in)

the same function up to float rounding. The base weight is never written (no merge/unmerge drift over thousands
of steps); each layer gets a temporary ``forward`` that is removed on exit. Layers it cannot fold exactly are left
as they are: LoRA variants (DoRA ...), adapters already merged or disabled, and dropout on the LoRA input while
training (folding would drop the dropout).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F


def _foldable(layer) -> bool:
    if layer.disable_adapters or layer.merged or getattr(layer, "fan_in_fan_out", False):
        return False
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if not active or any(a in getattr(layer, "lora_variant", {}) for a in active):
        return False
    return not (layer.training and any(not isinstance(layer.lora_dropout[a], torch.nn.Identity) for a in active))


@contextmanager
def merged_lora(module: torch.nn.Module, grad: bool = False) -> Iterator[int]:
    """Passes through ``module`` with every foldable LoRA ``Linear`` as one matmul; yields how many layers were
    folded. ``grad=False``: no-gradient passes. ``grad=True``: ``W'`` is built with autograd, so a loss of the
    passes made inside reaches A and B through ``dW' = s dB A + s B dA`` (the backward may run after the exit)."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    enabled = grad and torch.is_grad_enabled()
    folded = []
    with torch.set_grad_enabled(enabled):
        for layer in module.modules():
            if not isinstance(layer, LoraLinear) or not _foldable(layer):
                continue
            base = layer.base_layer
            weight = base.weight + sum(layer.get_delta_weight(a).to(base.weight.dtype)
                                       for a in layer.active_adapters if a in layer.lora_A)  # (out, in)
            layer.forward = lambda x, *args, _w=weight, _b=base.bias, **kwargs: F.linear(x.to(_w.dtype), _w, _b)
            folded.append(layer)
    try:
        with torch.set_grad_enabled(enabled):
            yield len(folded)
    finally:
        for layer in folded:
            del layer.forward
