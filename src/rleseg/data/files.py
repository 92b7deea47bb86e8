"""Reading images, label maps and class lists from files, with errors that name the file.

Images: PNG/JPEG/BMP via Pillow, TIFF via tifffile; returned (H, W, 3) float32 in [0, 1]. 8-bit images
are divided by 255; deeper ones (16-bit microscopy, float) are stretched from their 1st to 99.8th
percentile, because their useful range is a small part of the dtype's. Grey images are repeated
into three channels, alpha is dropped.

Label maps: index PNGs (8/16-bit grey), palette PNGs (the palette indices are the labels), TIFF label
maps (2-D integer), or RGB colour PNGs decoded through the class colours of a class list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
_TIFF = (".tif", ".tiff")


def _fail(path: Path, what: str, error: Exception | None = None) -> ValueError:
    detail = f" ({type(error).__name__}: {error})" if error is not None else ""
    return ValueError(f"{path}: {what}{detail}")


def image_shape(path: str | Path) -> tuple[int, int]:
    """(H, W) from the file header only; ValueError if the file cannot be opened as an image."""
    path = Path(path)
    try:
        if path.suffix.lower() in _TIFF:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.pages[0].shape
            return _spatial(shape, path)
        with Image.open(path) as img:
            return (img.height, img.width)
    except ValueError:
        raise
    except Exception as error:  # the readers raise many types for a bad header
        raise _fail(path, "cannot read the image header; expected a readable image file", error) from error


def _spatial(shape: tuple[int, ...], path: Path) -> tuple[int, int]:
    if len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3, 4)):
        return (int(shape[0]), int(shape[1]))
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        return (int(shape[1]), int(shape[2]))
    raise _fail(path, f"has shape {tuple(shape)}; expected (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4")


def _load(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() in _TIFF:
            import tifffile

            return tifffile.imread(path)
        with Image.open(path) as img:
            img.load()
            if img.mode == "P":
                return np.array(img)  # palette indices; the caller decides what they mean
            if img.mode in ("RGBA", "LA", "CMYK", "YCbCr"):
                img = img.convert("RGB")
            return np.array(img)
    except Exception as error:  # truncated or corrupt files raise OSError, struct.error, ...
        raise _fail(path, "cannot read the file; it may be truncated or not an image", error) from error


def to_unit_float(array: np.ndarray) -> np.ndarray:
    """Any image array -> float32 in [0, 1] (see the module doc for the scaling rule)."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == bool:
        return array.astype(np.float32)
    array = array.astype(np.float32)
    # Percentiles of about a million pixels are as good as of all and much cheaper on big stacks.
    sample = array.ravel()[:: max(1, array.size // 1_000_000)]
    low, high = (float(v) for v in np.percentile(sample, (1.0, 99.8))) if array.size else (0.0, 1.0)
    return np.clip((array - np.float32(low)) / np.float32(max(high - low, 1e-6)), 0, 1).astype(np.float32)


def as_rgb(array: np.ndarray, path: Path) -> np.ndarray:
    """(H, W), (H, W, C) or (C, H, W) -> (H, W, 3)."""
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise _fail(path, f"has shape {array.shape}; expected a grey or RGB(A) image")
    array = array[..., :3]
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array


def read_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]."""
    path = Path(path)
    return to_unit_float(as_rgb(_load(path), path))


def read_label_map(path: str | Path, colours: np.ndarray | None = None) -> np.ndarray:
    """(H, W) int64 labels from an index/palette PNG, a TIFF label map, or a colour PNG.

    Args:
        colours: (C, 3) uint8 class colours; needed for RGB masks whose channels differ, whose
            pixel colours then map to the class index (an unknown colour is an error).
    """
    path = Path(path)
    mask = _load(path)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim == 3 and mask.shape[-1] == 3:
        if np.array_equal(mask[..., 0], mask[..., 1]) and np.array_equal(mask[..., 0], mask[..., 2]):
            mask = mask[..., 0]  # grey saved as RGB
        elif colours is None:
            raise _fail(path, "is an RGB colour mask; give class colours in the class list, or save index/palette PNGs")
        else:
            mask = _decode_colours(mask, colours, path)
    if mask.ndim != 2:
        raise _fail(path, f"has shape {mask.shape}; expected a 2-D label map")
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer):
        raise _fail(path, f"holds {mask.dtype} values; expected integer labels")
    if mask.size and mask.min() < 0:
        raise _fail(path, f"holds negative label {int(mask.min())}; expected labels >= 0")
    return mask.astype(np.int64)


def _decode_colours(rgb: np.ndarray, colours: np.ndarray, path: Path) -> np.ndarray:
    key = lambda c: (c[..., 0].astype(np.int64) << 16) | (c[..., 1].astype(np.int64) << 8) | c[..., 2]  # noqa: E731
    class_keys = key(np.asarray(colours, dtype=np.int64))
    order = np.argsort(class_keys)
    pixel_keys = key(rgb)
    pos = np.clip(np.searchsorted(class_keys[order], pixel_keys), 0, len(order) - 1)
    found = class_keys[order][pos] == pixel_keys
    if not found.all():
        y, x = np.argwhere(~found)[0]
        raise _fail(path, f"pixel ({y}, {x}) has colour {tuple(int(v) for v in rgb[y, x])}, which is no class colour")
    return order[pos]


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
