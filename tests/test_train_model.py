"""The trainable model (LoRA only on the LLM, the block in full, the backbone frozen), the DeepSpeed config rules,
the LR schedule, the distillation loss and its teacher, and the resume compatibility check."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fusion.config import load_config, to_dict
from fusion.errors import ConfigError
from train.config import RunConfig
from train.distributed import deepspeed_config
from train.loss import answer_logits, answer_teacher_logits, distillation, pruned_labels, teacher_logits
from train.model import build_model, trainable_summary
from train.optim import lr_factor, parameter_groups
from train.run import check_resumable
from train.sources import build_source

# the recipe's defaults train the toy backbone on ToyWorld; the tests use the tiny random thinker on synthetic data
SMALL = ["model.name=tiny-random", "data.source=synthetic", "train.micro_batch_size=2", "train.global_batch_size=2",
         "fusion.dim=32", "fusion.scorer_hidden=16", "data.synthetic.n_samples=4"]


def _cfg(*overrides):
    return load_config(RunConfig, "configs/fusion.yaml", [*SMALL, *overrides])


@pytest.fixture(scope="module")
def built():
    return build_model(_cfg())


def test_lora_reaches_every_llm_projection_and_nothing_else(built):
    model, _ = built
    lora = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_modules() if n.endswith("lora_A")}
    prefix = "base_model.model.model.language_model.layers."
    assert lora and all(n.startswith(prefix) for n in lora)
    kinds = {n.split(".")[-1] for n in lora}
    assert kinds == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    towers = [n for n, _ in model.named_modules() if ".audio_tower." in n or ".visual." in n]
    assert any(n.endswith("audio_tower.layers.0.self_attn.q_proj") for n in towers)  # same names exist there
    assert not any("lora" in n for n in towers)


def test_only_lora_and_the_block_train(built):
    model, _ = built
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or ".av_fusion.modules_to_save." in n for n in trainable)
    counts = trainable_summary(model)
    trained_copy = model.get_base_model().compressor.modules_to_save["default"]  # PEFT's trainable copy
    assert counts["block"] == sum(p.numel() for p in trained_copy.parameters()) and counts["lora"] > 0
    groups = parameter_groups(model, lr=1e-4, block_lr=1e-3, weight_decay=0.0)
    assert [(g["name"], g["lr"]) for g in groups] == [("lora", 1e-4), ("block", 1e-3), ("scorer", 1e-3),
                                                      ("splitter", 1e-3)]
    assert sum(p.numel() for g in groups for p in g["params"]) == counts["lora"] + counts["block"]
    scorer = sum(p.numel() for p in trained_copy.scorer.parameters())
    assert sum(p.numel() for p in groups[2]["params"]) == scorer


def test_scorer_lr_sets_or_freezes_the_keep_scorer():
    model, _ = build_model(_cfg())
    groups = parameter_groups(model, lr=1e-4, block_lr=1e-3, weight_decay=0.0, scorer_lr=5e-5, split_lr=2e-3)
    assert [(g["name"], g["lr"]) for g in groups] == [("lora", 1e-4), ("block", 1e-3), ("scorer", 5e-5),
                                                      ("splitter", 2e-3)]
    groups = parameter_groups(model, lr=1e-4, block_lr=1e-3, weight_decay=0.0, scorer_lr=0)
    assert [g["name"] for g in groups] == ["lora", "block", "splitter"]
    frozen = [n for n, p in model.named_parameters() if ".scorer." in n and "modules_to_save" in n]
    assert frozen and not any(p.requires_grad for n, p in model.named_parameters() if n in frozen)


def test_lora_off_keeps_the_llm_exactly_the_base():
    model, _ = build_model(_cfg("lora.enabled=false"))
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    assert all(float(p.abs().max()) == 0.0 for n, p in model.named_parameters() if "lora_B" in n)
    assert trainable_summary(model)["block"] > 0


def test_a_lora_regex_reaching_the_encoders_is_refused():
    with pytest.raises(ConfigError, match="must only match the LLM"):
        build_model(_cfg(r"lora.target_modules=.*self_attn\.q_proj"))
    with pytest.raises(ConfigError, match="matches no module"):
        build_model(_cfg("lora.target_modules=nothing"))


def test_deepspeed_config_takes_batch_clip_and_precision_from_the_recipe():
    cfg = _cfg("train.micro_batch_size=3", "train.global_batch_size=null", "train.grad_accum=2", "optim.clip=0.5")
    ds = deepspeed_config(cfg, world_size=2, bf16=False)
    assert ds["zero_optimization"]["stage"] == 2
    batch = (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"])
    assert batch == (3, 2, 12)  # grad_accum is per rank: the global batch grows with the ranks
    for world, accum in ((1, 4), (2, 2), (4, 1)):  # global_batch_size stays the global batch
        fixed = deepspeed_config(_cfg("train.micro_batch_size=3", "train.global_batch_size=12"), world, bf16=False)
        assert (fixed["gradient_accumulation_steps"], fixed["train_batch_size"]) == (accum, 12)
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"] == {"enabled": False}
    zero3 = deepspeed_config(_cfg("deepspeed=configs/deepspeed/zero3.json"), world_size=1, bf16=True)
    assert zero3["zero_optimization"]["stage"] == 3 and zero3["bf16"]["enabled"] is True
    for name in ("zero2", "zero3"):
        assert "auto" not in json.dumps(json.load(open(f"configs/deepspeed/{name}.json"))).lower()


@pytest.mark.parametrize("inline,message", [
    ("{zero_optimization: {stage: 3, stage3_prefetch_bucket_size: auto}}",
     "deepspeed.zero_optimization.stage3_prefetch_bucket_size: 'auto'"),
    ("{optimizer: {type: AdamW}}", "deepspeed.optimizer: remove it"),
    ("{train_micro_batch_size_per_gpu: 8}", "contradicts train.micro_batch_size=2"),
    ("{bf16: {enabled: true}}", "contradicts train.bf16"),
])
def test_bad_deepspeed_configs_are_config_errors(inline, message):
    with pytest.raises(ConfigError) as error:
        deepspeed_config(_cfg(f"deepspeed={inline}"), world_size=1, bf16=False)
    assert message in str(error.value)


def test_lr_schedule_golden_values():
    """Warm-up 2, cosine over 10 steps: 1/2, 1, then 0.5 * (1 + cos(pi * (s - 2) / 8))."""
    factors = [lr_factor(s, 10, 2, "cosine") for s in range(11)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert factors[6] == pytest.approx(0.5) and factors[10] == pytest.approx(0.0, abs=1e-12)
    assert factors[4] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert [lr_factor(s, 10, 0, "constant") for s in (0, 9)] == [1.0, 1.0]


def test_distillation_is_zero_for_identical_logits_and_grows_with_the_gap():
    torch.manual_seed(0)
    student = torch.randn(5, 11)
    assert distillation(student, student.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-6)
    near, far = distillation(student, student + 0.1 * torch.randn(5, 11), 1.0), distillation(student, -student, 1.0)
    assert 0 < near < far


def test_teacher_is_the_uncompressed_base_and_aligns_with_the_student(tiny):
    """A fresh model (zero gate, LoRA B = 0) at r = 1 is the base: student and teacher answer logits match, the
    teacher equals the stock forward, and the trainable flags survive PEFT's disable_adapter."""
    model, processor = build_model(_cfg("fusion.retention=1.0"))
    model.eval()
    source = build_source(_cfg().data, processor, model.get_base_model().config)
    batch = source.collate([source.example(i) for i in range(2)])
    labels = batch.pop("labels")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    teacher = teacher_logits(model, batch)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    with torch.no_grad():
        out = model(**batch)
    aligned = pruned_labels(labels, out.source_index)
    student_rows = answer_logits(out.logits, aligned)
    teacher_rows = answer_teacher_logits(teacher, out.source_index, aligned)
    assert student_rows.shape[0] == int((labels != -100).sum())
    torch.testing.assert_close(student_rows, teacher_rows, atol=1e-5, rtol=0)

    compressed, _ = build_model(_cfg("fusion.retention=0.2"))
    with torch.no_grad():
        out = compressed(**batch)
    aligned = pruned_labels(labels, out.source_index)
    assert answer_logits(out.logits, aligned).shape == answer_teacher_logits(teacher, out.source_index,
                                                                             aligned).shape


def test_resume_refuses_settings_that_change_the_trajectory():
    saved = to_dict(_cfg())
    check_resumable(saved, to_dict(_cfg("train.steps=500", "train.resume=true", "wandb.enabled=false")))
    with pytest.raises(ConfigError, match=r"fusion.retention \(0.25 -> 0.5\)"):
        check_resumable(saved, to_dict(_cfg("fusion.retention=0.5")))
    with pytest.raises(ConfigError, match="data.seed"):
        check_resumable(saved, to_dict(_cfg("data.seed=3")))


@pytest.mark.parametrize("schedule", ["[0.1, 0]", "[1.5]", "[.nan]"])
def test_a_retention_schedule_outside_0_1_is_a_config_error(schedule):
    with pytest.raises(ConfigError, match=r"train.retentions: every entry must be in \(0, 1\]"):
        _cfg(f"train.retentions={schedule}")
