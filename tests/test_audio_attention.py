"""The chunked attention-received score equals the naive full-matrix computation, and reaches AVTokens."""

from __future__ import annotations

import pytest
import torch

from fusion.model.audio_attention import LastLayerInputRecorder, attention_received
from fusion.pruners.base import Compressor
from fusion.testing import random_inputs


def _naive(layer, hidden, lengths):
    attn = layer.self_attn
    x = layer.self_attn_layer_norm(hidden)
    T = x.shape[0]
    q = attn.q_proj(x).reshape(T, attn.num_heads, -1).transpose(0, 1)
    k = attn.k_proj(x).reshape(T, attn.num_heads, -1).transpose(0, 1)
    out, start = [], 0
    for n in lengths:
        p = torch.softmax(q[:, start:start + n] @ k[:, start:start + n].transpose(1, 2) * attn.scaling, -1)
        out.append(p.mean(dim=(0, 1)))  # mean over heads and queries
        start += n
    return torch.cat(out)


@pytest.mark.parametrize("mode", ["global", "window"])
def test_matches_naive_full_attention(tiny, mode, monkeypatch):
    model = tiny[0]
    inputs = random_inputs(model, seconds=5, batch_size=2, video=False, seed=3)
    lens = inputs["feature_attention_mask"].sum(-1)
    with torch.no_grad(), LastLayerInputRecorder(model.model.audio_tower) as rec:
        feats = model.model.get_audio_features(inputs["input_features"], inputs["feature_attention_mask"])
    n_tokens = feats.last_hidden_state.shape[0]
    import fusion.model.audio_attention as aa

    monkeypatch.setattr(aa, "_MAX_PROBS", 4 * 37)  # force many small query chunks
    with torch.no_grad():
        ours = attention_received(model.model.audio_tower.layers[-1], rec.hidden_states, rec.cu_seqlens, lens, mode)
        frames = ((lens - 1) // 2 + 1).tolist()
        lengths = frames if mode == "global" else (rec.cu_seqlens[1:] - rec.cu_seqlens[:-1]).tolist()
        per_frame = _naive(model.model.audio_tower.layers[-1], rec.hidden_states, lengths)
    expected, start = [], 0
    for f in frames:  # pool pairs inside each clip, like AvgPool1d(2)
        m = (f - 2) // 2 + 1
        expected.append(per_frame[start:start + 2 * m].view(m, 2).mean(1))
        start += f
    expected = torch.cat(expected)
    assert ours.shape == (n_tokens,)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
    if mode == "global":  # each clip's scores are a distribution over its frames, averaged in pairs
        assert abs(float(ours[: (frames[0] - 2) // 2 + 1].sum()) - 0.5) < 0.05


class _Probe(Compressor):
    requires = frozenset({"audio_attention_global"})

    def select(self, tokens):
        self.seen = tokens.extras["audio_attention_global"]
        return tokens.keep_all()


def test_scores_are_scattered_onto_audio_tokens(tiny):
    model = tiny[0]
    probe = _Probe()
    model.set_compressor(probe)
    try:
        with torch.no_grad():
            model(**random_inputs(model, seconds=4, seed=2))
        tokens = model.last_tokens
        assert bool(torch.isfinite(probe.seen[tokens.audio_mask]).all())
        assert bool(torch.isnan(probe.seen[~tokens.audio_mask]).all())
    finally:
        from fusion import METHODS

        model.set_compressor(METHODS.build("none"))
