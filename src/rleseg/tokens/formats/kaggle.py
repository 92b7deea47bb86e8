"""Kaggle-style ``"start length ..."`` strings for binary masks."""

from __future__ import annotations

import numpy as np

from ..runs import Runs, check_order, flat_runs, paint_runs
from .coco import check_binary_mask, check_shape


def _check_index_base(index_base: int) -> int:
    if index_base not in (0, 1) or isinstance(index_base, bool):
        raise ValueError(f"index_base must be 0 or 1, got {index_base!r}")
    return int(index_base)


def mask_to_kaggle_rle(mask: np.ndarray, order: str = "F", index_base: int = 1) -> str:
    """(H, W) binary mask -> ``"start length ..."`` of its runs of 1 (starts in ``order``, from ``index_base``)."""
    mask = check_binary_mask(mask)
    runs = flat_runs(mask.ravel(order=check_order(order)), max_run=max(mask.size, 1))
    pairs = np.stack([runs.starts + _check_index_base(index_base), runs.lengths], axis=1)
    return " ".join(map(str, pairs.ravel().tolist()))


def _parse_integers(text: str) -> np.ndarray:
    words = text.split()
    try:
        return np.array(words, dtype=np.int64)
    except (ValueError, OverflowError):
        pass
    for i, word in enumerate(words):
        try:
            value = int(word)
        except ValueError:
            raise ValueError(f"Kaggle RLE value {word!r} at position {i} is not an integer") from None
        if abs(value) >= 2**63:
            raise ValueError(f"Kaggle RLE value {word} at position {i} is out of range")
    raise AssertionError("unreachable: numpy rejected integers that int() accepts")


def kaggle_rle_to_mask(
    text: str, shape: tuple[int, int], order: str = "F", index_base: int = 1
) -> np.ndarray:
    """``"start length ..."`` -> (H, W) uint8 mask of 0 and 1; overlapping or unsorted runs are allowed."""
    if not isinstance(text, str):
        raise ValueError(f"Kaggle RLE must be a str, got {type(text).__name__} {text!r:.40}")
    height, width = check_shape(shape)
    size = height * width
    values = _parse_integers(text)
    if values.size % 2:
        raise ValueError(f"Kaggle RLE has {values.size} values, an odd number; expected start length pairs")
    starts = values[0::2] - _check_index_base(index_base)
    lengths = values[1::2]
    bad = np.flatnonzero((starts < 0) | (starts >= size) | (lengths < 1) | (lengths > size - starts))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"Kaggle RLE run {i} (start {values[2 * i]}, length {lengths[i]}) does not fit in a "
            f"{height}x{width} mask of {size} pixels (starts from {index_base}, lengths >= 1)"
        )
    runs = Runs(starts, lengths, np.ones(starts.size, dtype=np.int64))
    return paint_runs(runs, size, np.uint8).reshape((height, width), order=check_order(order))
