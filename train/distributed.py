"""DeepSpeed plumbing: process-group environment, the DeepSpeed config (concrete values only), the engine."""

from __future__ import annotations

import importlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import torch

from fusion.errors import ConfigError
from fusion.model.configs import REPO_ROOT
from train.batch_size import plan_of


def single_process_env() -> None:
    """Set RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT when absent (plain ``python train/run.py``);
    the DeepSpeed launcher sets them itself. A free port is picked so parallel runs on one machine coexist."""
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def resolve_path(path: str, config_file: str | Path | None) -> Path:
    """A relative path is looked up in the working directory, then beside the YAML, then in the repository."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    roots = [Path.cwd()] + ([Path(config_file).resolve().parent] if config_file else []) + [REPO_ROOT]
    for root in roots:
        if (root / candidate).exists():
            return root / candidate
    return candidate


def _find_auto(value: Any, key: str) -> str | None:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return key
    if isinstance(value, dict):
        for k, v in value.items():
            found = _find_auto(v, f"{key}.{k}")
            if found:
                return found
    return None


def deepspeed_config(cfg, world_size: int, bf16: bool, config_file: str | Path | None = None) -> dict[str, Any]:
    """The DeepSpeed config dict: the YAML's ``deepspeed`` (a JSON path or inline mapping) plus the values the
    recipe owns (micro batch, accumulation, clipping, bf16), which the JSON must not contradict. The batch sizes are
    :func:`train.batch_size.plan_of` on ``world_size`` ranks.

    Raises :class:`ConfigError` for ``"auto"`` values (only the HF Trainer resolves them), an ``optimizer`` or
    ``scheduler`` section (the recipe passes a client torch AdamW and its schedule), or a conflicting value.
    """
    source = cfg.deepspeed
    if isinstance(source, str):
        path = resolve_path(source, config_file)
        if not path.is_file():
            raise ConfigError(f"deepspeed: {source!r} is not a file; point it at configs/deepspeed/zero2.json or "
                              "give the DeepSpeed config inline")
        try:
            base = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"deepspeed: {path} is not valid JSON ({e})") from None
    else:
        base = json.loads(json.dumps(source))
    auto = _find_auto(base, "deepspeed")
    if auto:
        raise ConfigError(f"{auto}: 'auto' is only resolved by the HF Trainer; write a concrete value (batch sizes, "
                          "clipping and bf16 come from train.* / optim.* and may be left out)")
    for section in ("optimizer", "scheduler"):
        if section in base:
            raise ConfigError(f"deepspeed.{section}: remove it; the recipe passes a torch AdamW (no JIT op) and its "
                              "schedule from optim.*")
    plan = plan_of(cfg.train, world_size)
    accum_origin = ("train.global_batch_size / (train.micro_batch_size * world size)"
                    if cfg.train.global_batch_size is not None else "train.grad_accum")
    owned = {
        "train_micro_batch_size_per_gpu": (plan.micro, "train.micro_batch_size"),
        "gradient_accumulation_steps": (plan.accum, accum_origin),
        "gradient_clipping": (cfg.optim.clip, "optim.clip"),
        "train_batch_size": (plan.global_size, "train.global_batch_size" if cfg.train.global_batch_size is not None
                             else "train.micro_batch_size * train.grad_accum * world size"),
    }
    for key, (value, origin) in owned.items():
        if key in base and base[key] != value:
            raise ConfigError(f"deepspeed.{key}={base[key]!r} contradicts {origin}={value!r}; set it in the YAML "
                              "(train/optim) and leave it out of the DeepSpeed config")
        base[key] = value
    if "bf16" in base and bool(base["bf16"].get("enabled")) != bf16:
        raise ConfigError(f"deepspeed.bf16.enabled contradicts train.bf16 (resolved to {bf16}); set train.bf16")
    base["bf16"] = {**base.get("bf16", {}), "enabled": bf16}
    base.setdefault("steps_per_print", 10 ** 9)  # the recipe prints its own log lines
    return base


def initialize(model, optimizer, scheduler, ds_config: dict, build_shm_op: bool):
    """``deepspeed.initialize`` with a client optimizer/scheduler; gloo on CPU, NCCL on GPU."""
    if not build_shm_op:  # the CPU shared-memory op serves DeepSpeed inference only; skip its JIT build
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return engine


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
