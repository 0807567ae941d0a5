"""OmniZip end to end through the compressed thinker (tiny random model): batches, merged embeddings reach the LLM,
single-modality inputs, generation."""

from __future__ import annotations

import pytest
import torch

from fusion.errors import MissingModalityError
from fusion.testing import random_inputs


def _run(model, inputs):
    """Forward with the LM's inputs_embeds captured."""
    seen = {}

    def grab(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()

    handle = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            out = model(**inputs)
    finally:
        handle.remove()
    return out, seen["embeds"]


def test_batch_sorted_text_kept_audio_counts(with_method):
    model = with_method("omnizip", rho_audio=0.3, rho_video=0.6)
    inputs = random_inputs(model, seconds=8, batch_size=2, seed=5, padding_side="right")
    out, _ = _run(model, inputs)
    tokens = model.last_tokens
    for b, row in enumerate(model.last_stats.rows()):
        src = out.source_index[b][out.attention_mask[b].bool()]
        assert bool((src[1:] > src[:-1]).all())
        text = (tokens.attention_mask[b].bool() & ~tokens.av_mask[b]).nonzero().flatten()
        assert bool(torch.isin(text, src).all())
        n_a = row["audio_before"]
        assert row["audio_after"] == round(0.7 * n_a) + round(0.05 * n_a)  # dominant + anchors
        assert 0 < row["video_after"] < row["video_before"]
    assert model.compressor.last_rhos == [(0.3, 0.6), (0.3, 0.6)]


def test_merged_anchor_embeddings_reach_the_language_model(with_method):
    model = with_method("omnizip", rho_audio=0.3, rho_video=0.6, g=3)
    inputs = random_inputs(model, seconds=8, batch_size=2, seed=6)
    out, lm_in = _run(model, inputs)
    tokens = model.last_tokens
    for b in range(2):
        real = out.attention_mask[b].bool()
        src = out.source_index[b][real]
        original = tokens.embeds[b, src]
        changed = (lm_in[b][real] != original).any(-1)
        # exactly some audio tokens (the anchors that absorbed pool tokens) differ from their encoder output
        assert 0 < int(changed.sum()) <= round(0.05 * int(tokens.n_audio[b]))
        assert bool(tokens.audio_mask[b, src[changed]].all())


def test_units_g_changes_only_the_anchor_embeddings(with_method):
    """Units makes anchors even with G = 0, so G = 3 vs G = 0 keeps the same tokens and differs only in the merged
    anchors -- and the logits see it."""
    inputs = random_inputs(with_method("none"), seconds=8, batch_size=2, seed=7)
    runs = {}
    for g in (0, 3):
        model = with_method("omnizip", rho_audio=0.3, rho_video=0.6, g=g, variant="units")
        runs[g] = _run(model, inputs)
    (out0, lm0), (out3, lm3) = runs[0], runs[3]
    assert torch.equal(out0.source_index, out3.source_index)
    differs = (lm0 != lm3).any(-1)
    assert bool(differs.any())
    tokens = model.last_tokens
    for b in range(2):
        src = out3.source_index[b][differs[b]]
        assert bool(tokens.audio_mask[b, src].all())
    assert not torch.allclose(out0.logits, out3.logits)


def test_single_modality_inputs(with_method):
    model = with_method("omnizip", rho_audio=0.3, rho_video=0.6)
    with torch.no_grad():
        model(**random_inputs(model, seconds=6, batch_size=2, seed=8, video=False))
    for row in model.last_stats.rows():  # audio only: audio selection + anchors
        assert row["audio_after"] == round(0.7 * row["audio_before"]) + round(0.05 * row["audio_before"])
    inputs = random_inputs(model, seconds=6, batch_size=2, seed=8, audio=False)
    with torch.no_grad():
        model(**inputs)
    for row, (t, h, w) in zip(model.last_stats.rows(), inputs["video_grid_thw"].tolist()):
        assert row["video_after"] == t * int((h // 2) * (w // 2) * (1 - 0.6))  # every grid at rho_v
    model = with_method("omnizip", rho_audio=0.3, rho_video=0.6, on_missing="error")
    with pytest.raises(MissingModalityError):
        with torch.no_grad():
            model(**inputs)


def test_full_retention_is_the_identity(with_method):
    inputs = random_inputs(with_method("none"), seconds=4, batch_size=2, seed=9)
    with torch.no_grad():
        ref = with_method("none")(**inputs).logits
        got = with_method("omnizip", 1.0)(**inputs).logits
    assert torch.equal(ref, got)


def test_generate_from_the_pruned_prefix(with_method):
    model = with_method("omnizip", 0.45, audio_scoring="window")
    inputs = random_inputs(model, seconds=6, batch_size=2, seed=10)
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    rows = model.last_stats.rows()
    assert all(r["total_after"] < r["total_before"] for r in rows)
