"""The harness on ToyWorld-Long: generated on demand, accuracy per length bucket equal to a recount of the samples
file, the per-bucket plot, the evidence oracle on the 6 x 6 grid, and the split/settings checks."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from eval_helpers import tiny_config

from eval.config import DataConfig, EvalConfig
from eval.data import load_toyworld_long
from eval.report import write_outputs
from eval.runner import Runner
from fusion.config import load_config
from fusion.data.toyworld_long import main as generate_main
from fusion.errors import ConfigError
from train.config import RunConfig

GROUPS = "groups=[{name: category, key: category}, {name: length, key: length_bucket, plot: true}]"


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("long_eval")
    cfg = tiny_config(tmp, tmp / "unused", "data.benchmark=toyworld_long", f"data.toyworld_long.dir={tmp / 'world'}",
                      "data.toyworld_long.n_test=12", "retentions=[0.25]", "scoring.batch_size=4", GROUPS,
                      "methods=[{method: none}, {method: uniform}, {method: evidence_oracle, params: {budget: joint}}]")
    runner = Runner(cfg, log=lambda _: None)
    runner.run()
    results = runner.results()
    paths = write_outputs(results, runner.run_dir)
    return runner, results, paths


def test_accuracy_per_length_bucket_is_a_recount_of_the_samples(long_run):
    runner, results, _ = long_run
    buckets = results["groups"]["length"]
    assert set(buckets) <= {"08-10 s", "11-13 s", "14-16 s"} and len(buckets) >= 2
    assert buckets == sorted(buckets)
    samples = [json.loads(line) for line in (runner.run_dir / "samples.jsonl").read_text().splitlines()]
    for row in results["rows"]:
        hits = defaultdict(list)
        for s in samples:
            if s["hash"] == row["hash"]:
                hits[s["groups"]["length"]].append(bool(s["correct"]))
        per = row["accuracy"]["length"]["per"]
        assert per == {b: pytest.approx(100 * sum(v) / len(v)) for b, v in hits.items()}
        assert sum(len(v) for v in hits.values()) == 12


def test_the_length_plot_is_written_and_the_oracle_keeps_the_joint_budget(long_run):
    _, results, paths = long_run
    assert paths["png_length"].name == "accuracy_vs_length.png"
    assert paths["png_length"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    oracle = next(r for r in results["rows"] if r["name"].startswith("evidence_oracle"))
    assert oracle["n_failed"] == 0
    assert oracle["retention"]["total"]["token_weighted"] == pytest.approx(0.25, abs=0.01)


def test_the_long_splits_are_checked(tmp_path):
    generate_main(["--out", str(tmp_path), "--n-train", "0", "--n-val", "2", "--n-test", "0"])
    cfg = DataConfig(benchmark="toyworld_long")
    cfg.toyworld_long.dir, cfg.toyworld_long.split = str(tmp_path), "val"
    assert [s.id for s in load_toyworld_long(cfg)] == ["val-00000", "val-00001"]
    cfg.toyworld_long.max_seconds = 20
    with pytest.raises(ConfigError, match="max_seconds"):
        load_toyworld_long(cfg)
    cfg.toyworld_long.max_seconds = 16
    (tmp_path / "val.jsonl").unlink()
    with pytest.raises(ConfigError, match="toyworld_long --out"):
        load_toyworld_long(cfg)


def test_shipped_long_configs_load_and_agree():
    """configs/eval_toy_long.yaml and configs/fusion_long.yaml parse with every key known, on the toy_long backbone,
    and the harness scores the adapter the recipe writes."""
    harness = load_config(EvalConfig, "configs/eval_toy_long.yaml")
    recipe = load_config(RunConfig, "configs/fusion_long.yaml")
    assert harness.model.name == recipe.model.name == "toy_long"
    assert harness.data.benchmark == "toyworld_long"
    assert recipe.data.mcq_jsonl.path == f"{harness.data.toyworld_long.dir}/train.jsonl"
    adapters = [m.adapter for m in harness.methods if m.method == "fusion" and m.adapter]
    assert adapters == [f"{recipe.train.output_dir}/adapter"]
    assert [g.key for g in harness.groups if g.plot] == ["length_bucket"]
