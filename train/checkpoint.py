"""Checkpoints every N steps, without the frozen backbone, written atomically.

Layout under ``run_dir/checkpoints/``: ``step-000004/`` (DeepSpeed's files for the trainable weights, the
optimizer and LR-scheduler states, our ``trainer_state.json``) and ``latest`` (the tag of the newest complete
checkpoint). A save goes to ``.tmp-step-000004/`` first; only when every rank has written does rank 0 rename it
and then replace ``latest`` (write-then-rename), so a run killed mid-save leaves the previous checkpoint usable.
A run killed after the rename but before ``latest`` leaves a complete ``step-*`` that ``latest`` does not name yet:
the resumed run starts from the older one and, reaching that step again, swaps its own save in.

Trust: DeepSpeed writes its checkpoint files with ``torch.save`` (pickles). They are this run's own resume data,
read back only by ``train.resume=true`` from the same ``output_dir``; never resume from a checkpoint directory you
did not write. Even so they are read with ``torch.load(weights_only=True)`` (:func:`weights_only_loads`), which
unpickles only tensors, plain containers and the few DeepSpeed classes listed in :func:`allowed_globals`; anything
else is refused with :class:`~fusion.errors.UnsafeWeightsError` before it is built. The shareable result of a run
is ``adapter/`` (safetensors + JSON).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from fusion.crash_points import crash_point
from fusion.errors import ConfigError, UnsafeWeightsError

LATEST = "latest"
STATE = "trainer_state.json"


def tag_for(step: int) -> str:
    return f"step-{step:06d}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def rng_state() -> dict:
    """CPU (and CUDA) RNG states, to continue random streams exactly after a resume."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(engine, run_dir: Path, step: int, state: dict, keep: int, is_main: bool,
                    barrier: Callable[[], None]) -> Path:
    """Write checkpoint ``step`` (all ranks call this); keep the ``keep`` newest. Returns its directory."""
    root = Path(run_dir) / "checkpoints"
    tag = tag_for(step)
    tmp_tag = f".tmp-{tag}"
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root / tmp_tag, ignore_errors=True)  # leftovers of a killed save
    barrier()
    engine.save_checkpoint(str(root), tag=tmp_tag, client_state={"step": step, "rng": rng_state()},
                           save_latest=False, exclude_frozen_parameters=True)
    barrier()
    final = root / tag
    if is_main:
        _write_atomic(root / tmp_tag / STATE, json.dumps({"step": step, **state}, indent=2))
        crash_point("checkpoint-save")
        if final.exists():  # the same step saved again after a resume: swap, never leave a gap
            shutil.rmtree(root / f".old-{tag}", ignore_errors=True)
            final.rename(root / f".old-{tag}")
        (root / tmp_tag).rename(final)
        crash_point("checkpoint-latest")
        _write_atomic(root / LATEST, tag)
        shutil.rmtree(root / f".old-{tag}", ignore_errors=True)
        for old in stale(root, tag, keep):
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def stale(root: Path, tag: str, keep: int) -> list[Path]:
    """The ``step-*`` directories to delete once ``tag`` is ``latest``: all but the ``keep`` newest up to ``tag``,
    and any of a later step (left by a run killed before its ``latest`` update; this run recomputes them)."""
    saved = sorted(p for p in root.glob("step-*") if p.is_dir())
    before = [p for p in saved if p.name <= tag]
    return before[:-keep] + [p for p in saved if p.name > tag]


def latest_checkpoint(run_dir: Path) -> tuple[str, int] | None:
    """``(tag, step)`` of the newest complete checkpoint, or None."""
    root = Path(run_dir) / "checkpoints"
    if not (root / LATEST).is_file():
        return None
    tag = (root / LATEST).read_text().strip()
    state_file = root / tag / STATE
    if not state_file.is_file():
        raise ConfigError(f"{root / LATEST} names {tag!r} but {state_file} is missing; the checkpoint directory "
                          "was edited by hand. Point 'latest' at a complete step-* directory")
    return tag, int(json.loads(state_file.read_text())["step"])


def allowed_globals() -> list:
    """The classes besides tensors and plain containers that a ZeRO-1/2 checkpoint holds: DeepSpeed's loss scalers,
    its ZeRO stage enum and the fragment addresses of the flat optimizer partitions."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def weights_only_load(path: str, map_location=None):
    """``torch.load(path, weights_only=True)`` allowing :func:`allowed_globals`; anything else is refused unbuilt."""
    with torch.serialization.safe_globals(allowed_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            reason = str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__
            raise UnsafeWeightsError(
                f"{path} holds objects a weights-only load refuses ({reason}); checkpoints are this run's own resume "
                "data: if this run did not write it, delete the checkpoints/ folder (or use another "
                "train.output_dir) and train without train.resume; if it did (another DeepSpeed version), add the "
                "class to train.checkpoint.allowed_globals after checking it is plain data"
            ) from None


@contextmanager
def weights_only_loads(engine) -> Iterator[None]:
    """While inside, every file DeepSpeed's checkpoint engine reads goes through :func:`weights_only_load`."""
    checkpoint_engine = engine.checkpoint_engine
    own = vars(checkpoint_engine).get("load")
    checkpoint_engine.load = weights_only_load  # shadows the class's unrestricted torch.load
    try:
        yield
    finally:
        if own is None:
            del checkpoint_engine.load
        else:
            checkpoint_engine.load = own


def load_checkpoint(engine, run_dir: Path, tag: str) -> int:
    """Restore the trainable weights, optimizer, scheduler and RNG from ``tag`` (weights-only unpickling, module
    doc); return its step."""
    root = Path(run_dir) / "checkpoints"
    with weights_only_loads(engine):
        path, client = engine.load_checkpoint(str(root), tag=tag, load_module_strict=False)
    if path is None:
        raise ConfigError(f"could not load checkpoint {root / tag}")
    set_rng_state(client["rng"])
    return int(client["step"])
