"""Loss-balanced category sampling (the toy pre-training curriculum) and the per-sample answer loss it reads."""

from __future__ import annotations

import pytest
import torch

from fusion.data.curriculum import LossBalancedSampler
from fusion.errors import ConfigError
from train.loss import cross_entropy, per_sample_cross_entropy

CATEGORIES = ["a"] * 50 + ["b"] * 30 + ["c"] * 20


def test_weights_follow_the_formula_and_start_uniform():
    sampler = LossBalancedSampler(CATEGORIES, floor=0.2)
    assert sampler.weights().tolist() == pytest.approx([1 / 3] * 3)
    sampler.ema = torch.tensor([0.0, 1.0, 3.0])
    # floor / C + (1 - floor) * ema / sum(ema)
    expected = [0.2 / 3, 0.2 / 3 + 0.8 * 0.25, 0.2 / 3 + 0.8 * 0.75]
    assert sampler.weights().tolist() == pytest.approx(expected)
    assert sampler.weights().sum().item() == pytest.approx(1.0)


def test_draws_stay_inside_the_drawn_category_and_follow_the_loss():
    sampler = LossBalancedSampler(CATEGORIES, floor=0.1, momentum=0.0, generator=torch.Generator().manual_seed(3))
    # category c loses everything, a and b nothing: after one update c gets 0.1/3 + 0.9 of the draws
    index = torch.tensor([0, 60, 90])
    sampler.update(index, torch.tensor([0.0, 0.0, 2.0]))
    drawn = torch.cat([sampler.draw(64) for _ in range(20)])
    names = [CATEGORIES[i] for i in drawn.tolist()]
    share_c = names.count("c") / len(names)
    assert share_c == pytest.approx(0.1 / 3 + 0.9, abs=0.03)
    assert names.count("a") > 0 and names.count("b") > 0  # the floor keeps solved categories in the batches
    assert len(set(drawn.tolist()) & set(range(80, 100))) > 15  # many different c samples, not one repeated


def test_update_is_an_exponential_moving_average_per_category():
    sampler = LossBalancedSampler(CATEGORIES, momentum=0.5)
    sampler.update(torch.tensor([0, 1, 55]), torch.tensor([3.0, 1.0, 5.0]))
    assert sampler.ema.tolist() == pytest.approx([0.5 * 1 + 0.5 * 2.0, 0.5 * 1 + 0.5 * 5.0, 1.0])


def test_same_seed_same_batches():
    one, two = (LossBalancedSampler(CATEGORIES, generator=torch.Generator().manual_seed(7)) for _ in range(2))
    assert torch.equal(one.draw(32), two.draw(32))


@pytest.mark.parametrize("kwargs", [{"floor": 1.5}, {"floor": -0.1}, {"momentum": 1.0}])
def test_bad_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        LossBalancedSampler(CATEGORIES, **kwargs)


def test_per_sample_cross_entropy_averages_each_rows_answer_tokens():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.full((3, 6), -100)
    labels[0, 4:] = torch.tensor([2, 5])  # two answer tokens
    labels[1, 5] = 7  # one
    loss, per_sample = per_sample_cross_entropy(logits, labels)
    logp = logits.log_softmax(-1)
    row0 = -(logp[0, 3, 2] + logp[0, 4, 5]) / 2
    row1 = -logp[1, 4, 7]
    assert per_sample.tolist() == pytest.approx([row0.item(), row1.item(), 0.0], rel=1e-5)
    assert loss.item() == pytest.approx(cross_entropy(logits, labels).item(), rel=1e-6)
    assert loss.item() == pytest.approx((2 * row0 + row1).item() / 3, rel=1e-5)
