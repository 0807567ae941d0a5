"""The attention teacher: how much the uncompressed language model attends to each token from the prompt's end.

For the unpruned sequence (every token kept) and each decoder layer ``l`` with input ``h_l``::

    a_l[b, j] = (1/H) sum_h softmax_j(q_{l,h}(h_l[b, t_b]) . k_{l,g(h)}(h_l[b, j]) / sqrt(d))    j <= t_b, real
    A[b, j]   = sum_l a_l[b, j]                                                                     (B, L)

where ``t_b`` is sample ``b``'s last real token (the end of the prompt: what the answer is predicted from) and
``q, k`` are the layer's rotated query/key projections (:func:`fusion.model.hooked_lm.last_token_row`). Summed over
layers and averaged over heads (the issue's probe summed both; the mean over heads ranks the same tokens). It
needs one full uncompressed prefill, so a method using it is an oracle of what attention "knows", not a saving.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fusion.errors import UnsupportedOptionError
from fusion.model.hooked_lm import last_token_row
from fusion.tokens import AVTokens

#: the ``AVTokens.extras`` key (and ``Compressor.requires`` name) of :func:`last_position_attention`
LM_ATTENTION = "lm_attention_last"


@torch.no_grad()
def last_position_attention(thinker, tokens: AVTokens) -> Tensor:
    """``(B, L)`` float32 ``A[b, j]`` (module doc) for every token of the unpruned batch; 0 on padding."""
    lm = thinker.model.language_model
    layers = list(lm.layers)
    if any(hasattr(layer.self_attn, "q_norm") for layer in layers):
        raise UnsupportedOptionError(
            "the attention teacher recomputes each layer's queries and keys without per-head q/k norms; this "
            "backbone has them (Qwen3-Omni): use it with a Qwen2.5-Omni thinker"
        )
    out = lm(inputs_embeds=tokens.embeds, attention_mask=tokens.attention_mask, position_ids=tokens.position_ids,
             output_hidden_states=True, return_dict=True)
    inputs = out.hidden_states[: len(layers)]  # input of layer l = hidden_states[l]
    cos, sin = lm.rotary_emb(inputs[0], tokens.position_ids)  # (B, L, d) each
    valid = tokens.attention_mask.bool()  # (B, L)
    total = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)
    for layer, hidden in zip(layers, inputs):  # a few dozen layers
        total += last_token_row(layer, hidden, cos, sin, valid)  # (B, L), 0 on masked keys
    return total
