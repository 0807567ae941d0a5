"""Trust boundaries: adapters and caches are read from safetensors + JSON only, a pickle where an adapter is expected
is refused before anything is unpickled, resume checkpoints are unpickled weights-only, and ``trust_remote_code``
stays off unless the caller passes it."""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from adapter_helpers import tiny_adapter

import fusion.data.processor as processor_module
import fusion.data.processor_files as processor_files
import fusion.model.loading as loading
from fusion import load_model
from fusion.block import attach_block
from fusion.errors import UnsafeWeightsError
from fusion.model.thinker import CompressedThinker
from train.checkpoint import weights_only_load, weights_only_loads

REPO = Path(__file__).resolve().parents[1]
UNPICKLED: list[str] = []


def _ran_on_unpickle(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Payload:
    """An object whose unpickling runs code (what a hostile ``adapter_model.bin`` would hold)."""

    def __reduce__(self):
        return _ran_on_unpickle, ("payload",)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A real tiny adapter directory (LoRA + block + fusion_config.json)."""
    return tiny_adapter(tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture
def no_unpickling(monkeypatch):
    """Fail the test if anything calls torch.load or pickle.load(s)."""
    UNPICKLED.clear()

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    yield
    assert UNPICKLED == []


def _pickle_adapter(adapter: Path, out: Path, with_safetensors: bool = False, name: str = "adapter_model.bin") -> Path:
    out.mkdir()
    for file in ("adapter_config.json", "fusion_config.json") + (("adapter_model.safetensors",) if with_safetensors
                                                                   else ()):
        shutil.copy(adapter / file, out / file)
    torch.save({"base_model.model.lm_head.weight": torch.zeros(2), "payload": Payload()}, out / name)
    return out


def test_a_pickle_adapter_is_refused_before_anything_is_unpickled(adapter, tmp_path, no_unpickling):
    bad = _pickle_adapter(adapter, tmp_path / "bin")
    with pytest.raises(UnsafeWeightsError, match=r"adapter_model\.bin.*re-export it with safetensors"):
        load_model("tiny-random", method="fusion", adapter=bad)
    thinker, _ = load_model("tiny-random")
    with pytest.raises(UnsafeWeightsError, match="safetensors"):
        attach_block(thinker, bad)  # the documented attach_block + PeftModel.from_pretrained path checks first too


def test_a_stray_pickle_beside_the_safetensors_weights_is_refused(adapter, tmp_path, no_unpickling):
    bad = _pickle_adapter(adapter, tmp_path / "both", with_safetensors=True, name="extra_state.pt")
    with pytest.raises(UnsafeWeightsError, match=r"extra_state\.pt.*remove the pickle files"):
        load_model("tiny-random", method="fusion", adapter=bad)


def test_a_pickle_renamed_to_safetensors_is_refused_unread(adapter, tmp_path, no_unpickling):
    bad = tmp_path / "renamed"
    bad.mkdir()
    for file in ("adapter_config.json", "fusion_config.json"):
        shutil.copy(adapter / file, bad / file)
    (bad / "adapter_model.safetensors").write_bytes(pickle.dumps({"payload": Payload()}))
    with pytest.raises(UnsafeWeightsError, match="not a safetensors file.*re-export"):
        load_model("tiny-random", method="fusion", adapter=bad)


def test_a_checkpoint_pickle_with_code_is_refused_by_the_weights_only_load(tmp_path):
    UNPICKLED.clear()
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(2)}, "payload": Payload()}, path)
    with pytest.raises(UnsafeWeightsError, match="weights-only load refuses.*own resume data"):
        weights_only_load(str(path))
    assert UNPICKLED == []
    plain = tmp_path / "plain.pt"
    torch.save({"module": {"w": torch.ones(2)}, "step": 3}, plain)
    assert weights_only_load(str(plain))["step"] == 3


def test_the_checkpoint_engine_reads_weights_only_while_loading_and_is_restored_after():
    class Engine:
        def __init__(self):
            self.checkpoint_engine = type("TorchCheckpointEngine", (), {"load": lambda self, path: "unsafe"})()

    engine = Engine()
    with weights_only_loads(engine):
        assert engine.checkpoint_engine.load is weights_only_load
    assert engine.checkpoint_engine.load("x") == "unsafe"


@pytest.fixture
def hub_spies(tiny, tmp_path, monkeypatch):
    """``load_model("Qwen/Qwen2.5-Omni-3B")`` without a network: every hub loader records its keyword arguments and
    reads a local copy of the tiny thinker instead."""
    model, processor = tiny
    local = tmp_path / "hub-copy"
    model.save_pretrained(local)
    processor.save_pretrained(local)
    calls: dict[str, list[dict]] = {}

    def spy(owner, name):
        real = owner.from_pretrained

        def from_pretrained(_name_or_path, *args, **kwargs):
            calls.setdefault(name, []).append(dict(kwargs))
            return real(str(local), *args, **kwargs)

        monkeypatch.setattr(owner, "from_pretrained", from_pretrained)

    spy(loading.AutoConfig, "AutoConfig")
    spy(CompressedThinker, "CompressedThinker")
    spy(processor_module.AutoTokenizer, "AutoTokenizer")
    spy(processor_module.WhisperFeatureExtractor, "WhisperFeatureExtractor")
    monkeypatch.setattr(processor_files, "checkpoint_settings",
                        lambda *_: processor_files.CheckpointSettings("qwen2_5", processor.video, 25, 50, None))
    return calls


def test_load_model_with_a_hub_id_never_trusts_remote_code_by_default(hub_spies):
    model, processor = load_model("Qwen/Qwen2.5-Omni-3B")
    assert isinstance(model, CompressedThinker) and processor is not None
    assert set(hub_spies) == {"AutoConfig", "CompressedThinker", "AutoTokenizer", "WhisperFeatureExtractor"}
    for name, calls in hub_spies.items():
        for kwargs in calls:
            assert kwargs.get("trust_remote_code", False) is False, (name, kwargs)


def test_trust_remote_code_reaches_the_auto_classes_only_when_asked(hub_spies):
    load_model("Qwen/Qwen2.5-Omni-3B", trust_remote_code=True)
    assert all(k["trust_remote_code"] is True for k in hub_spies["AutoConfig"] + hub_spies["AutoTokenizer"])
    assert all("trust_remote_code" not in k for k in hub_spies["CompressedThinker"])  # our class: no remote code


UNSAFE = [
    (re.compile(r"torch\.load\((?![^)]*weights_only=True)"), "torch.load without weights_only=True"),
    (re.compile(r"\bpickle\.loads?\(|\bdill\.|\bjoblib\.load\(|cloudpickle"), "a pickle load"),
    (re.compile(r"allow_pickle\s*=\s*True"), "numpy allow_pickle=True"),
    (re.compile(r"trust_remote_code\s*=\s*True"), "trust_remote_code=True"),
    (re.compile(r"yaml\.load\((?![^)]*SafeLoader)"), "yaml.load (use yaml.safe_load)"),
]


def test_no_library_code_unpickles_or_trusts_remote_code():
    found = []
    for folder in ("fusion", "train", "eval", "scripts"):
        for path in sorted((REPO / folder).rglob("*.py")):  # one source file per iteration
            for number, line in enumerate(path.read_text().splitlines(), 1):
                for pattern, what in UNSAFE:
                    if pattern.search(line):
                        found.append(f"{path.relative_to(REPO)}:{number}: {what}")
    assert found == []
