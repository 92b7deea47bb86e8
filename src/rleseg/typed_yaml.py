"""YAML configs onto typed dataclasses, with validation and dotted command-line overrides.

Each concern keeps its own dataclass next to its code (``ModelConfig`` in ``rleseg.models``, ...); a run's
config is a dataclass whose fields are those dataclasses. This module only maps plain data onto them::

    @dataclass
    class Optim:
        lr: float = 3e-4

    @dataclass
    class Run:
        optim: Optim = field(default_factory=Optim)
        steps: int = 10

    from_dict(Run, apply_overrides({"steps": 5}, ["optim.lr=1e-3"]))  # Run(optim=Optim(lr=0.001), steps=5)

Unknown keys and ill-typed values raise ConfigError naming the dotted key and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclasses; the message names the key."""


# A config holds a few hundred values in a few kilobytes: a larger file is another kind of file (a checkpoint,
# /dev/zero), and YAML aliases can make a small file expand to billions of values ("billion laughs").
MAX_BYTES = 2**20
MAX_VALUES = 100_000


def load_yaml(path: str | Path, empty: bool = False) -> dict:
    """The mapping a YAML file holds; ConfigError naming the file, on one line, for a file that cannot be
    read, is not UTF-8 text, is not YAML, is empty (unless ``empty``: {} then), names a key twice in one
    mapping or is no mapping."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror or error}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_BYTES // 2**20} MiB: not a config, which is a small YAML file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not a YAML text file: byte 0x{raw[error.start]:02x} at offset {error.start} "
                          "is not UTF-8") from None
    try:
        data = yaml.load(text, _UniqueKeyLoader)
        values = _count_values(data, {})
    except yaml.reader.ReaderError as error:  # a control character: most likely a binary file
        raise ConfigError(f"{path} is not a YAML text file: control character #x{error.character:04x} at "
                          f"character {error.position}") from None
    except _DuplicateKey as error:
        raise ConfigError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {_one_line(error)}") from None
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply to be a config") from None
    if data is None and empty:
        return {}
    if data is None:  # nothing but comments, or nothing: all defaults would run, which nobody means by a file
        raise ConfigError(f"{path} is empty; expected a YAML mapping of config sections (model:, data:, train: ...)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    if values > MAX_VALUES:
        raise ConfigError(f"{path} expands to more than {MAX_VALUES:,} values (YAML aliases?); a config holds a few "
                          "hundred")
    return data


class _DuplicateKey(ValueError):
    """A mapping of a YAML file that names a key twice (YAML forbids it; PyYAML would keep the last)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, but a key given twice in one mapping is an error, not the last one winning."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise _DuplicateKey(f"line {key_node.start_mark.line + 1}: key {key!r} given twice in one mapping "
                                    f"(first on line {seen[key] + 1}); give each key once")
            if isinstance(key, str | int | float | bool):
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _one_line(error: yaml.YAMLError) -> str:
    """PyYAML's message (several lines, with a picture of the spot) as "line L, column C: problem"."""
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if problem is None:
        return " ".join(str(error).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def _count_values(data: Any, counted: dict[int, int | None]) -> int:
    """How many values ``data`` holds once its aliases are expanded (``counted``: id -> count, None while an
    object is being counted), without expanding them; above MAX_VALUES for a structure that holds itself."""
    if not isinstance(data, dict | list):
        return 1
    key = id(data)
    if key in counted:
        return MAX_VALUES + 1 if counted[key] is None else counted[key]
    counted[key] = None
    items = data.values() if isinstance(data, dict) else data
    counted[key] = 1 + sum(_count_values(item, counted) for item in items)
    return counted[key]


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a nested dict; returns a new dict."""
    data = _deep_copy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: cannot parse value {text!r}") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def from_dict(cls: type[T], data: dict | None, where: str = "") -> T:
    """Build dataclass ``cls`` from nested plain data, rejecting unknown keys and ill-typed values."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {_join(where, unknown[0])!r}; valid keys of {where or 'the config'}: {', '.join(fields)}"
        )
    values = {name: _convert(hints[name], value, _join(where, name)) for name, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        message = str(error)
        if message.split(" ", 1)[0] in fields:  # a field's own check names it first: "lr must be > 0, got -1"
            raise ConfigError(_join(where, message)) from None
        raise ConfigError(f"{where or 'config'}: {message}") from None


def check_range(config: Any, low: float | None = None, high: float | None = None, *names: str,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise ValueError naming the first of ``names`` whose value (None passes) lies outside [low, high]
    (``low_open`` / ``high_open``: the bound itself is outside). Config dataclasses call it in
    ``__post_init__``, so a range is checked wherever the config is built, YAML or Python."""
    for name in names:
        value = getattr(config, name)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):  # .nan passes every comparison, .inf a low bound
            raise ValueError(f"{name} must be a finite number, got {value}")
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            left = "" if low is None else f"{'>' if low_open else '>='} {low}"
            right = "" if high is None else f"{'<' if high_open else '<='} {high}"
            raise ValueError(f"{name} must be {' and '.join(p for p in (left, right) if p)}, got {value!r}")


def to_dict(config: Any) -> Any:
    """A dataclass tree as plain data (tuples become lists), ready for YAML or JSON."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, tuple | list):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {hint}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if hint in (tuple, list):
        origin = hint
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where} must have {len(args)} items, got {value!r}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    return _convert_scalar(hint, value, where)


def _number(value: Any) -> float | None:
    """A YAML number as a float, None for anything else (an integer beyond floats too). YAML 1.1 reads
    "3e-5" and "1e9" as strings."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except (ValueError, OverflowError):
        return None


def _convert_scalar(hint: Any, value: Any, where: str) -> Any:
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _number(value)
        if number is not None and number.is_integer():  # 1e4 steps, 2.0 frames
            return int(number)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if hint is float:
        number = _number(value)
        if number is not None:
            return number
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if hint is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise ConfigError(f"{where} must be a path, got {value!r}")
    raise ConfigError(f"{where}: unsupported config type {hint}")
