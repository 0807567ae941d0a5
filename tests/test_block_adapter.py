"""Adapter round trip with non-trivial weights (LoRA + the block through PEFT modules_to_save + fusion_config.json):
fusion.load_model and plain PeftModel.from_pretrained give the saved model's logits exactly; wrong backbones and
malformed adapters are typed errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from fusion import METHODS, load_model
from fusion.block import attach_block, export_adapter
from fusion.block.config import load_fusion_config
from fusion.errors import AdapterMismatchError, MethodConfigError, RetentionError
from fusion.model.configs import small_thinker_config
from fusion.model.loading import tiny_processor
from fusion.testing import random_inputs
from train.config import LLM_LORA_REGEX

BLOCK = {"dim": 32, "heads": 4, "scorer_hidden": 16, "instruction": True}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A PEFT-wrapped thinker whose LoRA B matrices and block weights are all random, exported once."""
    thinker, _ = load_model("tiny-random")
    thinker.set_compressor(METHODS.build("fusion", retention=0.3, **BLOCK).bind(thinker.config))
    model = get_peft_model(thinker, LoraConfig(r=4, lora_alpha=8, target_modules=LLM_LORA_REGEX,
                                               modules_to_save=["av_fusion"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:  # lora_A/lora_B and the block's trainable copy
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=g))
    model.eval()
    directory = tmp_path_factory.mktemp("adapter") / "adapter"
    export_adapter(model, directory)
    return model, directory


def _logits(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.logits, out.source_index


def test_adapter_directory_holds_lora_the_block_and_the_fusion_config(trained):
    model, directory = trained
    assert sorted(p.name for p in directory.iterdir() if p.suffix in (".json", ".safetensors")) == [
        "adapter_config.json", "adapter_model.safetensors", "fusion_config.json"]
    keys = load_file(str(directory / "adapter_model.safetensors")).keys()
    assert any("lora_B" in k for k in keys) and any(".av_fusion.gate.weight" in k for k in keys)
    assert not any("audio_tower" in k or "visual" in k for k in keys)
    saved = json.loads((directory / "fusion_config.json").read_text())
    assert saved["block"]["dim"] == 32 and saved["block"]["retention"] == 0.3
    assert saved["base"]["hidden_size"] == model.get_base_model().config.get_text_config().hidden_size


def test_load_model_and_peft_from_pretrained_reproduce_the_logits_exactly(trained):
    model, directory = trained
    inputs = random_inputs(model.get_base_model(), seconds=5, batch_size=2, seed=4)
    reference, source = _logits(model, inputs)

    loaded, _ = load_model("tiny-random", method="fusion", adapter=directory)
    ours, ours_source = _logits(loaded, inputs)
    assert torch.equal(ours_source, source) and torch.equal(ours, reference)

    thinker, _ = load_model("tiny-random")
    attach_block(thinker, directory)
    plain = PeftModel.from_pretrained(thinker, str(directory)).eval()
    theirs, _ = _logits(plain, inputs)
    assert torch.equal(theirs, reference)

    base, _ = load_model("tiny-random", method="fusion", retention=0.3, **BLOCK)  # untrained block, no LoRA
    untrained, _ = _logits(base, inputs)
    assert untrained.shape == reference.shape and not torch.allclose(untrained, reference, atol=1e-3)


def test_an_adapter_can_be_evaluated_at_another_retention(trained):
    _, directory = trained
    model, _ = load_model("tiny-random", method="fusion", adapter=directory, retention=0.5)
    inputs = random_inputs(model.get_base_model(), seconds=4, seed=1)
    with torch.no_grad():
        model(**inputs)
    (row,) = model.last_stats.rows()
    assert row["total_after"] == math.ceil(0.5 * row["total_before"] - 1e-9)
    with pytest.raises(RetentionError):
        load_model("tiny-random", method="fusion", adapter=directory, retention=1.5)


def test_an_adapter_on_a_backbone_of_another_size_is_refused(trained, tmp_path):
    _, directory = trained
    other = small_thinker_config(tiny_processor().tokenizer, hidden=32, layers=2, heads=4, kv_heads=2,
                                 mrope_section=[1, 1, 2], vision_hidden=32, audio_hidden=32)
    path = tmp_path / "thinker_32.json"
    other.to_json_file(str(path))
    with pytest.raises(AdapterMismatchError, match="hidden_size: adapter 64, model 32"):
        load_model(str(path), method="fusion", adapter=directory)
    thinker, _ = load_model(str(path))
    with pytest.raises(AdapterMismatchError, match="another backbone"):
        attach_block(thinker, directory)


def test_malformed_adapters_and_wrong_methods_are_typed_errors(trained, tmp_path):
    _, directory = trained
    with pytest.raises(AdapterMismatchError, match="lacks"):
        load_model("tiny-random", method="fusion", adapter=tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (broken / name).write_bytes((directory / name).read_bytes())
    with pytest.raises(AdapterMismatchError, match="fusion_config.json does not exist"):
        load_model("tiny-random", method="fusion", adapter=broken)
    payload = json.loads((directory / "fusion_config.json").read_text())
    payload["version"] = 99
    (broken / "fusion_config.json").write_text(json.dumps(payload))
    with pytest.raises(AdapterMismatchError, match="version 99"):
        load_model("tiny-random", method="fusion", adapter=broken)
    with pytest.raises(MethodConfigError, match="method='fusion'"):
        load_model("tiny-random", method="uniform", adapter=directory)


def test_an_adapter_saved_before_standardise_existed_loads_with_raw_scores(trained, tmp_path):
    """``fusion_config.json`` files written before the ``standardise`` field keep their behaviour (raw scores)."""
    _, directory = trained
    old = tmp_path / "old"
    old.mkdir()
    payload = json.loads((directory / "fusion_config.json").read_text())
    payload["block"].pop("standardise", None)
    (old / "fusion_config.json").write_text(json.dumps(payload))
    config, _ = load_fusion_config(old)
    assert config.standardise is False
    payload["block"]["standardise"] = True
    (old / "fusion_config.json").write_text(json.dumps(payload))
    assert load_fusion_config(old)[0].standardise is True
