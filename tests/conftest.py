"""Shared fixtures: the tiny random thinker (CPU, no downloads) and a stock HF copy with the same weights."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny():
    """``(model, processor)``: the tiny random compressed thinker with method 'none'."""
    from fusion import load_model

    return load_model("tiny-random")


@pytest.fixture(scope="session")
def tiny3():
    """``(model, processor)``: the tiny random Qwen3-Omni thinker with method 'none' and its offline processor."""
    from fusion import load_model

    return load_model("tiny-random-qwen3")


@pytest.fixture(scope="session")
def stock(tiny):
    """The stock HF thinker class with exactly the tiny model's weights."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    model = Qwen2_5OmniThinkerForConditionalGeneration(tiny[0].config).eval()
    model.load_state_dict(tiny[0].state_dict(), strict=False)
    return model


@pytest.fixture
def with_method(tiny):
    """Install a method on the shared tiny model for one test, then restore 'none'."""
    from fusion import METHODS

    model = tiny[0]

    def install(name: str, retention: float = 1.0, **params):
        model.set_compressor(METHODS.build(name, retention=retention, **params))
        return model

    yield install
    model.set_compressor(METHODS.build("none"))
