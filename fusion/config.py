"""Typed configs from YAML + dotted ``key=value`` overrides (shared by the training recipe and the eval harness).

A config is a tree of dataclasses. Each field has a type hint and, right below it, a docstring (litgpt style);
:func:`describe` turns those into ``--help`` text. Loading goes YAML mapping -> overrides -> dataclasses:

    cfg = load_config(RunConfig, "configs/fusion.yaml", ["optim.lr=2e-4", "fusion.retention=0.25"])

* an unknown key (in the YAML or an override) raises :class:`~fusion.errors.ConfigError` naming the dotted key
  and the keys that are known at that level;
* values are converted to the field's type (``"3"`` -> 3 for an int field, ``"1e-4"`` -> 1e-4 for a float,
  ``true``/``false`` for bools, ``null`` for optional fields, YAML flow syntax ``[a, b]`` / ``{k: v}`` for
  lists and dicts); a value that does not convert is a ConfigError naming the key, the type and the value;
* an override's text is kept verbatim for ``str`` fields (``run.name=007`` stays ``"007"``);
* ``dict`` fields accept any sub-key, so ``fusion.scorer_params.budget=joint`` works;
* a dataclass's ``__post_init__`` reports a bad value with :func:`invalid`, and the loader prefixes the key
  with its section, so the message always names the full dotted key.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from fusion.errors import ConfigError

T = TypeVar("T")
_NONE_WORDS = ("null", "none", "~", "")


class Override(str):
    """The raw text of a command-line value (converted by the target field's type, not by YAML rules)."""


def invalid(key: str, message: str) -> ConfigError:
    """A :class:`ConfigError` for ``key`` (relative to the dataclass raising it); the loader adds the section."""
    error = ConfigError(f"{key}: {message}")
    error.key, error.detail = key, message
    return error


def _prefixed(error: ConfigError, prefix: str) -> ConfigError:
    key = f"{prefix}.{error.key}" if prefix else error.key
    return invalid(key, error.detail)


# ---------------------------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[str, Override]:
    """``"a.b=3"`` -> ``("a.b", Override("3"))``. The key must be a dotted identifier path."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(
            f"override {text!r} is not of the form dotted.key=value (e.g. optim.lr=2e-4 or train.resume=true)"
        )
    return key, Override(value.strip())


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of the nested mapping ``data`` with every ``dotted.key=value`` set (sections created)."""
    out = _deep_copy(data)
    for text in overrides:
        key, value = parse_override(text)
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"override {text!r}: {'.'.join(parts[:i + 1])} is a value ({child!r}), not a section with keys"
                )
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


# ---------------------------------------------------------------------------------------------- conversion
def _type_name(tp) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _yaml_value(value):
    """An override's text parsed as a YAML scalar/flow value (anything else passes through)."""
    if isinstance(value, Override):
        try:
            return yaml.safe_load(str(value)) if str(value) else None
        except yaml.YAMLError:
            return str(value)
    return value


def _bad(key: str, tp, value) -> ConfigError:
    return invalid(key, f"expected {_type_name(tp)}, got {value!r}")


def _coerce(value, tp, key: str):
    """Convert ``value`` (from YAML, or an :class:`Override`) to the annotated type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return _yaml_value(value)
    if origin in (Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, Override)
                                                     and value.strip().lower() in _NONE_WORDS)):
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:  # first option that converts wins (str last by convention)
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(e.detail)
        raise invalid(key, f"expected {' or '.join(_type_name(o) for o in options)}, got {value!r}")
    if origin is Literal:
        choice = str(value) if isinstance(value, Override) else value
        if choice not in args:
            raise invalid(key, f"must be one of {list(args)}, got {choice!r}")
        return choice
    if dataclasses.is_dataclass(tp):
        value = _yaml_value(value)
        if not isinstance(value, Mapping):
            raise invalid(key, f"expected a section (mapping) of {tp.__name__} keys, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if tp in (bool, int, float, str) and isinstance(value, Mapping):
        raise invalid(key, f"is a value ({tp.__name__}), not a section (got sub-keys {sorted(value)})")
    if tp is str:
        if isinstance(value, Override):
            return str(value)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise _bad(key, tp, value)
    value = _yaml_value(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise invalid(key, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise _bad(key, tp, value)
        if isinstance(value, int):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise _bad(key, tp, value) from None
        if not number.is_integer():
            raise _bad(key, tp, value)
        return int(number)
    if tp is float:
        if isinstance(value, bool):
            raise _bad(key, tp, value)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise _bad(key, tp, value) from None
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise invalid(key, f"expected a list (YAML [a, b]), got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list or tp is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise invalid(key, f"expected a mapping (YAML {{k: v}}), got {value!r}")
        inner = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, inner, f"{key}.{k}") for k, v in value.items()}
    raise invalid(key, f"unsupported field type {_type_name(tp)} (config machinery supports bool/int/float/str, "
                       "Literal, Optional, list, dict and dataclasses)")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping, converting types; unknown or missing keys are errors."""
    if not isinstance(data, Mapping):
        raise invalid(prefix or cls.__name__, f"expected a mapping of {cls.__name__} keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        close = difflib.get_close_matches(str(unknown[0]), list(fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        known = ", ".join(fields)
        raise invalid(key, f"unknown key{hint}; known keys{' in ' + prefix if prefix else ''}: {known}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise invalid(key, "is required (no default); set it in the YAML or as an override")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if getattr(e, "key", None) is None:
            raise
        raise _prefixed(e, prefix) from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Read the YAML file (optional), apply the overrides and build ``cls``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass --config with a YAML recipe (see configs/)")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded or {}
    return from_dict(cls, apply_overrides(data, overrides))


# ---------------------------------------------------------------------------------------------- output
def to_dict(obj) -> dict[str, Any]:
    """A dataclass tree as plain nested dicts/lists (YAML/JSON friendly)."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(obj)


def dump_yaml(obj, path: str | Path | None = None, header: str = "") -> str:
    """The resolved config as YAML text (written to ``path`` when given, atomically)."""
    text = yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=False)
    if header:
        text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + text
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return text


def field_docs(cls) -> dict[str, str]:
    """``{field: docstring}`` from the string literal written right below each field of dataclass ``cls``."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls, prefix: str = "") -> list[str]:
    """One line per leaf key: ``dotted.key (type, default): doc`` (for ``--help``)."""
    hints, docs, lines = typing.get_type_hints(cls), field_docs(cls), []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += describe(tp, key)
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        lines.append(f"{key} ({_type_name(tp)}, default {default!r}): {docs.get(f.name, '')}".rstrip(": "))
    return lines
