"""Files and folders written so that nobody ever reads half of one.

Everything rleseg writes for later (checkpoints, run files, reports, prediction folders) goes through
these: the content is written under a temporary name beside its final place and renamed onto it in one
``os.replace``, so a crash or a kill leaves the previous version or nothing, never a torn file. Temporary
names start with a dot, so folder listings and checkpoint globs pass over them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, for writers that choose a format by it); when
    the block succeeds it replaces ``path``, when it fails it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1) + "\n")


@contextlib.contextmanager
def atomic_folder(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out``; when the block succeeds it replaces ``out``, when
    it fails it is removed.

    An existing ``out`` that is not an empty folder is refused unless ``overwrite``; it is removed only
    after its replacement is complete.
    """
    out = Path(out)
    if out.exists() and not overwrite and not (out.is_dir() and not any(out.iterdir())):
        raise ValueError(f"{out}: already exists and is not empty; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output_folder(out: str | Path, inputs: Iterable[str | Path], trees: Iterable[str | Path] = ()) -> None:
    """ValueError unless ``out`` can become an output folder without harm to what a command reads, since
    :func:`atomic_folder` with ``overwrite`` deletes what it replaces: ``out`` is no existing file, neither
    is nor holds any of ``inputs`` (files or folders), and lies neither around nor inside any of ``trees``
    (folders read with all their subfolders, such as a dataset's root). Paths are resolved, so links and
    ``..`` count."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file, not a folder; choose a folder for --out")
    target = out.resolve()
    for path, is_tree in [*((p, False) for p in inputs), *((p, True) for p in trees)]:
        resolved = Path(path).resolve()
        if resolved == target or target in resolved.parents:
            relation = "is" if resolved == target else "holds"
            raise ValueError(f"{out}: the output folder {relation} the input {path}; choose an --out outside the "
                             "inputs (it is replaced as a whole)")
        if is_tree and resolved in target.parents:
            raise ValueError(f"{out}: the output folder lies inside the data folder {path}; choose an --out outside "
                             "the data")
