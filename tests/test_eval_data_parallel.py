"""Data-parallel evaluation: the shard function (deterministic, disjoint, covering, balanced), the rank environment,
and the harness under ``torchrun --nproc_per_node 2`` (gloo, CPU) against one process on the embedded toy backbone:
the same accuracies and measured retention, every (setting, question) exactly once over the rank files, and resume
after a rank is killed (same world size) or its file is cut (rerun with one process)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import tiny_config, toy_split

from eval.config import EvalConfig
from eval.models import resolve_device
from eval.report import write_outputs
from eval.runner import Runner
from eval.samples import SampleLog, latest, sample_files, samples_name
from eval.sharding import Ranks, assign, costs_of
from fusion.config import load_config
from fusion.crash_points import ENV as CRASH_ENV
from fusion.data.mcq import MCQSample, load_jsonl
from fusion.errors import ConfigError
from fusion.jsonl import read_rows

REPO = Path(__file__).resolve().parents[1]
N_QUESTIONS = 5  # 3 on rank 0, 2 on rank 1 (equal clip lengths: balanced by count, ties to the lower rank)
SETTINGS = ("methods=[{method: none}, {method: uniform}]", "retentions=[0.25]")
ENVIRONMENT = {**{k: v for k, v in os.environ.items() if k not in (CRASH_ENV, "RANK", "WORLD_SIZE", "LOCAL_RANK")},
               "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


# ------------------------------------------------------------------------------------------------ the shard function
def _loads(ranks: np.ndarray, costs: np.ndarray, world: int) -> np.ndarray:
    return np.bincount(ranks, weights=costs, minlength=world)


@pytest.mark.parametrize("costs, world", [
    ([4.0] * 5, 2),
    ([30, 5, 5, 5, 5, 5, 5, 60, 1, 1], 3),
    (list(np.random.default_rng(0).uniform(1, 600, 97)), 8),
    (list(np.random.default_rng(1).integers(1, 5, 40).astype(float)), 4),
    ([0.0, 0.0, 0.0, 0.0], 3),
])
def test_assign_is_deterministic_disjoint_covering_and_balanced(costs, world):
    costs = np.asarray(costs, dtype=np.float64)
    ranks = assign(costs, world)
    assert np.array_equal(ranks, assign(costs.copy(), world))  # a pure function of (costs, world size)
    assert ranks.shape == costs.shape and ((ranks >= 0) & (ranks < world)).all()  # each question on one rank
    loads = _loads(ranks, costs, world)
    assert loads.max() - loads.min() <= costs.max() + 1e-9
    counts = np.bincount(ranks, minlength=world)
    if np.ptp(costs) == 0:  # equal lengths: equal counts (within one)
        assert counts.max() - counts.min() <= 1


def test_assign_puts_the_long_clips_first_on_separate_ranks():
    ranks = assign([10, 100, 10, 100, 10, 10], 2)
    assert ranks[1] != ranks[3]  # the two longest split
    assert ranks.tolist() == [0, 0, 1, 1, 0, 1]  # 100 -> r0, 100 -> r1, then the 10s alternate (ties: lower rank)


def test_more_ranks_than_questions_leaves_empty_shards_and_bad_input_raises():
    assert assign([3.0, 1.0], 4).tolist() == [0, 1]
    assert assign([], 3).tolist() == []
    with pytest.raises(ConfigError, match="at least one rank"):
        assign([1.0], 0)
    with pytest.raises(ConfigError, match="finite, non-negative"):
        assign([1.0, float("nan")], 2)


def _sample(i: int, video: str = "nowhere.mp4", **extra) -> MCQSample:
    return MCQSample(id=f"q{i}", video=video, question="?", options=["a", "b"], answer="A", category="c",
                     extra=extra)


def test_costs_come_from_metadata_then_the_media_probe_then_the_median(tmp_path):
    clip = load_jsonl(toy_split(tmp_path / "toy", n=1) / "test.jsonl")[0].video
    samples = [_sample(0, seconds=4), _sample(1, video_duration="30.5", duration="<1min"),
               _sample(2, video=clip), _sample(3, duration="<1min")]  # probed 4 s clip; unknown
    costs = costs_of(samples)
    assert costs[:2].tolist() == [4.0, 30.5] and costs[2] == pytest.approx(4.0, abs=0.2)
    assert costs[3] == pytest.approx(np.median(costs[:3]))
    assert costs_of([_sample(0), _sample(1)]).tolist() == [1.0, 1.0]  # nothing known: equal costs


def test_shard_keeps_file_order_and_the_shards_partition_the_questions():
    samples = [_sample(i, seconds=s) for i, s in enumerate([5, 50, 5, 20, 5, 5, 40])]
    shards = [Ranks(r, 3).shard(samples) for r in range(3)]
    ids = [[s.id for s in shard] for shard in shards]
    assert sorted(sum(ids, [])) == sorted(s.id for s in samples)
    assert all(shard == sorted(shard, key=lambda x: int(x[1:])) for shard in ids)
    assert Ranks().shard(samples) == samples


# ------------------------------------------------------------------------------------------- the rank environment
def test_ranks_from_env_reads_the_launcher_variables_and_names_the_files():
    assert Ranks.from_env({}) == Ranks(0, 1, 0) and Ranks().tag == "" and samples_name("") == "samples.jsonl"
    ranks = Ranks.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (ranks.rank, ranks.world_size, ranks.local_rank, ranks.distributed) == (1, 2, 1, True)
    assert samples_name(ranks.tag) == "samples.rank01-of-02.jsonl"
    assert Ranks.from_env({"RANK": "3", "WORLD_SIZE": "4"}).local_rank == 3  # one node: LOCAL_RANK = RANK
    assert Ranks(7, 120).tag == "rank007-of-120"
    with pytest.raises(ConfigError, match="0 <= RANK < WORLD_SIZE"):
        Ranks.from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="not an integer"):
        Ranks.from_env({"RANK": "one", "WORLD_SIZE": "2"})


def test_each_rank_gets_cuda_local_rank_and_one_process_keeps_todays_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a 2-GPU node, as resolve_device sees it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")  # one process: as before
    assert resolve_device("auto", 1) == resolve_device("cuda", 1) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", 1) == torch.device("cuda", 0)  # an explicit index is kept
    assert resolve_device("cpu", 1) == torch.device("cpu")
    with pytest.raises(ConfigError, match="LOCAL_RANK=2 but only 2 CUDA device"):
        resolve_device("auto", 2)


def test_a_world_without_a_rendezvous_address_raises(monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node"):
        Ranks(0, 2).init()


def test_every_samples_file_counts_as_done_and_a_scored_row_beats_a_failed_one(tmp_path):
    def row(i, error=None, rank=0):
        return {"hash": "h", "id": f"q{i}", "error": error, "rank": rank}

    for name, rows in (("samples.jsonl", [row(0, "E: x")]),
                       ("samples.rank00-of-02.jsonl", [row(0), row(1, "E: y")]),
                       ("samples.rank01-of-02.jsonl", [row(2, rank=1)]),
                       ("samples.rank02-of-10.jsonl", [row(1, "E: z")]),
                       ("samples.notes.jsonl", [row(9)])):  # not a samples file of a rank
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [p.name for p in sample_files(tmp_path)] == ["samples.jsonl", "samples.rank00-of-02.jsonl",
                                                        "samples.rank01-of-02.jsonl", "samples.rank02-of-10.jsonl"]
    store = SampleLog(tmp_path / "samples.rank00-of-03.jsonl", log=lambda _: None)  # a new world size
    assert store.done() == {("h", "q0"), ("h", "q1"), ("h", "q2")}
    assert store.done(retry_failed=True) == {("h", "q0"), ("h", "q2")}  # q1 failed everywhere: redone
    rows = latest(store.rows)
    assert rows[("h", "q0")]["error"] is None and rows[("h", "q1")]["error"] == "E: z"


def test_a_rank_without_questions_says_so_and_writes_nothing(tmp_path, monkeypatch):
    toy = toy_split(tmp_path / "toy", n=2)
    monkeypatch.setattr(Ranks, "barrier", lambda self: None)  # no process group in this test
    messages: list[str] = []
    runner = Runner(tiny_config(tmp_path, toy, *SETTINGS, "data.toyworld.n_test=2"), log=messages.append,
                    ranks=Ranks(2, 3))
    runner.run()
    assert runner.shard == [] and len(runner.samples) == 2 and runner.calls == 0
    assert any(m.startswith("[rank02-of-03] no questions for this rank: 3 ranks for 2 question(s)") for m in messages)
    assert not (runner.run_dir / "samples.rank02-of-03.jsonl").exists()
    assert runner.gather() is None  # only rank 0 aggregates


# ------------------------------------------------------------------------------------------ torchrun vs one process
def _args(toy: Path, out: Path) -> list[str]:
    return ["model.name=toy", "model.device=cpu", "model.threads=1", f"data.toyworld.dir={toy}",
            f"data.toyworld.n_test={N_QUESTIONS}", f"run.output_dir={out}", "run.progress=false", "scoring.warmup=0",
            "scoring.batch_size=1", *SETTINGS]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], crash: str | None = None) -> subprocess.CompletedProcess:
    env = dict(ENVIRONMENT, **({CRASH_ENV: crash} if crash else {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "eval/run.py", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300)


def _evaluate(args: list[str]) -> tuple[Runner, dict]:
    runner = Runner(load_config(EvalConfig, None, args), log=lambda _: None)
    runner.run()
    results = runner.gather()
    write_outputs(results, runner.run_dir)
    return runner, results


def _rows(run_dir: Path) -> list[dict]:
    return [r for p in sample_files(run_dir) for r in read_rows(p, lambda _: None, repair=False)]


def _summary(results: dict) -> list[tuple]:
    return [(r["key"], r["n_samples"], r["n_failed"], r["accuracy"], r["retention"], r["tokens"])
            for r in results["rows"]]


def _once(run_dir: Path) -> list[tuple]:
    """(key, id, prediction, correct) of every row of every samples file, asserting no key is written twice."""
    keys = [(r["key"], r["id"]) for r in _rows(run_dir)]
    assert len(keys) == len(set(keys)) == 2 * N_QUESTIONS, sorted(keys)
    return sorted((r["key"], r["id"], r["prediction"], r["correct"]) for r in _rows(run_dir))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process; then torchrun x2 killed at rank 0's 5th row, and the torchrun x2 rerun that resumes it."""
    root = tmp_path_factory.mktemp("dp")
    toy = toy_split(root / "toy", n=N_QUESTIONS)
    threads = torch.get_num_threads()
    _, single = _evaluate(_args(toy, root / "single"))  # model.threads=1 like the ranks: the same numerics
    torch.set_num_threads(threads)
    killed = _torchrun(_args(toy, root / "parallel"), crash="eval-row:5")  # rank 0 has 6 rows, rank 1 only 4
    resumed = _torchrun(_args(toy, root / "parallel"))
    return root, toy, single, killed, resumed


def test_torchrun_two_ranks_give_the_one_process_results_after_a_rank_is_killed(runs):
    root, _, single, killed, resumed = runs
    out = root / "parallel"
    assert killed.returncode != 0 and f"[{CRASH_ENV}] killing process" in killed.stdout + killed.stderr
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert [p.name for p in sample_files(out)] == ["samples.rank00-of-02.jsonl", "samples.rank01-of-02.jsonl"]
    by_rank = {p.name: [json.loads(x) for x in p.read_text().splitlines()] for p in sample_files(out)}
    assert [len(v) for v in by_rank.values()] == [6, 4]  # rank 0 redid only its 6th row
    assert {r["rank"] for r in by_rank["samples.rank01-of-02.jsonl"]} == {1}
    doc = json.loads((out / "results.json").read_text())
    assert doc["run"]["world_size"] == 2 and "per-rank" in doc["run"]["latency"]
    assert _summary(doc) == _summary(json.loads(json.dumps(single, default=str)))  # accuracy, retention, tokens
    assert _once(out) == _once(root / "single")  # every (setting, question) once, with the same prediction
    for row in doc["rows"]:
        assert {k: v["n_samples"] for k, v in row["per_rank"].items()} == {"rank00-of-02": 3, "rank01-of-02": 2}
    assert "per-rank measurements" in (out / "results.md").read_text()
    assert "per_rank" not in single["rows"][0] and single["run"]["world_size"] == 1


def test_a_rerun_with_one_process_redoes_only_a_cut_rank_files_rows(runs):
    root, toy, single, *_ = runs
    out = root / "cut"
    shutil.copytree(root / "parallel", out)
    rank1 = out / "samples.rank01-of-02.jsonl"
    lines = rank1.read_text().splitlines()
    rank1.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])  # 2 rows lost, the 3rd torn mid-write
    runner, results = _evaluate(_args(toy, out))
    assert runner.calls == 2  # the torn row and the lost one, nothing else
    assert len((out / "samples.jsonl").read_text().splitlines()) == 2
    assert _once(out) == _once(root / "single")
    assert _summary(results) == _summary(single)
