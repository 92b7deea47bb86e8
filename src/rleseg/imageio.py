"""Reading images and label maps from files, with errors that name the file (numpy, Pillow and tifffile; no
torch, so the tokenizer's commands and the statistics use it too).

Images: PNG/JPEG/BMP via Pillow, TIFF via tifffile; returned (H, W, 3) float32 in [0, 1]. 8-bit images
are divided by 255; deeper ones (16-bit microscopy, float) are stretched from their 1st to 99.8th
percentile, because their useful range is a small part of the dtype's. Grey images are repeated
into three channels, alpha is dropped.

Label maps: index PNGs (8/16-bit grey), palette PNGs (the palette indices are the labels), TIFF label
maps (2-D integer, or float holding whole numbers), grey saved as RGB, or RGB colour PNGs decoded through
class colours (``rleseg.data.classes``).

Size limit: every reader refuses a file whose header declares more than :func:`max_pixels` pixels
(height x width, times the frames of a TIFF stack; colour samples not counted) before it reads a pixel,
so that a small compressed file cannot make it allocate gigabytes. The limit is ``MAX_PIXELS`` when a
program sets it, else the environment variable ``RLESEG_MAX_PIXELS``, else ``DEFAULT_MAX_PIXELS`` (10^8,
e.g. 10000 x 10000). Pillow's own guard (``PIL.Image.MAX_IMAGE_PIXELS``) is set to the same number.

Label maps must be lossless: a PNG, TIFF or BMP file. A JPEG (or a JPEG-compressed TIFF) is refused
whatever its name, since its compression changes label values.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
_TIFF = (".tif", ".tiff")
_LABEL_FORMATS = ("PNG", "TIFF", "BMP")  # Pillow's names of the lossless formats a label map may have

DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS: int | None = None  # set by a program to override RLESEG_MAX_PIXELS and the default
PIXELS_VARIABLE = "RLESEG_MAX_PIXELS"
# Image.open applies Pillow's limit while it reads the header; it is lifted there (ours is checked on
# the header's size instead), and the lock keeps concurrent readers from restoring it in between.
_PILLOW_LIMIT = threading.Lock()


class MaskError(ValueError):
    """A user's image or mask file that cannot be used as one; the message names the file and what was expected."""


def _fail(path: Path, what: str, error: Exception | None = None) -> MaskError:
    detail = f" ({type(error).__name__}: {error})" if error is not None else ""
    return MaskError(f"{path}: {what}{detail}")


def max_pixels() -> int:
    """The most pixels a reader accepts: ``MAX_PIXELS``, else ``RLESEG_MAX_PIXELS``, else the default."""
    if MAX_PIXELS is not None:
        return MAX_PIXELS
    text = os.environ.get(PIXELS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise MaskError(f"{PIXELS_VARIABLE}={text!r}: expected a positive whole number of pixels")
    return value


def _check_pixels(path: Path, shape: tuple[int, ...]) -> None:
    """MaskError when a header's ``shape`` (colour samples left out) holds more than the limit's pixels."""
    limit, pixels = max_pixels(), math.prod(int(n) for n in shape)
    if pixels > limit:
        size = "x".join(str(int(n)) for n in shape)
        raise _fail(path, f"declares {size} = {pixels} pixels, more than the limit of {limit} pixels; set "
                    f"{PIXELS_VARIABLE} to read larger images")


def _tiff_pixels(path: Path, shape: tuple[int, ...], axes: str) -> None:
    _check_pixels(path, tuple(n for n, axis in zip(shape, axes, strict=True) if axis != "S"))


def image_shape(path: str | Path) -> tuple[int, int]:
    """(H, W) from the file header only; MaskError if the file cannot be opened as an image or declares
    more pixels than :func:`max_pixels`."""
    path = Path(path)
    try:
        if path.suffix.lower() in _TIFF:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                _tiff_pixels(path, page.shape, page.axes)
                shape = page.shape
            return _spatial(shape, path)
        with _open(path, "cannot read the image header; expected a readable image file") as img:
            return (img.height, img.width)
    except MaskError:
        raise
    except Exception as error:  # the readers raise many types for a bad header
        raise _fail(path, "cannot read the image header; expected a readable image file", error) from error


def _spatial(shape: tuple[int, ...], path: Path) -> tuple[int, int]:
    if len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3, 4)):
        return (int(shape[0]), int(shape[1]))
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        return (int(shape[1]), int(shape[2]))
    raise _fail(path, f"has shape {tuple(shape)}; expected (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4")


def _load(path: Path, mask: bool = False) -> np.ndarray:
    if path.is_dir():
        raise _fail(path, "is a directory, expected a mask image file" if mask else "is a directory, expected an image")
    if not path.is_file():
        raise _fail(path, "no such file")
    try:
        if path.suffix.lower() in _TIFF:
            return _load_tiff(path, mask)
        img = _open(path)
        with img:
            if mask and img.format not in _LABEL_FORMATS:
                raise _fail(path, f"holds {img.format} data, not a PNG, TIFF or BMP label map; save label maps "
                            "in a lossless format (JPEG compression changes label values)")
            img.load()
            if img.mode == "P":
                return np.array(img)  # palette indices; the caller decides what they mean
            if img.mode in ("RGBA", "LA", "CMYK", "YCbCr"):
                img = img.convert("RGB")
            return np.array(img)
    except MaskError:
        raise
    except Exception as error:  # truncated or corrupt files raise OSError, struct.error, ...
        raise _fail(path, "cannot read the file; it may be truncated or not an image", error) from error


def _load_tiff(path: Path, mask: bool) -> np.ndarray:
    """The first series of a TIFF file (what ``tifffile.imread`` reads), its size checked first."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        _tiff_pixels(path, series.shape, series.axes)
        if mask and tif.pages[0].compression in (tifffile.COMPRESSION.JPEG, tifffile.COMPRESSION.OJPEG):
            raise _fail(path, "is a JPEG-compressed TIFF; save label maps losslessly (JPEG compression changes "
                        "label values)")
        return np.asarray(tif.asarray())


def _open(path: Path, unreadable: str = "cannot read image; expected a readable image file") -> Image.Image:
    """Pillow's image of ``path``, header read and its size checked; an unreadable header is a MaskError
    saying ``unreadable`` (the pixels may still be truncated: that shows when they are loaded)."""
    limit = max_pixels()
    with _PILLOW_LIMIT:
        Image.MAX_IMAGE_PIXELS = None
        try:
            img = Image.open(path)
        except Exception as error:
            raise _fail(path, unreadable, error) from error
        finally:
            Image.MAX_IMAGE_PIXELS = limit  # Pillow's guard, for its other readers, at the same number
    try:
        _check_pixels(path, (img.height, img.width))
    except MaskError:
        img.close()
        raise
    return img


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
    """(H, W) int64 labels >= 0 from a label map file (see the module doc for the formats).

    Args:
        colours: (C, 3) uint8 class colours; needed for RGB masks whose channels differ, whose
            pixel colours then map to the class index (an unknown colour is an error).

    Raises:
        MaskError: the file is missing, of another type, unreadable, or not a single 2-D label map.
    """
    path = Path(path)
    if path.suffix.lower() not in MASK_SUFFIXES and not path.is_dir():
        raise _fail(path, f"unsupported file type {path.suffix!r}; expected a {', '.join(MASK_SUFFIXES)} label map")
    mask = _load(path, mask=True)
    if mask.ndim == 3 and 1 in (mask.shape[0], mask.shape[-1]):
        mask = mask.reshape(mask.shape[1:] if mask.shape[0] == 1 else mask.shape[:-1])
    if mask.ndim == 3 and mask.shape[-1] == 3:
        if np.array_equal(mask[..., 0], mask[..., 1]) and np.array_equal(mask[..., 0], mask[..., 2]):
            mask = mask[..., 0]  # grey saved as RGB
        elif colours is None:
            raise _fail(path, "is a colour image (mode RGB) with differing channels, read as an RGB colour mask; give "
                        "class colours in the class list, or save single-channel index/palette PNGs")
        else:
            mask = _decode_colours(mask, colours, path)
    if mask.ndim != 2:
        raise _fail(path, f"has shape {mask.shape}; expected a 2-D label map")
    return _as_labels(mask, path)


def _as_labels(mask: np.ndarray, path: Path) -> np.ndarray:
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if np.issubdtype(mask.dtype, np.floating):
        if not (np.all(np.isfinite(mask)) and np.all(mask == np.round(mask))):
            raise _fail(path, "holds non-integer values; expected integer class labels")
        mask = mask.astype(np.int64)
    if not np.issubdtype(mask.dtype, np.integer):
        raise _fail(path, f"holds {mask.dtype} values; expected integer class labels")
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
