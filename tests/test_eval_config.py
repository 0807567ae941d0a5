"""Harness config: the shipped YAMLs parse, errors name the dotted key, the matrix expands as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.config import EvalConfig
from eval.matrix import expand
from fusion.config import load_config
from fusion.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["eval_toy", "eval_worldsense_3b", "eval_worldsense_7b", "eval_worldsense_seed_3b",
                                  "eval_worldsense_qwen3_omni"])
def test_shipped_configs_parse_and_start_with_a_command(name):
    path = CONFIGS / f"{name}.yaml"
    text = path.read_text()
    assert text.startswith("#") and f"eval/run.py --config configs/{name}.yaml" in text.split("\n\n")[0]
    cfg = load_config(EvalConfig, path)
    assert cfg.methods and cfg.groups


def test_worldsense_configs_hold_the_published_setup():
    for size in ("3b", "7b"):
        cfg = load_config(EvalConfig, CONFIGS / f"eval_worldsense_{size}.yaml")
        assert cfg.model.name == f"Qwen/Qwen2.5-Omni-{size.upper()}" and cfg.model.dtype == "bfloat16"
        assert (cfg.data.prompt, cfg.scoring.mode, cfg.data.max_frames) == ("worldsense", "generate", 128)
        assert [g.name for g in cfg.groups] == ["domain", "task_type"] and len(cfg.groups[0].order) == 8
    seed = load_config(EvalConfig, CONFIGS / "eval_worldsense_seed_3b.yaml")
    rows = expand(seed)
    assert [r.name for r in rows] == ["uncompressed", "keyframe (video only)", "DyCoke (V&A)"]
    assert rows[1].method == "keyframe" and rows[1].retention == 0.5
    k = rows[2].params["k"]
    assert (1 + 3 * (1 - k)) / 4 == pytest.approx(0.5) and rows[2].params["modalities"] == "audio_video"
    assert seed.data.max_frames == 128
    header = (CONFIGS / "eval_worldsense_seed_3b.yaml").read_text()
    for published in ("| 51.5 ", "| 46.4 |", "| 43.6 |", "| 44.0 |"):
        assert published in header.replace("  ", " ")


def test_qwen3_worldsense_config_holds_only_methods_that_run_on_qwen3():
    """Same setup as the 7B config minus the in-LLM methods; every setting runs on the tiny Qwen3 thinker."""
    import torch

    from fusion import METHODS, load_model
    from fusion.testing_qwen3 import random_qwen3_inputs

    cfg = load_config(EvalConfig, CONFIGS / "eval_worldsense_qwen3_omni.yaml")
    seven = load_config(EvalConfig, CONFIGS / "eval_worldsense_7b.yaml")
    assert cfg.model.name == "Qwen/Qwen3-Omni-30B-A3B-Instruct" and cfg.model.dtype == "bfloat16"
    assert (cfg.data.prompt, cfg.scoring.mode, cfg.data.max_frames) == ("worldsense", "generate", 128)
    assert cfg.retentions == seven.retentions and [g.key for g in cfg.groups] == [g.key for g in seven.groups]
    names = [m.method for m in cfg.methods]
    assert set(names) == {m.method for m in seven.methods} - {"fastv"}
    header = (CONFIGS / "eval_worldsense_qwen3_omni.yaml").read_text().split("\n\n")[0]
    assert "FastV" in header and "stage2" in header and "UnsupportedOptionError" in header
    model, _ = load_model("tiny-random-qwen3")
    inputs = random_qwen3_inputs(model, seconds=4)
    for setting in expand(cfg):
        compressor = METHODS.build(setting.method, **setting.build_kwargs())
        hook = compressor.llm_hook() if hasattr(compressor, "llm_hook") else None
        assert hook is None, setting.key  # pre-LLM only: an in-LLM hook raises UnsupportedOptionError on Qwen3
        model.set_compressor(compressor)
        with torch.no_grad():
            out = model(**inputs)
        stats = model.last_stats
        assert bool(torch.isfinite(out.logits).all()), setting.key
        dropped = int(stats.total_after[0]) < int(stats.total_before[0])
        assert dropped == (setting.method != "none"), setting.key


@pytest.mark.parametrize("override, key", [
    ("scoring.mod=logits", "scoring.mod"),
    ("data.toyworld.nn=3", "data.toyworld.nn"),
    ("methods=[{method: uniform, paramz: {}}]", "methods[0].paramz"),
    ("methods=[{method: nope}]", "methods[0].method"),
    ("methods=[{method: uniform, adapter: x}]", "methods[0].adapter"),
    ("methods=[{method: uniform, retentions: [1.5]}]", "methods[0].retentions"),
    ("retentions=[0]", "retentions"),
    ("scoring.batch_size=0", "scoring.batch_size"),
    ("data.benchmark=worldsense", "data.worldsense.root"),
    ("data.benchmark=imagenet", "data.benchmark"),
])
def test_bad_keys_and_values_name_the_dotted_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(EvalConfig, None, [override])
    assert str(err.value).startswith(f"{key}:")


def test_matrix_expansion_names_budgets_and_settings():
    cfg = load_config(EvalConfig, None, [
        "retentions=[0.25, 0.1]",
        "methods=[{method: none}, {method: uniform}, {method: pair, params: {video: keyframe, audio: audio_attn}},"
        " {method: omnizip, name: OmniZip, settings: [{rho_audio: 0.3, rho_video: 0.6, label: '45%'}]},"
        " {method: fastv, params: {k: 1}, retentions: [0.5]}]"])
    rows = expand(cfg)
    assert [r.key for r in rows] == ["none@100%", "uniform@25%", "uniform@10%", "keyframe+audio_attn@25%",
                                     "keyframe+audio_attn@10%", "OmniZip@45%", "fastv@50%"]
    omnizip = rows[5]
    assert omnizip.retention is None and omnizip.build_kwargs() == {"rho_audio": 0.3, "rho_video": 0.6}
    assert rows[6].build_kwargs() == {"k": 1, "retention": 0.5}
    assert len({r.hash for r in rows}) == len(rows)


def test_hash_changes_with_what_changes_predictions_only():
    def hashes(*overrides):
        cfg = load_config(EvalConfig, None, ["methods=[{method: uniform}]", "retentions=[0.25]", *overrides])
        return expand(cfg)[0].hash

    base = hashes()
    assert hashes("run.output_dir=elsewhere", "run.progress=false", "scoring.warmup=3") == base
    for change in ("methods=[{method: uniform, params: {budget: joint}}]", "retentions=[0.3]", "model.name=tiny-random",
                   "data.max_frames=64", "scoring.mode=generate"):
        assert hashes(change) != base, change


def test_duplicate_rows_and_missing_adapter_are_errors(tmp_path):
    cfg = load_config(EvalConfig, None, ["methods=[{method: uniform}, {method: uniform}]"])
    with pytest.raises(ConfigError, match="distinct 'name'"):
        expand(cfg)
    cfg = load_config(EvalConfig, None, [f"methods=[{{method: fusion, adapter: {tmp_path / 'none'}}}]"])
    with pytest.raises(ConfigError, match="train the block first"):
        expand(cfg)
