"""CompressedQwen3Thinker: the same hook on Qwen3-Omni (tiny random MoE thinker, CPU).

Checked against transformers' stock Qwen3OmniMoeThinkerForConditionalGeneration with the same weights: identity at
retention 1.0, full ids gathered, DeepStack rows following the kept video tokens, batch = alone, generate = greedy
loop, the internals the hook relies on, and every pre-LLM method of ``fusion.METHODS``.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import Qwen3OmniMoeThinkerForConditionalGeneration
from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as hf

from fusion import METHODS
from fusion.errors import UnsupportedOptionError
from fusion.model.compression import CompressionMixin
from fusion.model.configs import real_config
from fusion.model.loading import load_model, load_pretrained_thinker
from fusion.model.qwen3_thinker import CompressedQwen3Thinker
from fusion.testing import sample_alone
from fusion.testing_qwen3 import random_qwen3_inputs
from fusion.tokens import Selection


@pytest.fixture(scope="module")
def tiny3():
    model, processor = load_model("tiny-random-qwen3")
    return model


@pytest.fixture(scope="module")
def stock3(tiny3):
    stock = Qwen3OmniMoeThinkerForConditionalGeneration(tiny3.config).eval()
    stock.load_state_dict(tiny3.state_dict())
    return stock


def _inputs(model, **kw):
    return random_qwen3_inputs(model, **kw)


def _install(model, name, retention=1.0, **params):
    method = METHODS.build(name, retention=retention, **params)
    if hasattr(method, "bind"):
        method = method.bind(model.config)
    model.set_compressor(method)
    return method


@pytest.fixture(autouse=True)
def reset(tiny3):
    yield
    _install(tiny3, "none")


# ---------------------------------------------------------------------------------------------- loading
def test_tiny_qwen3_is_the_moe_thinker_with_deepstack(tiny3):
    config = tiny3.config
    assert isinstance(tiny3, CompressedQwen3Thinker) and isinstance(tiny3, CompressionMixin)
    assert config.text_config.num_experts == 4 and config.text_config.num_experts_per_tok == 2
    assert list(config.vision_config.deepstack_visual_indexes) == [0, 1]
    assert config.position_id_per_seconds == 13


def test_published_30b_a3b_config_is_shipped():
    config = real_config("qwen3_omni_30b_a3b")
    text = config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_experts, text.num_experts_per_tok) == (2048, 48, 128, 8)
    assert text.rope_parameters["mrope_section"] == [24, 20, 20] and config.position_id_per_seconds == 13
    assert list(config.vision_config.deepstack_visual_indexes) == [8, 16, 24]
    assert (config.audio_token_id, config.vision_start_token_id) == (151675, 151652)


def test_a_saved_qwen3_thinker_loads_back_as_ours(tiny3, tmp_path):
    tiny3.save_pretrained(tmp_path)
    loaded = load_pretrained_thinker(str(tmp_path))
    assert isinstance(loaded, CompressedQwen3Thinker)
    for (name, a), (_, b) in zip(tiny3.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------------------------- identity
@pytest.mark.parametrize("video,audio", [(True, True), (True, False), (False, True)])
def test_retention_one_equals_stock_logits(tiny3, stock3, video, audio):
    x = _inputs(tiny3, batch_size=2, video=video, audio=audio)
    with torch.no_grad():
        ours, ref = tiny3(**x).logits, stock3(**x).logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_time_groups_are_two_seconds_of_ids(tiny3):
    x = _inputs(tiny3, seconds=6)
    with torch.no_grad():
        tiny3(**x)
    tokens = tiny3.last_tokens
    av = tokens.av_mask
    assert torch.equal(tokens.time_group[av], torch.div(tokens.time_id[av], 26, rounding_mode="floor"))
    assert int(tokens.time_group.max()) == 2  # 6 s = three 2-s groups
    audio_ids = tokens.time_id[tokens.audio_mask]
    assert torch.equal(audio_ids, torch.arange(audio_ids.numel()))  # 13 audio tokens per second, one id each


# ---------------------------------------------------------------------------------------------- pruned path
def _every_other(tokens):
    """Drop every other AV token (a fixed, method-free selection)."""
    index = torch.arange(tokens.seq_len).expand_as(tokens.input_ids)
    keep = tokens.attention_mask.bool() & ~(tokens.av_mask & (index % 2 == 1))
    return Selection(keep=keep)


def test_kept_position_ids_are_the_full_ids_gathered(tiny3):
    x = _inputs(tiny3, batch_size=2)
    tiny3.set_compressor(_every_other)
    pruned = tiny3.compress(x["input_ids"], padding_side="left",
                            **{k: v for k, v in x.items() if k != "input_ids"})
    full = tiny3.last_tokens.position_ids  # (3, B, L)
    valid = pruned.source_index >= 0
    gathered = full.gather(2, pruned.source_index.clamp(min=0)[None].expand(3, -1, -1))
    assert torch.equal(pruned.position_ids[:, valid], gathered[:, valid])
    kept_max = gathered.masked_fill(~valid[None], -1e9).amax(dim=(0, 2))
    assert torch.equal(pruned.rope_deltas[:, 0], kept_max + 1 - valid.sum(1))


def test_deepstack_follows_the_kept_video_tokens(tiny3, stock3):
    """Reference: drop the same tokens by hand and run the stock language model with the gathered DeepStack rows."""
    x = _inputs(tiny3, batch_size=1, padding_side="right")
    tiny3.set_compressor(_every_other)
    with torch.no_grad():
        ours = tiny3(**x).logits
        tokens = tiny3.last_tokens
        keep = _every_other(tokens).keep[0]  # (L,)
        video = x["input_ids"][0] == tiny3.config.video_token_id
        out = stock3.model.get_video_features(x["pixel_values_videos"], x["video_grid_thw"])
        deepstack = [torch.cat(f)[keep[video]] for f in out.deepstack_features]  # kept video rows only
        hidden = stock3.model.language_model(
            inputs_embeds=tokens.embeds[:, keep], position_ids=tokens.position_ids[:, :, keep],
            attention_mask=torch.ones(1, int(keep.sum()), dtype=torch.long),
            visual_pos_masks=video[keep][None], deepstack_visual_embeds=deepstack,
        ).last_hidden_state
        ref = stock3.lm_head(hidden)
        # DeepStack matters here: without it the logits differ
        plain = stock3.lm_head(stock3.model.language_model(
            inputs_embeds=tokens.embeds[:, keep], position_ids=tokens.position_ids[:, :, keep]).last_hidden_state)
    assert int(video[keep].sum()) < int(video.sum())
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert (plain - ref).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["none", "uniform"])
def test_batch_of_two_equals_each_alone(tiny3, name):
    x = _inputs(tiny3, batch_size=2)
    _install(tiny3, name, retention=1.0 if name == "none" else 0.5)
    with torch.no_grad():
        out = tiny3(**x)
        for b in range(2):
            alone = tiny3(**sample_alone(x, b))
            n = int(out.attention_mask[b].sum())
            torch.testing.assert_close(out.logits[b, -n:], alone.logits[0], atol=1e-5, rtol=0)


def test_generate_equals_a_manual_greedy_loop(tiny3):
    x = _inputs(tiny3, batch_size=1)
    _install(tiny3, "uniform", retention=0.5)
    with torch.no_grad():
        out = tiny3.generate(**x, max_new_tokens=4, do_sample=False)
        new = out[:, x["input_ids"].shape[1]:]
        pruned = tiny3.compress(x["input_ids"], padding_side="left",
                                **{k: v for k, v in x.items() if k != "input_ids"})
        embeds, positions, mask = pruned.inputs_embeds, pruned.position_ids, pruned.attention_mask
        lm = tiny3.model.language_model
        visual, deepstack = pruned.lm_inputs["visual_pos_masks"], pruned.lm_inputs["deepstack_visual_embeds"]
        steps = []
        for _ in range(4):  # no cache: every step re-runs the whole pruned prefix plus the new tokens
            pad = torch.zeros(1, embeds.shape[1] - visual.shape[1], dtype=torch.bool)
            hidden = lm(inputs_embeds=embeds, position_ids=positions, attention_mask=mask,
                        visual_pos_masks=torch.cat([visual, pad], 1), deepstack_visual_embeds=deepstack)
            token = tiny3.lm_head(hidden.last_hidden_state[:, -1]).argmax(-1)  # (1,)
            steps.append(token)
            embeds = torch.cat([embeds, lm.embed_tokens(token)[:, None]], 1)
            positions = torch.cat([positions, positions[:, :, -1:] + 1], 2)
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], 1)
    assert torch.equal(new, torch.stack(steps, 1))
    assert float(pruned.position_ids[0, 0, -1]) == float(tiny3.last_tokens.position_ids[0, 0].max())


# ---------------------------------------------------------------------------------------------- surgery target
def test_qwen3_internals_the_hook_relies_on():
    stock = list(inspect.signature(hf.Qwen3OmniMoeThinkerForConditionalGeneration.forward).parameters)
    ours = list(inspect.signature(CompressedQwen3Thinker.forward).parameters)
    # everything stock forward declares is declared by ours, except output_router_logits (reaches it via kwargs)
    assert set(stock) - set(ours) == {"output_router_logits"}
    model = hf.Qwen3OmniMoeThinkerModel
    assert list(inspect.signature(model.get_rope_index).parameters) == [
        "self", "input_ids", "image_grid_thw", "video_grid_thw", "attention_mask", "use_audio_in_video",
        "audio_seqlens", "second_per_grids"]
    assert list(inspect.signature(model.get_video_features).parameters)[:3] == [
        "self", "pixel_values_videos", "video_grid_thw"]
    assert list(inspect.signature(model.get_audio_features).parameters)[:4] == [
        "self", "input_features", "feature_attention_mask", "audio_feature_lengths"]
    lm = inspect.signature(hf.Qwen3OmniMoeThinkerTextModel.forward).parameters
    assert {"visual_pos_masks", "deepstack_visual_embeds", "inputs_embeds", "position_ids"} <= set(lm)
    assert hasattr(hf.Qwen3OmniMoeThinkerTextModel, "_deepstack_process")
    assert "deepstack_features" in hf.BaseModelOutputWithDeepstackFeatures.__dataclass_fields__
    assert "position_id_per_seconds" in inspect.getsource(model.get_rope_index)


def test_decoding_attributes_exist(tiny3):
    assert hasattr(tiny3.model, "rope_deltas") and hasattr(tiny3.model, "language_model")
    assert hasattr(tiny3.model.visual, "deepstack_merger_list")


# ---------------------------------------------------------------------------------------------- methods
PRE_LLM = {  # name: (params, budget rule: "modality" / "joint" per pool, "group", or None = no exact promise)
    "uniform": ({}, "modality"), "random": ({"seed": 1}, "modality"), "divprune": ({}, "group"),
    "xattn": ({}, "group"), "keyframe": ({}, None), "vidcom2": ({}, None),
    "pair": ({}, None), "dycoke": ({"stage2": False}, None), "omnizip": ({}, None),
    "audio_attn": ({}, "audio"), "audio_attn-window": ({"audio_scoring": "window"}, "audio"),
    "segment_topk": ({}, None),
    "fusion": ({"dim": 32, "scorer_hidden": 32}, "joint"),
}
IN_LLM = {"fastv": {}, "dycoke": {"stage2": True}}
SKIPPED = {"none", "evidence_oracle", "attention_oracle"}  # identity (tested above); ToyWorld annotations; refused
# on Qwen3 with a typed error (tests/test_attention_oracle.py)


def test_every_method_is_covered():
    assert set(METHODS) == {name.split("-")[0] for name in PRE_LLM} | set(IN_LLM) | SKIPPED


def _ceil(n, r):
    return torch.ceil(n.double() * r - 1e-9).long()


@pytest.mark.parametrize("name", sorted(PRE_LLM))
def test_every_pre_llm_method_runs_unchanged(tiny3, name):
    params, rule = PRE_LLM[name]
    r = 0.5
    x = _inputs(tiny3, batch_size=2, seconds=6)
    _install(tiny3, name.split("-")[0], retention=r, **params)
    with torch.no_grad():
        out = tiny3(**x)
    tokens, stats = tiny3.last_tokens, tiny3.last_stats
    assert bool(torch.isfinite(out.logits).all())
    assert bool((stats.total_after < stats.total_before).all())
    if rule == "modality":
        assert torch.equal(stats.video_after, _ceil(stats.video_before, r))
        assert torch.equal(stats.audio_after, _ceil(stats.audio_before, r))
    elif rule == "audio":
        assert torch.equal(stats.audio_after, _ceil(stats.audio_before, r))
        assert torch.equal(stats.video_after, stats.video_before)
    elif rule == "joint":
        assert torch.equal(stats.total_after, _ceil(stats.total_before, r))
    elif rule == "group":
        for b in range(2):
            pools = ((tokens.video_mask[b], stats.video_after[b]), (tokens.audio_mask[b], stats.audio_after[b]))
            for mask, kept in pools:
                n = torch.bincount(tokens.time_group[b][mask])  # per 2-s group
                assert int(kept) == int(_ceil(n[n > 0], r).sum())


@pytest.mark.parametrize("mode", ["global", "window"])
def test_audio_scores_are_the_last_layer_attention_received(tiny3, mode):
    """Brute force: the last AuT layer's full softmax per clip (global) or per encoder window, column means."""
    from fusion.model.audio_attention import LastLayerInputRecorder

    x = _inputs(tiny3, batch_size=2, seconds=6, video=False)
    with torch.no_grad():
        _, scores = tiny3._audio_features(x["input_features"], x["feature_attention_mask"], None,
                                          frozenset({f"audio_attention_{mode}"}))
        with LastLayerInputRecorder(tiny3.model.audio_tower) as rec:
            tiny3.model.get_audio_features(x["input_features"], x["feature_attention_mask"])
        layer = tiny3.model.audio_tower.layers[-1]
        h = layer.self_attn_layer_norm(rec.hidden_states)  # (N_a, d)
        heads = layer.self_attn.num_heads
        q = layer.self_attn.q_proj(h).unflatten(-1, (heads, -1)).transpose(0, 1)  # (H, N_a, d_h)
        k = layer.self_attn.k_proj(h).unflatten(-1, (heads, -1)).transpose(0, 1)
        n_a = (x["input_ids"] == tiny3.config.audio_token_id).sum(1)
        bounds = rec.cu_seqlens if mode == "window" else torch.nn.functional.pad(n_a.cumsum(0), (1, 0))
        expected = torch.cat([
            torch.softmax(q[:, a:b] @ k[:, a:b].transpose(1, 2) * layer.self_attn.scaling, -1).mean(dim=(0, 1))
            for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())])
    assert scores[mode].shape == (int(n_a.sum()),)
    torch.testing.assert_close(scores[mode], expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(IN_LLM))
def test_in_llm_hooks_raise_a_clear_error(tiny3, name):
    x = _inputs(tiny3, batch_size=1)
    _install(tiny3, name, retention=0.5, **IN_LLM[name])
    with pytest.raises(UnsupportedOptionError, match="DeepStack"):
        tiny3(**x)
    with pytest.raises(UnsupportedOptionError, match="DeepStack"):
        tiny3.generate(**x, max_new_tokens=2)
