"""The adapter directory is replaced in one step (RENAME_EXCHANGE, or two renames that recover() undoes), so a kill
at any instant leaves a complete adapter/ (the old or the new one)."""

from __future__ import annotations

import pytest

from train.export import STAGING, exchange, recover, replace_dir


def _dir(path, text):
    path.mkdir()
    (path / "adapter_model.safetensors").write_text(text)
    return path


def _content(path):
    return (path / "adapter_model.safetensors").read_text()


def test_a_first_export_is_one_rename(tmp_path):
    replace_dir(_dir(tmp_path / STAGING, "new"), tmp_path / "adapter")
    assert _content(tmp_path / "adapter") == "new" and not (tmp_path / STAGING).exists()


@pytest.mark.parametrize("atomic", [True, False], ids=["exchange", "two-renames"])
def test_an_export_replaces_the_previous_adapter(tmp_path, atomic):
    _dir(tmp_path / "adapter", "old")
    swap = exchange if atomic else (lambda a, b: False)
    replace_dir(_dir(tmp_path / STAGING, "new"), tmp_path / "adapter", swap=swap)
    assert _content(tmp_path / "adapter") == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_exchange_swaps_two_directories(tmp_path):
    a, b = _dir(tmp_path / "a", "A"), _dir(tmp_path / "b", "B")
    if not exchange(a, b):
        pytest.skip("no renameat2(RENAME_EXCHANGE) on this system (the two-rename fallback is tested above)")
    assert (_content(a), _content(b)) == ("B", "A")


def test_recover_puts_the_previous_adapter_back_after_a_kill_between_the_two_renames(tmp_path):
    target = tmp_path / "adapter"
    _dir(tmp_path / "adapter.old", "old")  # target moved aside, the staged one not yet renamed: then killed
    _dir(tmp_path / STAGING, "new")
    _dir(tmp_path / (STAGING + ".tmp"), "half")  # and what a kill inside export_adapter leaves
    recover(target)
    assert _content(target) == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    recover(target)  # nothing to do
    assert _content(target) == "old"
