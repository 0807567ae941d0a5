"""The batch arithmetic of one optimizer step (train/batch_size.py): a global batch that stays constant over the
number of ranks, the per-rank grad_accum alternative, and the typed errors when they cannot be met."""

from __future__ import annotations

import pytest

from fusion.config import load_config
from fusion.errors import ConfigError
from train.batch_size import BatchPlan, plan_batches
from train.config import RunConfig, TrainConfig


@pytest.mark.parametrize("micro,world,accum", [(4, 1, 4), (4, 2, 2), (4, 4, 1), (2, 2, 4), (8, 2, 1), (1, 16, 1)])
def test_a_global_batch_is_kept_whatever_the_number_of_ranks(micro, world, accum):
    plan = plan_batches(micro, None, 16, world)
    assert plan == BatchPlan(micro, accum, world)
    assert plan.global_size == 16 and plan.micro_batches == 16 // micro
    assert plan.describe() == f"global batch 16 = {micro} x {accum} accum x {world} rank(s)"


def test_grad_accum_is_per_rank_and_the_global_batch_grows_with_the_ranks():
    assert [plan_batches(2, 3, None, w).global_size for w in (1, 2, 4)] == [6, 12, 24]
    assert plan_batches(2, None, None, 2) == BatchPlan(2, 1, 2)  # neither set: one micro-batch per rank


def test_a_global_batch_the_ranks_cannot_split_names_the_micro_sizes_that_fit():
    with pytest.raises(ConfigError, match=r"global_batch_size=16 is not a multiple of .* \(16\) x 2 rank\(s\) = 32"
                                          r".* use train.micro_batch_size in \[1, 2, 4, 8\]"):
        plan_batches(16, None, 16, 2)
    with pytest.raises(ConfigError, match="a multiple of 3 \\(the ranks\\)"):
        plan_batches(2, None, 16, 3)
    with pytest.raises(ConfigError, match="both set"):
        plan_batches(2, 2, 16, 1)


def test_the_config_refuses_both_keys_and_a_global_batch_the_micro_batch_does_not_divide():
    with pytest.raises(ConfigError, match="global_batch_size: and grad_accum=2 are both set"):
        TrainConfig(global_batch_size=8, grad_accum=2)
    with pytest.raises(ConfigError, match="must be a positive multiple of micro_batch_size=3, got 8"):
        TrainConfig(micro_batch_size=3, global_batch_size=8)
    with pytest.raises(ConfigError, match="grad_accum: must be >= 1 or null, got 0"):
        TrainConfig(grad_accum=0)
    with pytest.raises(ConfigError, match=r"^train\.global_batch_size: and grad_accum=2"):  # the loader adds train.
        load_config(RunConfig, "configs/fusion.yaml", ["train.grad_accum=2"])


def test_the_shipped_recipe_keeps_its_global_batch_on_any_number_of_ranks():
    train = load_config(RunConfig, "configs/fusion.yaml").train
    assert (train.global_batch_size, train.grad_accum) == (16, None)
    one = plan_batches(train.micro_batch_size, train.grad_accum, train.global_batch_size, 1)
    assert (one.accum, one.global_size) == (1, 16)  # the recipe's one-process batch is unchanged
    two = plan_batches(8, train.grad_accum, train.global_batch_size, 2)  # the documented 2-GPU command
    assert (two.accum, two.global_size) == (1, 16)
