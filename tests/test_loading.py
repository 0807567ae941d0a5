"""load_model: tiny random, random weights from the shipped real configs, local checkpoints in both layouts."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

from fusion import load_model
from fusion.errors import ModelLoadError
from fusion.model.configs import real_config
from fusion.model.thinker import CompressedThinker
from fusion.testing import random_inputs

PUBLISHED_THINKER_PARAMS = {"qwen2_5_omni_3b": 4_703_464_448, "qwen2_5_omni_7b": 8_931_813_888}


@pytest.mark.parametrize("name", sorted(PUBLISHED_THINKER_PARAMS))
def test_shipped_configs_have_the_published_parameter_counts(name):
    with torch.device("meta"):
        model = CompressedThinker(real_config(name))
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_THINKER_PARAMS[name]


def test_tiny_random_is_seeded():
    a, _ = load_model("tiny-random", seed=1)
    b, _ = load_model("tiny-random", seed=1)
    c, _ = load_model("tiny-random", seed=2)
    wa, wb, wc = (m.lm_head.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_random_weights_from_a_config_json(tiny, tmp_path):
    path = tmp_path / "thinker.json"
    path.write_text(json.dumps(tiny[0].config.to_dict()))
    model, processor = load_model(str(path), method="uniform", retention=0.5)
    assert processor is None and isinstance(model, CompressedThinker)
    with torch.no_grad():
        model(**random_inputs(model, seconds=2))
    assert model.last_stats.rows()[0]["audio_after"] == 25


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_local_thinker_directory(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again, again_processor = load_model(str(tmp_path), method="uniform", retention=1.0)
    inputs = random_inputs(model, seconds=2)
    torch.testing.assert_close(_logits(again, inputs), _logits(model, inputs), atol=0, rtol=0)
    assert again_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()


def test_full_omni_checkpoint_loads_only_the_thinker(tiny, tmp_path):
    """The hub layout: a Qwen2_5OmniForConditionalGeneration checkpoint with `thinker.`-prefixed weights."""
    model, processor = tiny
    full_config = Qwen2_5OmniConfig(thinker_config=model.config.to_dict(), enable_audio_output=False)
    full = Qwen2_5OmniForConditionalGeneration(full_config)
    full.thinker.load_state_dict(model.state_dict(), strict=False)
    full.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again, _ = load_model(str(tmp_path))
    inputs = random_inputs(model, seconds=2, seed=5)
    torch.testing.assert_close(_logits(again, inputs), _logits(model, inputs), atol=0, rtol=0)


def test_unknown_name_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="tiny-random"):
        load_model(str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="qwen2_5_omni_3b"):
        load_model("qwen2_5_omni_9b.json")
