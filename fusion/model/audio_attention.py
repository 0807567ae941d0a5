"""Attention each audio token receives in the audio encoder's last layer, computed in chunks.

For one segment of ``T`` encoder frames (50 per second, before the stride-2 pooling) with queries/keys
``Q, K`` of the last layer (``H`` heads, head dim ``d``)::

    received[j] = 1/(H * T) * sum_h sum_i softmax_j(Q_h K_h^T / sqrt(d))[i, j]

then adjacent frame pairs are averaged exactly like the encoder's ``AvgPool1d(2)`` so there is one score
per audio token (25 per second). Two segmentations are offered:

* ``global`` (what OmniZip's ``return_logits`` codes): one segment per audio clip, every frame attends to
  the whole clip even though the encoder itself attends within windows;
* ``window``: the encoder's own ``cu_seqlens`` windows (``2 * n_window`` mel frames), i.e. the attention
  the layer really computed.

No ``T x T`` matrix is held: queries are processed in chunks so at most ``~2**25`` probabilities exist at once.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MODES = ("global", "window")
_MAX_PROBS = 1 << 25


class LastLayerInputRecorder:
    """Context manager that records the input of the audio encoder's last layer (and its ``cu_seqlens``)."""

    def __init__(self, audio_tower: nn.Module) -> None:
        self.layer = audio_tower.layers[-1]
        self.hidden_states: Tensor | None = None
        self.cu_seqlens: Tensor | None = None
        self._handle = None

    def _hook(self, module, args, kwargs) -> None:
        self.hidden_states = args[0] if args else kwargs["hidden_states"]
        self.cu_seqlens = args[1] if len(args) > 1 else kwargs.get("cu_seqlens")  # Qwen3-Omni passes it positionally

    def __enter__(self) -> LastLayerInputRecorder:
        self._handle = self.layer.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def _segment_received(q: Tensor, k: Tensor, lengths: list[int]) -> Tensor:
    """Column means of softmax(q k^T) within each segment; q, k: ``(H, T, d)`` already scaled. Returns ``(T,)``."""
    H, T, _ = q.shape
    out = torch.zeros(T, dtype=torch.float32, device=q.device)
    start = 0
    for n in lengths:  # one iteration per clip or window
        qs, ks = q[:, start:start + n].float(), k[:, start:start + n].float()
        chunk = max(1, _MAX_PROBS // max(1, H * n))
        acc = torch.zeros(n, dtype=torch.float32, device=q.device)
        for i in range(0, n, chunk):  # query chunks
            probs = torch.softmax(qs[:, i:i + chunk] @ ks.transpose(1, 2), dim=-1)  # (H, c, n)
            acc += probs.sum(dim=(0, 1))
        out[start:start + n] = acc / (H * n)
        start += n
    return out


def _queries_keys(layer: nn.Module, hidden_states: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """``(H, T, d)`` scaled queries and keys of an audio encoder layer's self-attention on its recorded input."""
    if mode not in MODES:
        raise ValueError(f"audio attention mode must be one of {MODES}, got {mode!r}")
    attn = layer.self_attn
    with torch.no_grad():
        x = layer.self_attn_layer_norm(hidden_states)
        T = x.shape[0]
        q = (attn.q_proj(x) * attn.scaling).reshape(T, attn.num_heads, -1).transpose(0, 1)  # (H, T, d)
        k = attn.k_proj(x).reshape(T, attn.num_heads, -1).transpose(0, 1)  # (H, T, d)
    return q, k


def attention_received(
    layer: nn.Module, hidden_states: Tensor, cu_seqlens: Tensor, feature_lens: Tensor, mode: str = "global"
) -> Tensor:
    """``(N_audio_tokens,)`` attention received per audio token, in the order of the encoder's outputs.

    Args:
        layer: the audio encoder's last ``Qwen2_5OmniAudioEncoderLayer``.
        hidden_states: ``(T_total, d_model)`` its recorded input (all clips concatenated).
        cu_seqlens: ``(n_windows + 1,)`` window boundaries the encoder used.
        feature_lens: ``(n_clips,)`` mel frames per clip.
        mode: ``"global"`` or ``"window"`` (see module doc).
    """
    q, k = _queries_keys(layer, hidden_states, mode)  # (H, T, d) each
    with torch.no_grad():
        frames = (feature_lens.long() - 1) // 2 + 1  # frames per clip after conv stride 2
        if mode == "global":
            lengths = frames.tolist()
        else:
            lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        received = _segment_received(q, k, lengths)  # (T,)
        # average frame pairs (2m, 2m+1) of each clip, as the encoder's AvgPool1d(2) does
        n_tokens = (frames - 2) // 2 + 1
        offsets = torch.nn.functional.pad(frames.cumsum(0)[:-1], (1, 0))
        first = torch.repeat_interleave(offsets, n_tokens) + 2 * (
            torch.arange(int(n_tokens.sum()), device=frames.device)
            - torch.repeat_interleave(torch.nn.functional.pad(n_tokens.cumsum(0)[:-1], (1, 0)), n_tokens)
        )
        first = first.to(received.device)
        return (received[first] + received[first + 1]) / 2


def attention_received_tokens(
    layer: nn.Module, hidden_states: Tensor, cu_seqlens: Tensor, token_lens: Tensor, mode: str = "global"
) -> Tensor:
    """``(N_audio_tokens,)`` attention received per audio token for an encoder whose last layer already runs at
    the token rate (Qwen3-Omni's AuT: one row per output token, 13 per second; no pooling after it)::

        received[j] = 1/(H * T) * sum_h sum_i softmax_j(Q_h K_h^T / sqrt(d))[i, j]   within each segment

    Args:
        layer: the encoder's last ``Qwen3OmniMoeAudioEncoderLayer``.
        hidden_states: ``(N_audio_tokens, d_model)`` its recorded input (all clips concatenated).
        cu_seqlens: ``(n_windows + 1,)`` window boundaries the encoder used.
        token_lens: ``(n_clips,)`` output tokens per clip.
        mode: ``"global"`` (one segment per clip) or ``"window"`` (the encoder's windows).
    """
    q, k = _queries_keys(layer, hidden_states, mode)  # (H, T, d) each
    with torch.no_grad():
        lengths = token_lens.tolist() if mode == "global" else (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        return _segment_received(q, k, lengths)  # (T,)
