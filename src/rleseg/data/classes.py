"""Class lists (names, optional colours) from YAML or TXT files, with errors that name the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml


def _fail(path: Path, what: str, error: Exception | None = None) -> ValueError:
    detail = f" ({type(error).__name__}: {error})" if error is not None else ""
    return ValueError(f"{path}: {what}{detail}")


@dataclass(frozen=True)
class ClassList:
    """Class names in label order (label i is ``names[i]``), with optional (C, 3) uint8 colours."""

    names: tuple[str, ...]
    colours: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)


def read_class_list(path: str | Path) -> ClassList:
    """Class list from YAML or TXT.

    YAML: a list (or a mapping with key ``classes`` or ``names`` holding the list) whose entries are
    names or ``{name: ..., color: [r, g, b]}``. TXT: one class per line, ``name`` or ``name r g b`` or
    ``name #rrggbb``; blank lines and lines starting with ``#`` are skipped. Colours are all or none.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise _fail(path, "cannot read the class list", error) from error
    if path.suffix.lower() in (".yaml", ".yml"):
        entries = _yaml_entries(path, text)
    else:
        entries = [_txt_entry(path, line) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if len(entries) < 2:
        raise _fail(path, f"lists {len(entries)} class(es); expected at least 2 (background included)")
    names = tuple(name for name, _ in entries)
    if len(set(names)) != len(names):
        raise _fail(path, "names a class twice")
    given = [colour is not None for _, colour in entries]
    if any(given) and not all(given):
        raise _fail(path, "gives colours for some classes only; expected a colour for every class or none")
    colours = np.array([colour for _, colour in entries], dtype=np.uint8) if all(given) else None
    return ClassList(names, colours)


def _check_colour(path: Path, colour) -> tuple[int, int, int]:
    values = [int(v) for v in colour]
    if len(values) != 3 or min(values) < 0 or max(values) > 255:
        raise _fail(path, f"colour {colour} is not three values in 0..255")
    return (values[0], values[1], values[2])


def _yaml_entries(path: Path, text: str) -> list[tuple[str, tuple | None]]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise _fail(path, "is not valid YAML", error) from error
    if isinstance(data, dict):
        data = data.get("classes", data.get("names"))
    if not isinstance(data, list):
        raise _fail(path, "expected a list of classes (or a mapping with key 'classes')")
    entries = []
    for entry in data:
        if isinstance(entry, dict) and "name" in entry:
            colour = entry.get("color", entry.get("colour"))
            entries.append((str(entry["name"]), None if colour is None else _check_colour(path, colour)))
        elif isinstance(entry, str | int):
            entries.append((str(entry), None))
        else:
            raise _fail(path, f"class entry {entry!r} is neither a name nor a mapping with 'name'")
    return entries


def _txt_entry(path: Path, line: str) -> tuple[str, tuple | None]:
    parts = line.split()
    if len(parts) == 1:
        return (parts[0], None)
    if len(parts) == 2 and parts[1].startswith("#") and len(parts[1]) == 7:
        value = parts[1][1:]
        return (parts[0], _check_colour(path, [int(value[i : i + 2], 16) for i in (0, 2, 4)]))
    if len(parts) == 4:
        try:
            return (parts[0], _check_colour(path, parts[1:]))
        except ValueError:
            pass
    raise _fail(path, f"line {line!r}: expected 'name', 'name r g b' or 'name #rrggbb'")
