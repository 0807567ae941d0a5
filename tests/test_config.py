"""fusion.config: YAML + dotted overrides -> typed dataclasses; unknown keys and bad values name the dotted key;
the resolved config round-trips through the saved YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from fusion.config import describe, dump_yaml, from_dict, invalid, load_config
from fusion.errors import ConfigError
from train.config import RunConfig


@dataclass
class Inner:
    """A nested section."""

    rate: float = 0.5
    """A rate in (0, 1]."""
    mode: Literal["a", "b"] = "a"
    """One of a/b."""

    def __post_init__(self) -> None:
        if not 0 < self.rate <= 1:
            raise invalid("rate", f"must be in (0, 1], got {self.rate}")


@dataclass
class Outer:
    """The root."""

    name: str = "x"
    """A name."""
    steps: int = 10
    """How many."""
    flag: bool = False
    """A switch."""
    limit: int | None = None
    """Optional."""
    tags: list[str] = field(default_factory=list)
    """Some tags."""
    params: dict[str, Any] = field(default_factory=dict)
    """Free-form."""
    source: dict[str, Any] | str = "file.json"
    """A path or an inline mapping."""
    inner: Inner = field(default_factory=Inner)
    """The nested section."""


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


OVERRIDE_CASES = [
    ("steps=3", "steps", 3),
    ("steps=1e3", "steps", 1000),
    ("inner.rate=1e-4", ("inner", "rate"), 1e-4),
    ("flag=true", "flag", True),
    ("limit=null", "limit", None),
    ("limit=7", "limit", 7),
    ("name=007", "name", "007"),  # verbatim for str fields, not the YAML int 7
    ("tags=[q, v]", "tags", ["q", "v"]),
    ("params.budget=joint", "params", {"budget": "joint"}),
    ("source={stage: 2}", "source", {"stage": 2}),
    ("source=configs/z.json", "source", "configs/z.json"),
    ("inner.mode=b", ("inner", "mode"), "b"),
]


@pytest.mark.parametrize("override,key,expected", OVERRIDE_CASES, ids=[c[0] for c in OVERRIDE_CASES])
def test_overrides_are_converted_to_the_field_type(tmp_path, override, key, expected):
    cfg = load_config(Outer, _write(tmp_path, "steps: 5\ninner:\n  rate: 0.25\n"), [override])
    value = getattr(getattr(cfg, key[0]), key[1]) if isinstance(key, tuple) else getattr(cfg, key)
    assert value == expected and type(value) is type(expected)


def test_yaml_values_and_defaults_fill_the_tree(tmp_path):
    cfg = load_config(Outer, _write(tmp_path, "steps: 5\ninner:\n  rate: 0.25\n"))
    assert (cfg.steps, cfg.inner.rate, cfg.inner.mode, cfg.name) == (5, 0.25, "a", "x")


ERROR_CASES = [
    ("YAML unknown nested key", "inner:\n  rat: 0.3\n", [], "inner.rat: unknown key (did you mean 'rate'?)"),
    ("override unknown key", "", ["inner.speed=2"], "inner.speed: unknown key"),
    ("override unknown section", "", ["outer.steps=2"], "outer: unknown key"),
    ("not an int", "", ["steps=many"], "steps: expected int, got 'many'"),
    ("not a whole number", "", ["steps=2.5"], "steps: expected int"),
    ("not a bool", "", ["flag=maybe"], "flag: expected true or false"),
    ("literal choice", "", ["inner.mode=c"], "inner.mode: must be one of ['a', 'b']"),
    ("post_init names the section", "", ["inner.rate=0"], "inner.rate: must be in (0, 1]"),
    ("into a value", "", ["steps.x=1"], "steps: is a value (int), not a section"),
    ("into a YAML value", "steps: 4\n", ["steps.x=1"], "steps is a value (4)"),
    ("no equals sign", "", ["steps"], "dotted.key=value"),
    ("list expected", "", ["tags=q"], "tags: expected a list"),
]


@pytest.mark.parametrize("name,yaml_text,overrides,message", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_keys_and_values_are_config_errors_naming_the_dotted_key(tmp_path, name, yaml_text, overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(Outer, _write(tmp_path, yaml_text), overrides)
    assert message in str(error.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, _write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(Outer, _write(tmp_path, "- 1\n- 2\n"))


def test_required_fields_are_reported():
    @dataclass
    class Needs:
        path: str

    with pytest.raises(ConfigError, match="path: is required"):
        from_dict(Needs, {})


def test_resolved_run_config_round_trips_through_the_saved_yaml(tmp_path):
    overrides = ["fusion.retention=0.2", "fusion.split=off", "fusion.scorer=uniform",
                 "fusion.scorer_params.budget=joint",
                 "optim.block_lr=1e-3", "train.stop_after=3", "lora.enabled=false", "data.synthetic.cue=media"]
    cfg = load_config(RunConfig, "configs/fusion.yaml", overrides)
    path = tmp_path / "run" / "config.yaml"
    text = dump_yaml(cfg, path, header="resolved")
    assert text.startswith("# resolved\n") and path.read_text() == text
    again = load_config(RunConfig, path)
    assert again == cfg
    assert again.fusion.scorer_params == {"budget": "joint"} and again.optim.block_lr == 1e-3


def test_run_config_cross_field_check():
    with pytest.raises(ConfigError, match="lora.enabled: nothing would be trained"):
        load_config(RunConfig, None, ["lora.enabled=false", "fusion.fused=false", "fusion.scorer=uniform"])


def test_describe_lists_every_leaf_key_with_its_docstring():
    lines = describe(Outer)
    assert "inner.rate (float, default 0.5): A rate in (0, 1]." in lines
    assert any(line.startswith("limit (") and "Optional." in line for line in lines)
    run_keys = [line.split(" ")[0] for line in describe(RunConfig)]
    assert {"fusion.retention", "train.resume", "data.synthetic.cue", "deepspeed"} <= set(run_keys)
