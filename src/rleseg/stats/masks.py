"""Finding the label masks of a folder (read with ``rleseg.imageio.read_label_map``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np

from ..imageio import MASK_SUFFIXES, MaskError, read_label_map

T = TypeVar("T")


def find_masks(folder: str | Path, pattern: str = "*", recursive: bool = False) -> list[Path]:
    """The label-map files (``MASK_SUFFIXES``) in ``folder`` whose names match ``pattern``, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MaskError(f"{folder}: no such directory")
    candidates = folder.rglob(pattern) if recursive else folder.glob(pattern)
    files = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in MASK_SUFFIXES)
    if not files:
        raise MaskError(f"{folder}: no .png, .tif or .tiff masks (nor .bmp) matching {pattern!r}")
    return files


def iter_masks(files: Iterable[Path]) -> Iterator[tuple[str, np.ndarray]]:
    for path in files:
        yield str(path), read_label_map(path)


def over_folder(measure: Callable[..., T], folder: str | Path, options, pattern: str, recursive: bool,
                progress: bool) -> T:
    """``measure(masks, options, progress, total=...)`` (a statistics function) over the masks of a folder."""
    files = find_masks(folder, pattern, recursive)
    return measure(iter_masks(files), options, progress, total=len(files))
