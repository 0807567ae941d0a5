"""Checkpoint writes are atomic: a save killed half-way leaves the previous checkpoint as `latest` and intact;
the next save cleans up; old checkpoints are pruned; re-saving a step after a resume never leaves a gap."""

from __future__ import annotations

import json
import os

import pytest
import torch

from fusion.errors import ConfigError
from train.checkpoint import latest_checkpoint, rng_state, save_checkpoint, set_rng_state


class FakeEngine:
    """Writes DeepSpeed-like files; ``crash_after`` files into a save, it raises (a kill mid-save)."""

    def __init__(self, crash_after: int | None = None) -> None:
        self.crash_after = crash_after
        self.calls = []

    def save_checkpoint(self, save_dir, tag, client_state, save_latest, exclude_frozen_parameters):
        self.calls.append((tag, save_latest, exclude_frozen_parameters))
        folder = f"{save_dir}/{tag}"
        os.makedirs(folder, exist_ok=True)
        for i, name in enumerate(("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt")):
            if self.crash_after is not None and i >= self.crash_after:
                raise KeyboardInterrupt("killed mid-save")
            with open(f"{folder}/{name}", "w") as f:
                f.write(f"{tag}:{client_state['step']}")


def _save(engine, run_dir, step, keep=3):
    return save_checkpoint(engine, run_dir, step, {"loss": 1.0 / step}, keep, is_main=True, barrier=lambda: None)


def test_a_save_killed_half_way_leaves_the_previous_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    _save(FakeEngine(), tmp_path, 2)
    assert latest_checkpoint(tmp_path) == ("step-000002", 2)
    with pytest.raises(KeyboardInterrupt):
        _save(FakeEngine(crash_after=1), tmp_path, 4)
    assert latest_checkpoint(tmp_path) == ("step-000002", 2)  # still the complete one
    assert (root / "step-000002" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").read_text() == ".tmp-step-000002:2"
    assert not (root / "step-000004").exists() and (root / ".tmp-step-000004").exists()

    engine = FakeEngine()
    _save(engine, tmp_path, 4)
    assert engine.calls == [(".tmp-step-000004", False, True)]  # DeepSpeed's own `latest` off, frozen params out
    assert latest_checkpoint(tmp_path) == ("step-000004", 4)
    assert not (root / ".tmp-step-000004").exists()
    assert json.loads((root / "step-000004" / "trainer_state.json").read_text()) == {"step": 4, "loss": 0.25}


def test_old_checkpoints_are_pruned_and_a_resaved_step_is_swapped_in(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        _save(FakeEngine(), tmp_path, step, keep=2)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step-000004", "step-000006"]
    _save(FakeEngine(), tmp_path, 6, keep=2)  # the same step again (a resumed run reaching it)
    assert latest_checkpoint(tmp_path) == ("step-000006", 6)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000004", "step-000006"]


def test_a_latest_file_naming_a_missing_checkpoint_is_a_config_error(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step-000008")
    with pytest.raises(ConfigError, match="step-000008"):
        latest_checkpoint(tmp_path)


def test_rng_state_round_trip():
    state = rng_state()
    first = torch.rand(3)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), first)


def test_a_later_checkpoint_that_latest_never_named_is_pruned_not_the_saved_one(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4):
        _save(FakeEngine(), tmp_path, step, keep=1)
    (root / "step-000006").mkdir()  # renamed into place, then killed before `latest` named it
    (root / "step-000006" / "trainer_state.json").write_text('{"step": 6}')
    _save(FakeEngine(), tmp_path, 5, keep=1)  # the resumed run saves at another step (train.save_every changed)
    assert latest_checkpoint(tmp_path) == ("step-000005", 5)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step-000005"]
