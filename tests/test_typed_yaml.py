"""YAML -> dataclass mapping, dotted overrides, and the errors a user sees."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from rleseg.typed_yaml import ConfigError, apply_overrides, check_range, from_dict, load_yaml, to_dict


@dataclass
class Optim:
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: Literal["linear", "cosine"] = "cosine"


@dataclass
class Run:
    optim: Optim = field(default_factory=Optim)
    steps: int = 10
    name: str | None = None
    compile: bool = False
    out: Path = Path("runs")
    sizes: tuple[int, ...] = (1, 2)


def test_yaml_maps_onto_dataclasses_with_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 3e-5\n  betas: [0.8, 0.99]\nsteps: 7\nsizes: [4, 8, 16]\n")
    run = from_dict(Run, load_yaml(path))
    assert run == Run(optim=Optim(lr=3e-5, betas=(0.8, 0.99)), steps=7, sizes=(4, 8, 16))
    assert from_dict(Run, to_dict(run)) == run


def test_dotted_overrides_parse_values_as_yaml():
    data = apply_overrides({"steps": 3}, ["optim.lr=0.01", "name=demo", "compile=true", "optim.schedule=linear"])
    run = from_dict(Run, data)
    assert (run.optim.lr, run.name, run.compile, run.steps, run.optim.schedule) == (0.01, "demo", True, 3, "linear")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"stepz": 1}, "unknown key 'stepz'.*steps"),
        ({"optim": {"lrr": 1}}, "unknown key 'optim.lrr'"),
        ({"steps": "ten"}, "steps must be an integer"),
        ({"steps": 1.5}, "steps must be an integer"),
        ({"optim": {"schedule": "step"}}, "optim.schedule must be one of 'linear', 'cosine'"),
        ({"optim": {"betas": [0.9]}}, r"optim.betas must have 2 items"),
        ({"compile": "yes"}, "compile must be true or false"),
        ({"optim": 3}, "optim must be a mapping"),
    ],
)
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Run, data)


def test_bad_override_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        apply_overrides({}, ["steps"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"steps": 1}, ["steps.x=2"])
    with pytest.raises(ConfigError, match="cannot read config"):
        load_yaml(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(broken)


@dataclass
class Schedule:
    lr: float = 0.1
    steps: int = 1
    clip: float | None = None

    def __post_init__(self) -> None:
        check_range(self, 0, None, "lr", low_open=True)
        check_range(self, 1, None, "steps")
        check_range(self, 0, 10, "clip", high_open=True)


@dataclass
class Job:
    schedule: Schedule = field(default_factory=Schedule)
    steps: int = 1

    def __post_init__(self) -> None:
        check_range(self, 1, None, "steps")


@pytest.mark.parametrize(("data", "message"), [
    ({"schedule": {"lr": -1}}, "schedule.lr must be > 0, got -1.0"),
    ({"schedule": {"lr": 0}}, "schedule.lr must be > 0, got 0.0"),
    ({"schedule": {"lr": float("nan")}}, "schedule.lr must be a finite number, got nan"),
    ({"schedule": {"steps": 0}}, "schedule.steps must be >= 1, got 0"),
    ({"schedule": {"clip": 10}}, "schedule.clip must be >= 0 and < 10, got 10.0"),
    ({"steps": -1}, "steps must be >= 1, got -1"),
])
def test_range_checks_of_the_dataclasses_name_the_dotted_key(data, message):
    with pytest.raises(ConfigError) as error:
        from_dict(Job, data)
    assert str(error.value) == message
    assert from_dict(Job, {"schedule": {"clip": None, "steps": "1e3"}}).schedule.steps == 1000  # None passes


def test_files_that_are_no_yaml_text_are_named(tmp_path):
    path = tmp_path / "run.yaml"
    for content, message in [
        (b"optim: {lr: 0.1}\n\xe9t\xe9: 1\n", "is not a YAML text file: byte 0xe9 at offset 17 is not UTF-8"),
        (b"\x00" * 64, "is not a YAML text file: control character #x0000 at character 0"),
        (b"optim:\n  lr: [1\n", "is not valid YAML: line 3, column 1: expected ',' or ']', but got '<stream end>'"),
    ]:
        path.write_bytes(content)
        with pytest.raises(ConfigError) as error:
            load_yaml(path)
        assert str(error.value) == f"{path} {message}"
