"""Reading label masks from PNG and TIFF files, with errors that name the file.

torch-free (``rleseg.data`` has a richer reader, with colour masks and class lists, but importing that
package imports torch).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

MASK_SUFFIXES = (".png", ".tif", ".tiff")


class MaskError(ValueError):
    """A problem with a user's mask file or its labels; the message names the file and what was expected."""


# ----------------------------------------------------------------------------- reading masks
def read_label_mask(path: str | Path) -> np.ndarray:
    """Read an (H, W) integer label map from a PNG (via Pillow) or TIFF (via tifffile).

    Palette PNGs give their palette indices; grayscale and 16/32-bit PNGs give their values. A TIFF must
    hold one 2-D plane of non-negative integers (a float TIFF is accepted when every value is integral).
    A colour PNG whose channels are equal is read as grey; other colour images are refused.

    Raises:
        MaskError: the file is missing, unreadable or not a single-channel label map.
    """
    path = Path(path)
    if path.is_dir():
        raise MaskError(f"{path}: is a directory, expected a mask image file")
    if not path.is_file():
        raise MaskError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in MASK_SUFFIXES:
        raise MaskError(f"{path}: unsupported file type {path.suffix!r}, expected a .png, .tif or .tiff label mask")
    try:
        mask = _read_tiff(path) if suffix in (".tif", ".tiff") else _read_png(path)
    except MaskError:
        raise
    except Exception as error:  # any decoder failure means the file is unreadable
        raise MaskError(f"{path}: cannot read image ({type(error).__name__}: {error})") from error
    if mask.ndim == 3 and 1 in (mask.shape[0], mask.shape[-1]):
        mask = mask.reshape(mask.shape[1:] if mask.shape[0] == 1 else mask.shape[:-1])
    if mask.ndim != 2:
        raise MaskError(f"{path}: image has shape {mask.shape}, expected a 2-D label map")
    return _as_labels(mask, path)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        if image.mode in ("1", "L", "P", "I", "F") or image.mode.startswith("I;16"):
            return np.asarray(image)  # palette PNGs give their indices
        mode = image.mode
        rgb = np.asarray(image.convert("RGB"))
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0]  # grey labels saved as colour
    raise MaskError(
        f"{path}: is a colour image (mode {mode}) with differing channels, expected a single-channel label "
        f"PNG (grayscale or palette)"
    )


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    return np.asarray(tifffile.imread(path))


def _as_labels(mask: np.ndarray, path: Path) -> np.ndarray:
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if np.issubdtype(mask.dtype, np.floating):
        if not (np.all(np.isfinite(mask)) and np.all(mask == np.round(mask))):
            raise MaskError(f"{path}: holds non-integer values, expected integer class labels")
        mask = mask.astype(np.int64)
    if not np.issubdtype(mask.dtype, np.integer):
        raise MaskError(f"{path}: has dtype {mask.dtype}, expected integer class labels")
    if mask.size and mask.min() < 0:
        raise MaskError(f"{path}: holds negative label {int(mask.min())}, expected labels >= 0")
    return mask


def find_masks(folder: str | Path, pattern: str = "*", recursive: bool = False) -> list[Path]:
    """The PNG and TIFF files in ``folder`` whose names match ``pattern``, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MaskError(f"{folder}: no such directory")
    candidates = folder.rglob(pattern) if recursive else folder.glob(pattern)
    files = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in MASK_SUFFIXES)
    if not files:
        raise MaskError(f"{folder}: no .png, .tif or .tiff masks matching {pattern!r}")
    return files


def iter_masks(files: Iterable[Path]) -> Iterator[tuple[str, np.ndarray]]:
    for path in files:
        yield str(path), read_label_mask(path)
