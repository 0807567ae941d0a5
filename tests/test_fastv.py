"""FastV: the drop at layer K against a hand-run reference (naive eager layers), generate, batches, stats, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from naive_llm import causal, deep_tiny, naive_layer, topk_keep
from transformers import Qwen2_5OmniThinkerForConditionalGeneration

from fusion import METHODS
from fusion.errors import MethodConfigError, MissingModalityError
from fusion.model.hooked_lm import decode_step, hooked_forward, run_prefill
from fusion.pruners.fastv import FastVHook
from fusion.testing import random_inputs, sample_alone
from fusion.tokens import AVTokens, Modality

AV = (Modality.VIDEO, Modality.AUDIO)


@pytest.fixture(scope="module")
def deep():
    return deep_tiny()


@pytest.fixture
def fastv(deep):
    def install(retention: float, **params):
        deep.set_compressor(METHODS.build("fastv", retention=retention, **params))
        return deep

    yield install
    deep.set_compressor(METHODS.build("none"))


def _media(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k != "input_ids"}


def test_prefill_keep_golden():
    """Row over [text, V, V, A, A, text, pad]: r=0.5 of 4 pool tokens keeps the 2 most-attended, text stays."""
    row = torch.tensor([[0.30, 0.05, 0.20, 0.25, 0.01, 0.19, 0.0]])
    modality = torch.tensor([[0, 1, 1, 2, 2, 0, -1]], dtype=torch.int8)
    valid = modality != Modality.PAD
    keep = FastVHook(2, 0.5, AV).prefill_keep(row, modality, valid)
    assert keep.tolist() == [[True, False, True, True, False, True, False]]
    video_only = FastVHook(2, 0.5, (Modality.VIDEO,)).prefill_keep(row, modality, valid)
    assert video_only.tolist() == [[True, False, True, True, True, True, False]]


def _manual_fastv_logits(model, tokens: AVTokens, pruned, k: int, retention: float, new: list[int]):
    """Hand-run FastV on one unpadded sample: naive eager layers 0..k-1 on [prompt; new], the last PROMPT token's
    head-mean row at layer k-1 picks ceil(r·N) AV tokens, naive layers k.. on [kept prompt; new]."""
    lm = model.model.language_model
    S = pruned.inputs_embeds.shape[1]
    next_id = int(pruned.position_ids.max()) + 1
    new_ids = torch.tensor(new, dtype=torch.long).view(1, len(new))
    emb = torch.cat([pruned.inputs_embeds, model.model.get_input_embeddings()(new_ids)], dim=1)
    pos = torch.cat([pruned.position_ids, (next_id + torch.arange(len(new)))[None, None].expand(3, 1, -1)], dim=2)
    h, (cos, sin) = emb, lm.rotary_emb(emb, pos)
    for i in range(k):
        h, probs = naive_layer(lm.layers[i], h, cos, sin, causal(h.shape[1]))
    modality = tokens.modality[0, pruned.source_index[0]]
    pool = (modality == Modality.VIDEO) | (modality == Modality.AUDIO)
    keep = topk_keep(probs[0, S - 1, :S], pool, math.ceil(retention * int(pool.sum())))
    keep = torch.cat([keep, torch.ones(len(new), dtype=torch.bool)])
    h, pos = h[:, keep], pos[:, :, keep]
    cos, sin = lm.rotary_emb(h, pos)
    for layer in lm.layers[k:]:
        h, _ = naive_layer(layer, h, cos, sin, causal(h.shape[1]))
    return model.lm_head(lm.norm(h))[0], pruned.source_index[0][keep[:S]]


@pytest.mark.parametrize("k,retention", [(1, 0.3), (2, 0.5), (3, 0.25)])
@torch.no_grad()
def test_prefill_logits_equal_hand_run_reference(fastv, k, retention):
    model = fastv(retention, k=k)
    inputs = random_inputs(model, seconds=4, seed=11)
    out = model(**inputs)
    expected, kept_source = _manual_fastv_logits(model, model.last_tokens, model.compress(
        inputs["input_ids"], **_media(inputs)), k, retention, [])
    assert torch.equal(out.source_index[0], kept_source)
    torch.testing.assert_close(out.logits[0], expected, atol=2e-5, rtol=0)


@torch.no_grad()
def test_generate_equals_manual_greedy_loop(fastv):
    """Per-layer caches (layers < K: whole prompt, >= K: kept prompt) decode exactly like re-running everything."""
    model = fastv(0.4, k=2)
    inputs = random_inputs(model, seconds=4, seed=12)
    steps, eos = 6, model.generation_config.eos_token_id
    out = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    pruned = model.compress(inputs["input_ids"], padding_side="left", **_media(inputs))
    tokens, new, expected = model.last_tokens, [], []
    for _ in range(steps):  # cacheless: re-run the whole [prompt; new] sequence every step
        logits, _ = _manual_fastv_logits(model, tokens, pruned, 2, 0.4, new)
        expected.append(logits[-1])
        new.append(int(logits[-1].index_fill(0, torch.tensor([eos]), float("-inf")).argmax()))
    assert torch.equal(out[0, : inputs["input_ids"].shape[1]], inputs["input_ids"][0])
    assert out[0, inputs["input_ids"].shape[1]:].tolist() == new
    hook = model.llm_hook()  # the same steps through the runner, compared on values
    state = run_prefill(model, tokens, pruned, hook, "left", use_cache=True)
    lengths = [m.shape[1] for m in state.key_masks]  # layers < K cache the whole prompt, layers >= K the kept one
    assert lengths == [pruned.inputs_embeds.shape[1]] * 2 + [state.batch.inputs_embeds.shape[1]] * 2
    logits = model.lm_head(state.hidden[:, -1])
    for step in range(steps):
        if step:
            logits = decode_step(model, tokens, state, hook, torch.tensor([new[step - 1]]))
        torch.testing.assert_close(logits[0], expected[step], atol=2e-5, rtol=0)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@torch.no_grad()
def test_batch_of_two_lengths_equals_each_alone(fastv, padding_side):
    model = fastv(0.35, k=2)
    inputs = random_inputs(model, seconds=3, batch_size=2, seed=13, padding_side=padding_side)
    batched = model(**inputs)
    generated = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5)
    width = inputs["input_ids"].shape[1]
    for b in range(2):
        alone_inputs = sample_alone(inputs, b)
        alone = model(**alone_inputs)
        real = batched.attention_mask[b].bool()
        offset = int((inputs["attention_mask"][b] == 0).sum()) if padding_side == "left" else 0
        assert torch.equal(batched.source_index[b][real] - offset, alone.source_index[0])
        torch.testing.assert_close(batched.logits[b][real], alone.logits[0], atol=2e-5, rtol=0)
        alone_gen = model.generate(**alone_inputs, max_new_tokens=5, min_new_tokens=5)
        assert torch.equal(generated[b, width:], alone_gen[0, alone_inputs["input_ids"].shape[1]:])


@torch.no_grad()
def test_retention_one_equals_stock(fastv, deep):
    """R = 0: the registry runs the stock path, and FastV's hook forced through the runner gives the same logits."""
    stock = Qwen2_5OmniThinkerForConditionalGeneration(deep.config).eval()
    stock.load_state_dict(deep.state_dict(), strict=False)
    model = fastv(1.0, k=2)
    inputs = random_inputs(model, seconds=3, batch_size=2, seed=14)
    ref = stock(**inputs).logits
    out = model(**inputs)
    assert model.llm_hook() is None
    pruned = model.compress(inputs["input_ids"], **_media(inputs))
    hidden, batch = hooked_forward(model, model.last_tokens, pruned, FastVHook(2, 1.0, AV))
    hooked = model.lm_head(hidden)
    for b in range(2):
        real = out.attention_mask[b].bool()
        src = out.source_index[b][real]
        torch.testing.assert_close(out.logits[b][real], ref[b, src], atol=1e-5, rtol=0)
        torch.testing.assert_close(hooked[b][batch.attention_mask[b].bool()], ref[b, src], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind,pool", [(dict(video=True, audio=False), "video"),
                                       (dict(video=False, audio=True), "audio"), (dict(video=True, audio=True), "av")])
@torch.no_grad()
def test_end_to_end_stats_video_only_audio_only(fastv, kind, pool):
    model = fastv(0.3, k=2, tokens=pool)
    inputs = random_inputs(model, seconds=4, batch_size=2, seed=15, **kind)
    model(**inputs)
    stats = model.last_stats
    n_pool = {"video": stats.video_before, "audio": stats.audio_before, "av": stats.total_before}[pool]
    kept = {"video": stats.video_after, "audio": stats.audio_after, "av": stats.total_after}[pool]
    assert kept.tolist() == [math.ceil(n * 0.3 - 1e-9) for n in n_pool.tolist()]
    seq = stats.sequence_before
    assert torch.equal(stats.layer_tokens[:, :2], seq[:, None].expand(-1, 2))
    assert torch.equal(stats.layer_tokens[:, 2:], stats.sequence_after[:, None].expand(-1, 2))
    assert stats.prune_layer == 2
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 3)


@torch.no_grad()
def test_kept_tokens_stay_in_order_and_keep_their_tmrope_ids(fastv):
    model = fastv(0.25, k=1)
    inputs = random_inputs(model, seconds=4, batch_size=2, seed=16, padding_side="right")
    out = model(**inputs)
    tokens = model.last_tokens
    for b in range(2):
        src = out.source_index[b][out.attention_mask[b].bool()]
        assert bool((src[1:] > src[:-1]).all())
        assert tokens.modality[b, src].ne(Modality.TEXT).sum() == model.last_stats.total_after[b]


def test_loss_is_cross_entropy_on_kept_tokens(fastv):
    model = fastv(0.3, k=2)
    inputs = random_inputs(model, seconds=3, batch_size=2, seed=17, padding_side="right")
    labels = torch.full_like(inputs["input_ids"], -100)
    lengths = inputs["attention_mask"].sum(1)
    for b in range(2):
        labels[b, lengths[b] - 3: lengths[b]] = inputs["input_ids"][b, lengths[b] - 3: lengths[b]]
    out = model(**inputs, labels=labels)
    terms = []
    for b in range(2):
        src = out.source_index[b][out.attention_mask[b].bool()]
        for j in range(1, len(src)):
            if labels[b, src[j]] != -100:
                terms.append(F.cross_entropy(out.logits[b, j - 1][None], labels[b, src[j]][None]))
    assert len(terms) == 6
    torch.testing.assert_close(out.loss, torch.stack(terms).mean())
    out.loss.backward()
    assert model.model.language_model.layers[-1].mlp.down_proj.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_errors(fastv):
    inputs = random_inputs(fastv(0.5, k=4), seconds=2, seed=1)
    with pytest.raises(MethodConfigError, match="1 <= layer < 4"):
        fastv(0.5, k=4)(**inputs)
    video_only = random_inputs(fastv(0.5), seconds=2, seed=1, audio=False)
    with pytest.raises(MissingModalityError):
        fastv(0.5, tokens="audio")(**video_only)
    for bad in (dict(k=0), dict(k=1.5), dict(tokens="text")):
        with pytest.raises(MethodConfigError):
            METHODS.build("fastv", retention=0.5, **bad)
