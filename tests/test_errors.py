"""Bad input gets a typed av-fusion error whose message says what to do."""

from __future__ import annotations

import math

import pytest
import torch

from fusion import METHODS, load_model
from fusion.errors import (
    AVFusionError,
    DuplicateMethodError,
    InputMismatchError,
    MethodConfigError,
    MissingModalityError,
    NonFiniteFeaturesError,
    RetentionError,
    SelectionError,
    UnknownMethodError,
)
from fusion.pruners.base import Compressor, require_modality
from fusion.pruners.registry import Registry
from fusion.testing import random_inputs
from fusion.tokens import Selection


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.0001, 2, math.nan, math.inf, "0.5", None, True])
def test_retention_outside_unit_interval(bad):
    with pytest.raises(RetentionError, match="fraction of tokens KEPT|outside"):
        METHODS.build("uniform", retention=bad)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(UnknownMethodError) as info:
        load_model("tiny-random", method="omnizap")
    assert "uniform" in str(info.value) and "random" in str(info.value)


def test_duplicate_name_raises():
    registry = Registry()
    registry.register("x", lambda retention: None)
    with pytest.raises(DuplicateMethodError):
        registry.register("x", lambda retention: None)


def test_unknown_method_parameter_names_the_accepted_ones():
    with pytest.raises(MethodConfigError, match="budget"):
        METHODS.build("uniform", retention=0.5, rho=0.3)
    with pytest.raises(MethodConfigError, match="modality"):
        METHODS.build("uniform", retention=0.5, budget="per-token")


def test_none_method_refuses_compression():
    with pytest.raises(RetentionError, match="none"):
        METHODS.build("none", retention=0.5)


def test_errors_are_one_hierarchy():
    for err in (RetentionError, UnknownMethodError, InputMismatchError, NonFiniteFeaturesError, MissingModalityError):
        assert issubclass(err, AVFusionError) and issubclass(err, ValueError)


def test_placeholder_count_mismatch(tiny):
    model = tiny[0]
    inputs = random_inputs(model, seconds=4)
    inputs["input_features"] = inputs["input_features"][:, :, :300]  # 3 s of mel for 4 s of placeholders
    inputs["feature_attention_mask"] = inputs["feature_attention_mask"][:, :300]
    with pytest.raises(InputMismatchError, match="placeholder"):
        model(**inputs)


def test_media_placeholders_without_media(tiny):
    model = tiny[0]
    inputs = random_inputs(model, seconds=2)
    del inputs["pixel_values_videos"]
    with pytest.raises(InputMismatchError, match="video"):
        model(**inputs)


class _NeedsAudio(Compressor):
    name = "needs-audio"

    def select(self, tokens):
        require_modality(tokens, self.name, audio=True)
        return tokens.keep_all()


class _DropsText(Compressor):
    name = "drops-text"

    def select(self, tokens):
        keep = tokens.attention_mask.bool().clone()
        keep[:, 0] = False
        return Selection(keep=keep)


def test_method_needing_audio_on_video_without_audio(tiny):
    model = tiny[0]
    model.set_compressor(_NeedsAudio())
    try:
        with pytest.raises(MissingModalityError, match="needs audio"):
            model(**random_inputs(model, seconds=2, audio=False))
    finally:
        model.set_compressor(METHODS.build("none"))


def test_a_selection_that_drops_text_is_rejected(tiny):
    model = tiny[0]
    model.set_compressor(_DropsText())
    try:
        with pytest.raises(SelectionError, match="text"):
            model(**random_inputs(model, seconds=2))
    finally:
        model.set_compressor(METHODS.build("none"))


def test_markers_missing(tiny):
    """Time annotations need each media block's opening marker; without it a method reading them gets told why."""
    model = tiny[0]
    inputs = random_inputs(model, seconds=2, video=False)
    ids = inputs["input_ids"]
    ids[ids == model.config.audio_start_token_id] = 20  # remove the block's opening marker
    media = {k: v for k, v in inputs.items() if k != "input_ids"}
    with torch.no_grad():
        tokens = model.build_tokens(ids, **media)
    with pytest.raises(InputMismatchError, match="marker"):
        _ = tokens.time_group
