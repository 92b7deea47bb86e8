"""The paper's patch pipeline: resize, sliding-window patches and augmentation (stitching the
predictions back is inference's: ``rleseg.inference.stitch``).

Conventions: boxes are ``(y0, x0, y1, x1)`` int64 in pixels of the (resized) image, ``y1 - y0 ==
x1 - x0 == patch_size``; a box may reach past an image smaller than the patch, the crop is then
padded (image with 0, mask with ``ignore_index``). Windows along an axis start at 0, step by the
stride and always include one window flush with the far edge, so every pixel is covered.
Image-like arrays carry the spatial axes at (-3, -2) (``(..., H, W, 3)``), label maps at (-2, -1)
(``(..., H, W)``); a leading frame axis is allowed for video and every frame gets the same transform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from rleseg.tokens import downsample_mask
from rleseg.typed_yaml import check_range


@dataclass(frozen=True)
class PatchConfig:
    """How images become patches. Training turns on ``stride_range`` and the augmentations."""

    patch_size: int = 640  # P, pixels of the (resized) image per patch side
    factor: int = 8  # s, mask subsampling: the tokenizer sees ceil(P/s) x ceil(P/s) masks
    stride: int | None = None  # fixed window step; None = patch_size (no overlap)
    stride_range: tuple[int, int] | None = None  # training: each step drawn from [low, high]
    scale: float = 1.0  # resize factor applied to the whole image before patching
    rot90: bool = False  # random multiple of 90 degrees
    flip: bool = False  # random horizontal and vertical flips
    max_angle: float = 0.0  # random extra rotation in [-max_angle, max_angle] degrees (0 = off)
    # "nearest" (the paper's) or "mode" (each cell's most frequent label); see rleseg.tokens.downsample_mask
    downsample: Literal["nearest", "mode"] = "nearest"
    # Training: the probability that a patch whose subsampled mask has no foreground cell is kept; a dropped
    # one is replaced by a patch drawn at random (rleseg.data.dataset). The paper kept 0.1 of them; 1 keeps all.
    empty_keep: float = 1.0

    def __post_init__(self) -> None:
        check_range(self, 1, None, "patch_size", "factor", "stride")
        check_range(self, 0, None, "scale", low_open=True)
        check_range(self, 0, 180, "max_angle")
        check_range(self, 0, 1, "empty_keep")
        # Inference cuts images into patches of whole mask cells, so a model trained otherwise could not be used.
        if self.patch_size % self.factor:
            raise ValueError(f"patch_size must be a multiple of factor {self.factor}, got {self.patch_size}")
        if self.stride_range is not None:
            low, high = self.stride_range
            if not 1 <= low <= high:
                raise ValueError(f"stride_range must be (low, high) with 1 <= low <= high, got {self.stride_range}")

    @property
    def mask_size(self) -> tuple[int, int]:
        side = -(-self.patch_size // self.factor)
        return (side, side)

    @property
    def nominal_stride(self) -> int:
        """The step that sets how many patches an image contributes per epoch."""
        if self.stride_range is not None:
            return (self.stride_range[0] + self.stride_range[1]) // 2
        return self.stride or self.patch_size


# --------------------------------------------------------------------------------------- windows
def window_starts(length: int, patch: int, stride: int) -> np.ndarray:
    """Starts of windows of size ``patch`` along an axis of ``length`` pixels, the last flush with the end."""
    if length <= patch:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, length - patch, stride, dtype=np.int64)
    return np.append(starts, length - patch)


def random_window_starts(
    length: int, patch: int, stride_range: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Like :func:`window_starts`, each step drawn uniformly from ``stride_range`` (inclusive)."""
    if length <= patch:
        return np.zeros(1, dtype=np.int64)
    low, high = stride_range
    steps = rng.integers(low, high + 1, (length - patch) // low + 1)
    starts = np.concatenate(([0], np.cumsum(steps))).astype(np.int64)
    return np.append(starts[starts < length - patch], length - patch)


def sliding_windows(
    shape: tuple[int, int],
    patch: int,
    stride: int | None = None,
    stride_range: tuple[int, int] | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """(K, 4) int64 boxes ``(y0, x0, y1, x1)`` tiling an image of ``shape``, row by row."""
    if stride_range is not None:
        if rng is None:
            raise ValueError("random strides need a generator: pass rng")
        rows = random_window_starts(shape[0], patch, stride_range, rng)
        cols = random_window_starts(shape[1], patch, stride_range, rng)
    else:
        rows = window_starts(shape[0], patch, stride or patch)
        cols = window_starts(shape[1], patch, stride or patch)
    y0, x0 = np.meshgrid(rows, cols, indexing="ij")
    y0, x0 = y0.ravel(), x0.ravel()
    return np.stack([y0, x0, y0 + patch, x0 + patch], axis=1)


def count_windows(shape: tuple[int, int], patch: int, stride: int) -> int:
    return len(window_starts(shape[0], patch, stride)) * len(window_starts(shape[1], patch, stride))


def crop(array: np.ndarray, box: np.ndarray, fill: float, axis: int) -> np.ndarray:
    """Cut ``box`` out of ``array`` whose rows are on ``axis`` (-3 for images, -2 for label maps);
    the part of the box outside the array is filled with ``fill``."""
    y0, x0, y1, x1 = (int(v) for v in box)
    height, width = array.shape[axis], array.shape[axis + 1]
    index = [slice(None)] * array.ndim
    index[axis], index[axis + 1] = slice(y0, min(y1, height)), slice(x0, min(x1, width))
    part = array[tuple(index)]
    pad_h, pad_w = y1 - y0 - part.shape[axis], x1 - x0 - part.shape[axis + 1]
    if pad_h == 0 and pad_w == 0:
        return part
    pad = [(0, 0)] * array.ndim
    pad[axis], pad[axis + 1] = (0, pad_h), (0, pad_w)
    return np.pad(part, pad, constant_values=fill)


# --------------------------------------------------------------------------------------- resampling
def _sample(array: np.ndarray, rows: np.ndarray, cols: np.ndarray, axis: int, fill: float, linear: bool):
    """Read ``array`` at fractional pixel coordinates (``rows``, ``cols`` broadcast to the output
    grid); points off the array get ``fill``. Nearest for labels, bilinear for images."""
    data = np.moveaxis(array, (axis, axis + 1), (0, 1))  # (H, W, ...)
    height, width = data.shape[:2]
    rows, cols = np.broadcast_arrays(np.asarray(rows, np.float32), np.asarray(cols, np.float32))
    outside = (rows < -0.5) | (rows > height - 0.5) | (cols < -0.5) | (cols > width - 0.5)
    flat = data.reshape(height * width, *data.shape[2:])

    def at(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        # np.take on one flat axis is several times faster than 2-D fancy indexing.
        return np.take(flat, (r * width + c).ravel(), axis=0).reshape(*r.shape, *data.shape[2:])

    if linear:
        r0, c0 = np.floor(rows), np.floor(cols)
        fr, fc = rows - r0, cols - c0
        r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
        ra, rb = np.clip(r0, 0, height - 1), np.clip(r0 + 1, 0, height - 1)
        ca, cb = np.clip(c0, 0, width - 1), np.clip(c0 + 1, 0, width - 1)
        extra = (Ellipsis,) + (None,) * (data.ndim - 2)
        fr, fc = fr[extra], fc[extra]
        top = at(ra, ca) * (1 - fc) + at(ra, cb) * fc
        bottom = at(rb, ca) * (1 - fc) + at(rb, cb) * fc
        out = (top * (1 - fr) + bottom * fr).astype(array.dtype)
    else:
        r = np.clip(np.rint(rows).astype(np.int64), 0, height - 1)
        c = np.clip(np.rint(cols).astype(np.int64), 0, width - 1)
        out = at(r, c)
    if outside.any():
        out[outside] = fill
    return np.moveaxis(out, (0, 1), (axis, axis + 1))


def resize(array: np.ndarray, shape: tuple[int, int], axis: int, linear: bool) -> np.ndarray:
    """Resize the spatial axes (``axis``, ``axis + 1``) to ``shape``: bilinear or nearest."""
    height, width = array.shape[axis], array.shape[axis + 1]
    if (height, width) == tuple(shape):
        return array
    rows = (np.arange(shape[0]) + 0.5) * (height / shape[0]) - 0.5
    cols = (np.arange(shape[1]) + 0.5) * (width / shape[1]) - 0.5
    rows, cols = np.clip(rows, 0, height - 1), np.clip(cols, 0, width - 1)
    return _sample(array, rows[:, None], cols[None, :], axis, 0, linear)


def scaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    return (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))


def rotate(array: np.ndarray, degrees: float, axis: int, fill: float, linear: bool) -> np.ndarray:
    """Rotate the spatial axes about the centre by ``degrees`` (counter-clockwise), same size;
    the corners that come from outside get ``fill``."""
    height, width = array.shape[axis], array.shape[axis + 1]
    theta = np.deg2rad(degrees)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    y = np.arange(height)[:, None] - cy
    x = np.arange(width)[None, :] - cx
    # Inverse map: the output pixel (y, x) reads the input at the point rotated back by theta.
    rows = cy + np.cos(theta) * y - np.sin(theta) * x
    cols = cx + np.sin(theta) * y + np.cos(theta) * x
    return _sample(array, rows, cols, axis, fill, linear)


@dataclass(frozen=True)
class Augmentation:
    """One draw of the random geometric transform, applied identically to every array of a sample."""

    quarter_turns: int = 0
    flip_rows: bool = False
    flip_cols: bool = False
    degrees: float = 0.0

    @staticmethod
    def draw(config: PatchConfig, rng: np.random.Generator) -> Augmentation:
        turns = int(rng.integers(4)) if config.rot90 else 0
        flips = rng.integers(2, size=2).astype(bool) if config.flip else (False, False)
        degrees = float(rng.uniform(-config.max_angle, config.max_angle)) if config.max_angle > 0 else 0.0
        return Augmentation(turns, bool(flips[0]), bool(flips[1]), degrees)

    def apply(self, array: np.ndarray, axis: int, fill: float, linear: bool) -> np.ndarray:
        """Transform the spatial axes (``axis``, ``axis + 1``); ``linear`` for images, not labels."""
        axes = (array.ndim + axis, array.ndim + axis + 1)
        if self.quarter_turns:
            array = np.rot90(array, self.quarter_turns, axes=axes)
        if self.flip_rows:
            array = np.flip(array, axis=axes[0])
        if self.flip_cols:
            array = np.flip(array, axis=axes[1])
        if self.degrees:
            array = rotate(array, self.degrees, axis, fill, linear)
        return np.ascontiguousarray(array)


# --------------------------------------------------------------------------------------- one patch
def make_patch(
    image: np.ndarray,
    mask: np.ndarray,
    box: np.ndarray,
    config: PatchConfig,
    rng: np.random.Generator,
    ignore_index: int,
    instances: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Crop one window out of an already resized image/mask, augment it, subsample the mask.

    Args:
        image: (..., H, W, 3) float32 in [0, 1].
        mask: (..., H, W) integer labels, ``ignore_index`` kept.
        instances: optional (..., H, W) instance ids, transformed like the mask (fill 0).

    Returns:
        image (..., P, P, 3), mask (..., P, P), mask_small (..., P/s, P/s), and instances and
        instances_small when given.
    """
    aug = Augmentation.draw(config, rng)
    out = {
        "image": aug.apply(crop(image, box, 0.0, -3), -3, 0.0, linear=True),
        "mask": aug.apply(crop(mask, box, ignore_index, -2), -2, ignore_index, linear=False),
    }
    out["mask_small"] = downsample_mask(out["mask"], config.factor, config.downsample)
    if instances is not None:
        out["instances"] = aug.apply(crop(instances, box, 0, -2), -2, 0, linear=False)
        out["instances_small"] = downsample_mask(out["instances"], config.factor, config.downsample)
    return out
