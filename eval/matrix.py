"""The run's matrix: method entries x retentions (or explicit settings) -> one :class:`Setting` per result row.

Each setting has a display ``name`` (the table row), a ``key`` (name + budget, unique in a run) and a ``hash`` of
everything that changes its predictions: the method and its parameters, the retention, the adapter's weights,
and the run-wide inputs (model, dtype, attention, data sampling, prompt, scoring). ``samples.jsonl`` rows carry
the hash, so a rerun skips what is done and ignores rows that a config change invalidated.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.config import EvalConfig, MethodEntry
from fusion.errors import ConfigError


@dataclass
class Setting:
    """One row of the results.

    Attributes:
        name: display name (method column of the tables).
        key: unique id in the run (``name`` plus the budget, e.g. ``uniform@r=0.25``).
        method: registry name.
        params: the method's own parameters.
        retention: the nominal retention passed to the method, or None when its own parameters set the budget.
        adapter: the fusion block's adapter directory, or None.
        hash: 12 hex digits of the setting's identity (see module doc).
    """

    name: str
    key: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    retention: float | None = None
    adapter: str | None = None
    hash: str = ""

    def build_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``METHODS.build`` (retention included when set)."""
        kwargs = dict(self.params)
        if self.retention is not None:
            kwargs["retention"] = self.retention
        return kwargs


def display_name(entry: MethodEntry) -> str:
    """The entry's ``name``, else the method's display name (``pair`` -> ``<video>+<audio>``)."""
    if entry.name:
        return entry.name
    if entry.method == "pair":
        from fusion.pruners import METHODS

        try:
            return METHODS.build("pair", retention=1.0, **entry.params).name
        except Exception:  # noqa: BLE001 - a bad spec is reported when the setting is built
            return "pair"
    return entry.method


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (first 16 hex digits)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):  # 1 MiB per iteration
            h.update(block)
    return h.hexdigest()[:16]


def adapter_digest(adapter: str) -> str:
    """A digest of an adapter directory's weights and block config (so a retrained adapter invalidates rows)."""
    root = Path(adapter)
    files = [root / "adapter_model.safetensors", root / "fusion_config.json"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"methods: adapter {adapter} lacks {missing}; train the block first "
                          "(train/run.py writes run_dir/adapter) or fix the path")
    return "-".join(file_digest(f) for f in files)


def run_identity(cfg: EvalConfig) -> dict[str, Any]:
    """The run-wide inputs that change every prediction."""
    d = cfg.data
    return {"model": [cfg.model.name, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.seed],
            "data": [d.benchmark, d.max_frames, d.prompt, d.use_audio],
            "scoring": [cfg.scoring.mode, cfg.scoring.max_new_tokens if cfg.scoring.mode == "generate" else None]}


def setting_hash(setting: Setting, identity: dict[str, Any]) -> str:
    """12 hex digits of ``sha256(json(method, params, retention, adapter digest, run identity))``."""
    payload = {"method": setting.method, "params": setting.params, "retention": setting.retention,
               "adapter": adapter_digest(setting.adapter) if setting.adapter else None, "run": identity}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _percent(r: float) -> str:
    return f"{100 * r:g}%"


def expand(cfg: EvalConfig) -> list[Setting]:
    """Every setting of the run, in config order (entry, then its retentions / settings).

    Raises:
        ConfigError: two settings with the same key (give the entries distinct ``name``s), or an adapter that
            does not exist.
    """
    identity = run_identity(cfg)
    out: list[Setting] = []
    for i, entry in enumerate(cfg.methods):  # one method entry per iteration
        name = display_name(entry)
        if entry.settings is not None:
            for j, extra in enumerate(entry.settings):  # one explicit setting per iteration
                params = {**entry.params, **{k: v for k, v in extra.items() if k not in ("label", "retention")}}
                label = extra.get("label") or ",".join(f"{k}={v}" for k, v in extra.items() if k != "retention") \
                    or f"setting{j}"
                retention = extra.get("retention")
                if retention is not None and not 0 < float(retention) <= 1:
                    raise ConfigError(f"methods[{i}].settings[{j}].retention: must be in (0, 1], got {retention}")
                out.append(Setting(name=name, key=f"{name}@{label}", method=entry.method, params=params,
                                   retention=None if retention is None else float(retention), adapter=entry.adapter))
            continue
        retentions = entry.retentions if entry.retentions is not None else (
            [1.0] if entry.method == "none" else cfg.retentions)
        for r in retentions:  # one retention per iteration
            out.append(Setting(name=name, key=f"{name}@{_percent(r)}", method=entry.method, params=dict(entry.params),
                               retention=float(r), adapter=entry.adapter))
    seen: dict[str, int] = {}
    for s in out:
        if s.key in seen:
            raise ConfigError(f"methods: two settings are both named {s.key!r}; give the entries distinct 'name's "
                              "(or distinct setting labels)")
        seen[s.key] = 1
        s.hash = setting_hash(s, identity)
    return out
