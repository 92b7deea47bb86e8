"""Files and folders written so that nobody ever reads half of one.

Everything rleseg writes for later (checkpoints, run files, reports, prediction folders) goes through
these: the content is written under a temporary name beside its final place and renamed onto it in one
``os.replace``, so a crash or a kill leaves the previous version or nothing, never a torn file. Temporary
names start with a dot, so folder listings and checkpoint globs pass over them.

A command's output folder (:func:`output_folder`) carries a manifest, ``rleseg-output.json``, written last:
``--overwrite`` replaces only a folder that has one, so it never removes a folder it did not write.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
import time
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
        try:
            tmp.write_text(text)
        except OSError as error:  # a full disk's error names no file: name the one being written
            raise OSError(error.errno, error.strerror, str(path)) from None


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1) + "\n")


@contextlib.contextmanager
def atomic_folder(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out``; when the block succeeds it replaces ``out``, when
    it fails it is removed (and what a killed process left beside ``out`` is removed on the next call).

    An existing ``out`` that is not an empty folder is refused unless ``overwrite``; it is removed only
    after its replacement is complete.
    """
    typed, out = out, Path(os.path.abspath(out))  # "." and "a/.." as the folders they name
    if out == out.parent:
        raise ValueError(f"{typed}: the root folder cannot be an output folder; choose a folder for --out")
    if out.exists() and not overwrite and not (out.is_dir() and not any(out.iterdir())):
        raise ValueError(f"{typed}: already exists and is not empty; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".partial", dir=out.parent))
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


OUTPUT_MANIFEST = "rleseg-output.json"


@contextlib.contextmanager
def output_folder(out: str | Path, overwrite: bool, command: str) -> Iterator[Path]:
    """:func:`atomic_folder` for the output of ``command`` (evaluate, predict): :data:`OUTPUT_MANIFEST` is
    written last into it. With ``overwrite``, an existing folder is replaced only when it has a manifest
    (an output of an earlier command) and holds no checkpoint; anything else is refused (ValueError)."""
    out = Path(out)
    if overwrite and out.is_dir() and any(out.iterdir()):
        if not (out / OUTPUT_MANIFEST).is_file():
            raise ValueError(f"{out}: not an output folder of rleseg (it has no {OUTPUT_MANIFEST}), so --overwrite "
                             "does not replace it; choose another --out, or empty the folder yourself")
        held = next(out.rglob("*.safetensors"), None)
        if held is not None:
            raise ValueError(f"{out}: holds the checkpoint {held}, so --overwrite does not replace it; choose "
                             "another --out")
    with atomic_folder(out, overwrite) as tmp:
        yield tmp
        write_json(tmp / OUTPUT_MANIFEST, {"command": command, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def _run_folder_of(folder: Path) -> Path | None:
    """The first of ``folder`` and its parents that holds a run (a best model or a checkpoint folder)."""
    for candidate in (folder, *folder.parents):
        if (candidate / "best.safetensors").is_file() or any((candidate / "checkpoints").glob("step_[0-9]*")):
            return candidate
    return None


def _remove_stale_partials(out: Path) -> None:
    """Delete the temporary folders of ``out`` (``.NAME.PID.XXXX.partial``) that a killed process left: those
    whose process no longer runs (or that name none, as rleseg 0.1 wrote them). A live process's are kept."""
    for partial in out.parent.glob(f".{glob.escape(out.name)}.*.partial"):
        pid = partial.name[len(out.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and _running(int(pid)):
            continue
        shutil.rmtree(partial, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_output_folder(out: str | Path, inputs: Iterable[str | Path], trees: Iterable[str | Path] = ()) -> None:
    """ValueError unless ``out`` can become an output folder without harm to what a command reads, since
    :func:`atomic_folder` with ``overwrite`` deletes what it replaces: ``out`` is no existing file, neither
    is nor holds any of ``inputs`` (files or folders), and lies neither around nor inside any of ``trees``
    (folders read with all their subfolders, such as a dataset's root), and is neither a run folder nor inside
    one (a folder with a best model or checkpoints). Paths are resolved, so links and ``..`` count."""
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
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        relation = "is" if target == cwd else "holds"
        raise ValueError(f"{out}: the output folder {relation} the current folder, and it is replaced as a whole; "
                         "choose a new folder for --out, such as ./predictions")
    run = _run_folder_of(target)
    if run is not None:
        where = "is" if run == target else "lies inside"
        raise ValueError(f"{out}: the output folder {where} the run folder {run}, whose checkpoints it could replace; "
                         "choose an --out outside the run")
