"""The lmms-eval plugin: a tiny LOCAL task (YAML + JSONL of MCQs with small mp4s) through lmms-eval's evaluator with
the tiny random model: the metric comes back, token counts after compression are logged, failures are counted; and
lmms-eval's own data-parallel mode (torchrun x2 on CPU, gloo) gives the one-process responses, each document once."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lmms_eval", reason="lmms-eval is installed with `pip install --no-deps lmms-eval` (make test)")

from eval_helpers import toy_split  # noqa: E402

from fusion.data.mcq import load_jsonl  # noqa: E402

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lmms_task"
REPO = Path(__file__).resolve().parents[1]
TASK_YAML = """task: avf_toy_mcq
dataset_path: json
dataset_kwargs:
  data_files: {{test: {data}}}
  cache_dir: {cache}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 3
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: avf_score
    aggregation: !function utils.aggregate
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A local task: 3 ToyWorld questions + one whose video is missing (id ``missing``)."""
    tmp = tmp_path_factory.mktemp("lmms")
    toy = toy_split(tmp / "toy", n=3)
    rows = [{"id": s.id, "video": s.video, "question": s.question, "options": s.options, "answer": s.answer}
            for s in load_jsonl(toy / "test.jsonl")]
    rows.append({**rows[0], "id": "missing", "video": str(tmp / "nowhere.mp4")})
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = tmp / "task"
    task.mkdir()
    shutil.copy(FIXTURE / "utils.py", task / "utils.py")
    (task / "avf_toy_mcq.yaml").write_text(TASK_YAML.format(data=data, cache=tmp / "hf_cache"))
    return task


@pytest.fixture(scope="module")
def evaluated(task_dir):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from eval.lmms_model import AVFusionOmni

    model = AVFusionOmni(pretrained="tiny-random", method="pair", retention=0.25, device="cpu",
                         video="keyframe", audio='{"method": "audio_attn", "retention": 0.5}')
    results = simple_evaluate(model=model, tasks=["avf_toy_mcq"], task_manager=TaskManager(include_path=str(task_dir)),
                              log_samples=True, verbosity="WARNING")
    return model, results


def test_simple_evaluate_returns_the_metric_and_token_counts(evaluated):
    from eval.lmms_model import FAILED_PREFIX, rescore

    model, results = evaluated
    metric = results["results"]["avf_toy_mcq"]["avf_score,none"]
    samples = results["samples"]["avf_toy_mcq"]
    assert len(samples) == 4 and 0.0 <= metric <= 100.0
    good = [s for s in samples if s["doc"]["id"] != "missing"]
    stats = {(s["doc_id"]): s for s in model.stats}
    for sample in good:
        counts = sample["token_counts"][0]
        kept = stats[sample["doc_id"]]
        assert counts["input_tokens"] == kept["sequence_after"] < kept["sequence_before"]
        assert 1 <= counts["output_tokens"] <= 3
        # the pair's sides: keyframe at 25 % of the video, audio_attn at 50 % of the audio
        assert kept["audio_after"] == -(-kept["audio_before"] // 2)
    missing = next(s for s in samples if s["doc"]["id"] == "missing")
    assert missing["token_counts"] == [None] and missing["resps"][0][0].startswith(FAILED_PREFIX)
    assert len(model.failures) == 1 and "MediaNotFoundError" in model.failures[0]["error"]
    scored = rescore(samples, "avf_score")
    assert (scored["n"], scored["failed"], scored["scored"]) == (4, 1, 3)
    assert scored["accuracy"] == pytest.approx(100 * sum(s["avf_score"]["score"] for s in good) / 3)


def test_manifest_registers_the_model_class():
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    from eval.lmms_model import AVFusionOmni
    from eval.lmms_plugin import MODEL_ID, manifests

    registry = ModelRegistryV2()
    for manifest in manifests():
        registry.register_manifest(manifest)
    assert registry.get_model_class(MODEL_ID) is AVFusionOmni
    assert registry.get_model_class("qwen2_5_omni_avc") is AVFusionOmni
    assert registry.get_model_class("qwen3_omni_avc") is AVFusionOmni


def test_model_args_string_builds_the_method_and_on_error_raise(task_dir):
    from eval.lmms_model import AVFusionOmni

    model = AVFusionOmni.create_from_arg_string(
        "pretrained=tiny-random,method=omnizip,rho_audio=0.3,rho_video=0.6,device=cpu,on_error=raise",
        {"batch_size": 1, "device": None})
    compressor = model.model.compressor
    assert (compressor.name, compressor.rho_audio, compressor.rho_video) == ("omnizip", 0.3, 0.6)
    with pytest.raises(Exception, match="MediaNotFound|does not exist"):
        model._inputs("q", [str(task_dir / "nowhere.mp4")])


def test_tiny_qwen3_through_simple_evaluate(task_dir):
    """pretrained=tiny-random-qwen3: the Qwen3 thinker, requests built in Qwen3's layout (13 audio tokens/s), the
    budget kept per modality, the missing clip counted as a failure."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from eval.lmms_model import AVFusionOmni, rescore
    from fusion.model.qwen3_thinker import CompressedQwen3Thinker

    model = AVFusionOmni(pretrained="tiny-random-qwen3", method="uniform", retention=0.5, device="cpu")
    assert isinstance(model.model, CompressedQwen3Thinker) and model.family == "qwen3"
    results = simple_evaluate(model=model, tasks=["avf_toy_mcq"], task_manager=TaskManager(include_path=str(task_dir)),
                              log_samples=True, verbosity="WARNING")
    samples = results["samples"]["avf_toy_mcq"]
    assert len(model.stats) == 3 and len(model.failures) == 1
    for kept in model.stats:  # 4-s clips: 4 grids x 4 tokens (64 px, 2 fps) and 4 x 13 audio tokens
        assert (kept["video_before"], kept["audio_before"]) == (16, 52)
        assert (kept["video_after"], kept["audio_after"]) == (8, 26)
    assert rescore(samples, "avf_score")["scored"] == 3


def test_a_local_qwen3_checkpoint_directory_selects_qwen3(tmp_path, task_dir):
    """A directory as a checkpoint is saved (thinker config + weights, tokenizer, feature extractor; no
    omni_processor.json): its config's model_type picks the Qwen3 thinker and layout; FastV is refused at once."""
    import numpy as np
    import torch

    from eval.lmms_model import AVFusionOmni
    from fusion import load_model
    from fusion.errors import UnsupportedOptionError
    from fusion.model.qwen3_thinker import CompressedQwen3Thinker

    tiny, processor = load_model("tiny-random-qwen3")
    tiny.save_pretrained(tmp_path)
    processor.tokenizer.save_pretrained(tmp_path)
    processor.feature_extractor.save_pretrained(tmp_path)
    model = AVFusionOmni(pretrained=str(tmp_path), method="audio_attn", retention=0.5, device="cpu")
    assert isinstance(model.model, CompressedQwen3Thinker) and model.family == "qwen3"
    assert (model.processor.video.factor, model.processor.position_id_per_seconds) == (32, 13.0)
    for name, value in tiny.state_dict().items():
        assert torch.equal(model.model.state_dict()[name], value), name
    video = load_jsonl(task_dir.parent / "toy" / "test.jsonl")[0].video
    inputs = model._inputs("how many beeps ?", [video])
    with torch.no_grad():
        model.model(**inputs)
    kept = model.model.last_stats.rows()[0]
    assert kept["audio_before"] == 52 and kept["audio_after"] == 26 and kept["video_after"] == kept["video_before"]
    assert np.isclose(inputs["video_second_per_grid"].item(), 1.0)
    with pytest.raises(UnsupportedOptionError, match="Qwen3-Omni"):
        AVFusionOmni(pretrained=str(tmp_path), method="fastv", retention=0.5, device="cpu")


def test_import_eval_does_not_import_lmms_eval():
    code = "import sys, eval, eval.run, eval.runner, eval.lmms_plugin; print('lmms_eval' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


def test_pyproject_declares_the_entry_point():
    import importlib

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["lmms_eval.models"]["av_fusion"]
    module, attr = target.split(":")
    (manifest,) = getattr(importlib.import_module(module), attr)()
    assert manifest.model_id == "av_fusion" and manifest.simple_class_path == "eval.lmms_model.AVFusionOmni"
    assert "lmms" in project["optional-dependencies"]


def test_the_model_reports_the_launchers_rank_and_world_size(monkeypatch):
    from eval.lmms_model import AVFusionOmni

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    model = AVFusionOmni(pretrained="tiny-random", device="auto")  # no CUDA here: auto is cpu on every rank
    assert (model.rank, model.world_size, model.device) == (1, 2, torch.device("cpu"))
    assert next(model.model.parameters()).device == torch.device("cpu")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(Exception, match="0 <= RANK < WORLD_SIZE"):
        AVFusionOmni(pretrained="tiny-random", device="cpu")


MODEL_ARGS = "pretrained=tiny-random,method=uniform,retention=0.25,device=cpu"


def _responses(samples: list[dict]) -> list[tuple]:
    """(doc id, filtered response, score) per logged sample, by doc id (the saved file flattens ``[text]``)."""
    def text(resps):
        return resps[0] if isinstance(resps, list) else resps

    return sorted((s["doc_id"], text(s["filtered_resps"]), s["avf_score"]["score"]) for s in samples)


def test_lmms_eval_data_parallel_on_two_cpu_processes_matches_one_process(task_dir, tmp_path):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from eval.lmms_model import FAILED_PREFIX, AVFusionOmni

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "lmms_eval", "--model", "av_fusion", "--model_args", MODEL_ARGS,
           "--tasks", "avf_toy_mcq", "--include_path", str(task_dir), "--batch_size", "1", "--log_samples",
           "--output_path", str(tmp_path / "out"), "--verbosity", "WARNING"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = (tmp_path / "out").rglob("*samples_avf_toy_mcq.jsonl")
    parallel = [json.loads(line) for line in path.read_text().splitlines()]
    # every document once, gathered on rank 0 (a rank that ignored the world size would log each one twice)
    assert sorted(s["doc_id"] for s in parallel) == [0, 1, 2, 3]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' numerics
    try:
        model = AVFusionOmni.create_from_arg_string(MODEL_ARGS)
        single = simple_evaluate(model=model, tasks=["avf_toy_mcq"], log_samples=True, verbosity="WARNING",
                                 task_manager=TaskManager(include_path=str(task_dir)))
    finally:
        torch.set_num_threads(threads)
    one = single["samples"]["avf_toy_mcq"]
    assert _responses(parallel) == _responses(one)
    assert sum(FAILED_PREFIX in str(s["filtered_resps"]) for s in parallel) == 1  # the missing video, once
