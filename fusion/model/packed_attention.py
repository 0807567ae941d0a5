"""Windowed encoder attention in ONE SDPA call: Qwen2.5-Omni's vision and audio towers attend inside windows.

The towers describe their windows by ``cu_seqlens`` (window ``i`` is tokens ``[cu[i], cu[i+1])``). With
``sdpa`` or ``eager`` transformers splits q/k/v at those bounds and calls attention once per window: a toy clip
has 256 vision windows of 4 patches per layer, a real 60-s clip thousands of 64-patch windows, and the Python
loop (plus its backward) costs more than the arithmetic. Only implementations whose name contains "flash" get
``cu_seqlens`` handed to the attention function instead (``transformers.utils.generic.is_flash_attention_requested``),
hence the registered name :data:`PACKED_SDPA`; the kernel is plain ``torch.nn.functional.scaled_dot_product_attention``.

Per window ``i`` of length ``n_i`` (padded to ``m = max n_i``; padding keys masked, padding queries dropped):

    out[cu_i + t] = softmax(scaling * q[cu_i + t] . k[cu_i : cu_i + n_i]^T) v[cu_i : cu_i + n_i],  t < n_i

which is exactly what the per-window loop computes (tests compare values and gradients with it).
:func:`use_packed_encoder_attention` switches a thinker's vision and audio towers to it when they use ``sdpa``
(on private copies of their configs: the thinker's own config keeps ``sdpa``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AttentionInterface

from fusion.errors import InputMismatchError

PACKED_SDPA = "flash_varlen_sdpa"  # "flash" in the name: transformers then passes cu_seqlens (see module doc)


def packed_window_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask=None,
                            scaling: float | None = None, dropout: float = 0.0, cu_seq_lens_q: Tensor | None = None,
                            cu_seq_lens_k: Tensor | None = None, max_length_q: int | None = None,
                            **kwargs) -> tuple[Tensor, None]:
    """Attention inside each window of ``cu_seq_lens_q`` for ``query``/``key``/``value`` ``(1, H, S, D)``.

    Returns ``((1, S, H, D), None)``, the layout of transformers' attention functions.
    """
    if cu_seq_lens_q is None or (cu_seq_lens_k is not None and not torch.equal(cu_seq_lens_q, cu_seq_lens_k)):
        raise InputMismatchError(
            f"{PACKED_SDPA} is for the encoders' windowed self-attention (same cu_seqlens for queries and keys); "
            "use attn_implementation='sdpa' for this module"
        )
    cu = cu_seq_lens_q.to(query.device)
    total = query.shape[2]
    lengths = cu[1:] - cu[:-1]  # (W,) window lengths, possibly some 0
    nonempty = lengths > 0
    starts, lengths = cu[:-1][nonempty], lengths[nonempty]  # (n,), (n,)
    width = int(max_length_q) if max_length_q is not None else int(lengths.max())
    offsets = torch.arange(width, device=query.device)  # (m,)
    valid = offsets < lengths[:, None]  # (n, m) real positions of each padded window
    index = (starts[:, None] + offsets).clamp(max=total - 1)  # (n, m) token index (clamped on padding)

    def windows(x: Tensor) -> Tensor:  # (1, H, S, D) -> (n, H, m, D)
        return x[0][:, index].transpose(0, 1)

    mask = None if bool(valid.all()) else valid[:, None, None, :]  # (n, 1, 1, m) keys to attend
    out = F.scaled_dot_product_attention(windows(query), windows(key), windows(value), attn_mask=mask,
                                         dropout_p=dropout, scale=scaling)  # (n, H, m, D)
    return out.transpose(1, 2)[valid].unsqueeze(0), None  # (1, S, H, D): windows are in token order


AttentionInterface.register(PACKED_SDPA, packed_window_attention)


def use_packed_encoder_attention(thinker) -> None:
    """Run the vision and audio towers of ``thinker`` on :data:`PACKED_SDPA` where they use ``sdpa`` (``eager``
    stays: it is what you ask for to read attention weights; flash stays flash).

    Each tower and its submodules get a private copy of their config: ``thinker.config`` keeps saying ``sdpa``, so
    a model built from it (or saved with it) never asks for a "flash" implementation, which transformers would look
    for as a kernel. Switching later with ``thinker.set_attn_implementation`` does not reach the private copies;
    call this again (or set ``tower.config._attn_implementation``) after it.
    """
    towers = [getattr(thinker.model, name, None) for name in ("visual", "audio_tower")]
    for tower in towers:
        if tower is None or tower.config._attn_implementation != "sdpa":
            continue
        shared = tower.config
        private = copy.copy(shared)
        private._attn_implementation = PACKED_SDPA
        for module in tower.modules():  # the tower, its blocks and their attention layers
            if getattr(module, "config", None) is shared:
                module.config = private
