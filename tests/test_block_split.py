"""The searched modality split (``fusion.split: searched``): the counts sum exactly to the joint budget for every
layout and share, the untrained head picks the proportional share, a trained head's choice is what is kept, the
search's candidate losses equal running each split through the model by hand, and the head learns from them."""

from __future__ import annotations

import math

import pytest
import torch

from fusion import METHODS
from fusion.block.split import proportional_distance, split_cost, split_counts, split_keep
from fusion.errors import InputMismatchError, MethodConfigError
from fusion.model.keep import apply_keep
from fusion.testing import random_inputs
from train.loss import per_sample_cross_entropy, pruned_labels
from train.split_search import candidate_losses, scored_shares, split_loss

SMALL = {"dim": 32, "heads": 4, "scorer_hidden": 16, "instruction": True}


def _block(model, retention=0.25, **params):
    return METHODS.build("fusion", retention=retention, split="searched", **{**SMALL, **params}).bind(model.config)


def _answer_labels(inputs):
    labels = torch.full_like(inputs["input_ids"], -100)
    for b, n in enumerate(inputs["attention_mask"].sum(1).tolist()):  # the last 3 tokens, after the media
        labels[b, n - 3:n] = inputs["input_ids"][b, n - 3:n]
    return labels


def test_split_counts_sum_exactly_to_the_joint_budget_for_every_layout():
    gen = torch.Generator().manual_seed(0)
    shares = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.7, 0.9, 1.0])
    for trial in range(400):
        retention = [0.01, 0.1, 0.25, 0.33, 0.5, 0.9, 1.0][trial % 7]
        n_video = torch.randint(0, 300, (5,), generator=gen)
        n_audio = torch.randint(0, 300, (5,), generator=gen)
        n_audio[trial % 5] = 0 if trial % 3 == 0 else n_audio[trial % 5]  # clips without audio
        k_video, k_audio = split_counts(shares, n_video, n_audio, retention)  # (B, S)
        total = torch.ceil((n_video + n_audio).double() * retention - 1e-9).long()
        assert torch.equal(k_video + k_audio, total[:, None].expand_as(k_video)), trial
        assert bool((k_video >= 0).all() and (k_audio >= 0).all())
        assert bool((k_video <= n_video[:, None]).all() and (k_audio <= n_audio[:, None]).all()), trial
        scores = torch.randn(5, 600, generator=gen)
        video = torch.arange(600)[None, :] < n_video[:, None]
        audio = (torch.arange(600)[None, :] >= 300) & (torch.arange(600)[None, :] < 300 + n_audio[:, None])
        keep = split_keep(scores, video, audio, k_video[:, 3], k_audio[:, 3])
        assert torch.equal((keep & video).sum(1), k_video[:, 3]) and torch.equal((keep & audio).sum(1), k_audio[:, 3])


def test_split_counts_golden():
    # 16 video + 100 audio tokens at 10 %: K = 12; share 0.3 -> round(3.6) = 4 video; share 1.0 -> 12 video
    k_video, k_audio = split_counts(torch.tensor([0.0, 0.3, 1.0]), torch.tensor([16, 3]), torch.tensor([100, 2]), 0.1)
    assert k_video.tolist() == [[0, 4, 12], [0, 0, 1]] and k_audio.tolist() == [[12, 8, 0], [1, 1, 0]]


def test_the_untrained_head_picks_the_share_nearest_the_proportional_split():
    distance = proportional_distance(torch.tensor([0.0, 0.125, 0.25, 0.5, 1.0]), torch.tensor([16, 50, 0]),
                                     torch.tensor([100, 50, 20]))
    for prior in (0.0, 0.5):  # predictions all 0 at init: 16/116 = 0.138 -> 0.125; 0.5 -> 0.5; no video -> 0
        assert split_cost(torch.zeros(3, 5), distance, prior).argmin(1).tolist() == [1, 3, 0]
    # a predicted gain beats the prior only when larger than lambda * distance: 0.5 * (0.5 - 0.138) = 0.18
    predicted = torch.tensor([[1.0, 1.0, 1.0, 0.85, 1.0]])
    assert split_cost(predicted, distance[:1], 0.5).argmin(1).tolist() == [1]
    assert split_cost(predicted - torch.tensor([[0, 0, 0, 0.1, 0]]), distance[:1], 0.5).argmin(1).tolist() == [3]


def test_the_head_starts_proportional_and_its_trained_choice_is_what_is_kept(tiny):
    model = tiny[0]
    block = _block(model, 0.25).eval()
    inputs = random_inputs(model, seconds=6, batch_size=3, seed=2)
    with torch.no_grad():
        tokens = model.build_tokens(**inputs)
        block(tokens)
        n_v, n_a = tokens.video_mask.sum(1), tokens.audio_mask.sum(1)
        shares = torch.tensor(block.config.split_shares)
        nearest = (shares[None, :] - (n_v / (n_v + n_a))[:, None]).abs().argmin(1)
        assert torch.equal(block.last_split_choice, nearest)
        block.splitter.out.bias.copy_(torch.linspace(1, -1, len(shares)))  # predicts all-video to be cheapest
        selection = block(tokens)
    assert bool((block.last_split_choice == len(shares) - 1).all())
    k_video, k_audio = split_counts(shares, n_v, n_a, 0.25)
    kept_video = (selection.keep & tokens.video_mask).sum(1)
    kept_audio = (selection.keep & tokens.audio_mask).sum(1)
    assert torch.equal(kept_video, k_video[:, -1]) and torch.equal(kept_audio, k_audio[:, -1])
    assert torch.equal(kept_video + kept_audio, torch.ceil((n_v + n_a).double() * 0.25 - 1e-9).long())


@pytest.mark.parametrize("retention", [0.25, 0.6])  # at 0.6 shares 1/2 and 1 both keep every video token
def test_candidate_losses_equal_running_each_split_through_the_model(tiny, retention):
    model = tiny[0]
    block = _block(model, retention, split_shares=[0.0, 0.5, 1.0])
    model.set_compressor(block)
    try:
        inputs = random_inputs(model, seconds=5, batch_size=2, seed=3, padding_side="right")
        labels = _answer_labels(inputs)
        losses, tokens = candidate_losses(model, block, inputs, labels)  # (B, S)
        assert losses.shape == (2, 3) and not losses.requires_grad
        with torch.no_grad():
            tokens = model.build_tokens(**inputs)
            k_video, k_audio = block.eval().split_counts(tokens)
            embeds = block.fuse(tokens)
            scores = block.scores(embeds, tokens)
            text = tokens.attention_mask.bool() & ~tokens.av_mask
            for s in range(3):
                keep = text | split_keep(scores, tokens.video_mask, tokens.audio_mask, k_video[:, s], k_audio[:, s])
                pruned = apply_keep(tokens, type(block(tokens))(keep=keep, embeds=embeds), padding_side="right")
                hidden = model.model.language_model(inputs_embeds=pruned.inputs_embeds,
                                                    attention_mask=pruned.attention_mask,
                                                    position_ids=pruned.position_ids).last_hidden_state
                _, expect = per_sample_cross_entropy(model.lm_head(hidden), pruned_labels(labels, pruned.source_index))
                torch.testing.assert_close(losses[:, s], expect)
        assert not torch.allclose(losses[:, 0], losses[:, 2])  # the splits really differ
        assert (retention == 0.6) == bool((k_video[:, 1] == k_video[:, 2]).all())  # the deduplicated case is run
        with torch.no_grad():  # the gradient step reuses the search's tokens: the same forward, encoders skipped
            torch.testing.assert_close(model(**inputs, av_tokens=tokens).logits, model(**inputs).logits)
            other = random_inputs(model, seconds=3, batch_size=2, seed=4, padding_side="right")
            with pytest.raises(InputMismatchError, match="other input_ids"):
                model(**other, av_tokens=tokens)
    finally:
        model.set_compressor(METHODS.build("none"))


def test_a_sampled_search_scores_only_the_drawn_shares_and_their_twins(tiny):
    model = tiny[0]
    block = _block(model, 0.6, split_shares=[0.0, 0.5, 1.0])  # at 0.6 shares 1/2 and 1 keep the same video tokens
    model.set_compressor(block)
    try:
        inputs = random_inputs(model, seconds=5, batch_size=2, seed=3, padding_side="right")
        labels = _answer_labels(inputs)
        full, _ = candidate_losses(model, block, inputs, labels)  # (B, S)
        scored = torch.tensor([[True, False, False], [False, False, True]])
        sampled, _ = candidate_losses(model, block, inputs, labels, scored)
    finally:
        model.set_compressor(METHODS.build("none"))
    expect = scored | torch.tensor([[False, False, False], [False, True, True]])  # sample 1: share 1/2 twins 1
    assert torch.equal(~sampled.isnan(), expect)
    torch.testing.assert_close(sampled[expect], full[expect])
    predicted = torch.zeros(2, 3)  # the regression averages over the scored entries alone
    torch.testing.assert_close(split_loss(predicted, sampled), (full[expect] ** 2).mean())


def test_scored_shares_draws_that_many_distinct_shares_per_sample():
    drawn = scored_shares(64, 9, 3, torch.Generator().manual_seed(0))
    assert drawn.shape == (64, 9) and torch.equal(drawn.sum(1), torch.full((64,), 3))
    assert drawn.any(0).all()  # every share gets drawn
    assert torch.equal(drawn, scored_shares(64, 9, 3, torch.Generator().manual_seed(0)))
    assert scored_shares(4, 9, None, torch.Generator()) is None and scored_shares(4, 9, 9, torch.Generator()) is None


def test_the_split_loss_trains_the_head_to_predict_each_shares_loss(tiny):
    model = tiny[0]
    block = _block(model, 0.25, split_shares=[0.0, 0.5, 1.0]).train()
    optimizer = torch.optim.Adam(block.splitter.parameters(), lr=0.05)
    inputs = random_inputs(model, seconds=5, batch_size=2, seed=3)
    with torch.no_grad():  # the frozen encoders' outputs
        tokens = model.build_tokens(**inputs)
    losses = torch.tensor([[2.0, 0.1, 1.0], [0.2, 3.0, 3.0]])  # sample 0: share 0.5 is best; sample 1: share 0
    for _ in range(200):
        block(tokens)
        loss = split_loss(block.last_split_prediction, losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert block.splitter.out.weight.grad.abs().sum() > 0
    torch.testing.assert_close(block.last_split_prediction.detach(), losses, atol=0.05, rtol=0)
    with torch.no_grad():
        block.eval()(tokens)
    assert block.last_split_choice.tolist() == [1, 0]
    # the split loss does not reach the fusion layers (their inputs to the head are detached)
    assert all(p.grad is None for p in block.layers.parameters())


@pytest.mark.parametrize("params, key", [({"allocation": True}, "split"), ({"budget": "modality"}, "split"),
                                         ({"split_shares": [0.5, 0.5]}, "split_shares"),
                                         ({"split_shares": [0.0, 1.5]}, "split_shares"),
                                         ({"split_prior": -0.1}, "split_prior")])
def test_bad_split_settings_are_config_errors(params, key):
    with pytest.raises(MethodConfigError, match=key):
        METHODS.build("fusion", retention=0.25, split="searched", **{**SMALL, **params})


def test_an_unknown_split_mode_is_a_config_error():
    with pytest.raises(MethodConfigError, match="'off' or 'searched'"):
        METHODS.build("fusion", retention=0.25, split="learned")


def test_a_trained_split_round_trips_through_the_adapter_config(tmp_path, tiny):
    from fusion.block.config import BaseIdentity, load_fusion_config, save_fusion_config

    model = tiny[0]
    block = _block(model, 0.1, split_shares=[0.0, 0.25, 1.0])
    save_fusion_config(tmp_path, block.config, BaseIdentity.from_config(model.config))
    config, _ = load_fusion_config(tmp_path)
    assert config.split == "searched" and config.split_shares == [0.0, 0.25, 1.0]
    assert math.isclose(config.retention, 0.1)


def test_the_trainer_forces_an_exploring_share_for_one_training_forward(tiny):
    from train.split_search import exploring_share

    draws = exploring_share(4000, 9, 0.5, torch.Generator().manual_seed(0))
    assert abs(float((draws == -1).float().mean()) - 0.5) < 0.03  # half the samples keep the head's choice
    assert torch.bincount(draws[draws >= 0], minlength=9).min() > 150  # the others: every share
    assert torch.equal(draws, exploring_share(4000, 9, 0.5, torch.Generator().manual_seed(0)))
    model = tiny[0]
    block = _block(model, 0.25, split_shares=[0.0, 0.5, 1.0]).train()
    with torch.no_grad():
        tokens = model.build_tokens(**random_inputs(model, seconds=5, batch_size=2, seed=3))
        block(tokens)
        head = block.last_split_choice.clone()
        block.force_split(torch.tensor([2, -1]))
        forced = block(tokens)
        again = block(tokens)  # the override is used once
    k_video, _ = split_counts(torch.tensor([0.0, 0.5, 1.0]), tokens.video_mask.sum(1), tokens.audio_mask.sum(1), 0.25)
    assert (forced.keep & tokens.video_mask).sum(1).tolist() == [int(k_video[0, 2]), int(k_video[1, head[1]])]
    assert block.forced_split is None
    assert torch.equal((again.keep & tokens.video_mask).sum(1), k_video.gather(1, head[:, None])[:, 0])


def test_a_split_scored_below_one_is_a_config_error():
    from fusion.config import load_config
    from fusion.errors import ConfigError
    from train.config import RunConfig

    with pytest.raises(ConfigError, match="split_scored must be a number of shares >= 1 or null, got 0"):
        load_config(RunConfig, "configs/fusion.yaml", ["loss.split_scored=0"])
    assert load_config(RunConfig, "configs/fusion.yaml", ["loss.split_scored=3"]).loss.split_scored == 3


def test_the_trainers_scored_shares_follow_the_sample_position_and_cover_all_when_asked_for_all():
    from fusion.config import load_config
    from train.config import RunConfig
    from train.run import FusionRecipe

    recipe = FusionRecipe.__new__(FusionRecipe)  # only the draws: no model, no data
    recipe.cfg = load_config(RunConfig, "configs/fusion.yaml", ["loss.split_scored=3"])
    drawn = recipe.scored_shares(8, 4, 9)  # (B, S) samples at stream positions 8 .. 11
    assert drawn.shape == (4, 9) and drawn.sum(1).tolist() == [3, 3, 3, 3]
    assert torch.equal(recipe.scored_shares(10, 2, 9), drawn[2:])  # a sample's draw depends on its position only
    for n_scored in (9, 12):  # every share scored: no mask at all
        recipe.cfg = load_config(RunConfig, "configs/fusion.yaml", [f"loss.split_scored={n_scored}"])
        assert recipe.scored_shares(8, 4, 9) is None
