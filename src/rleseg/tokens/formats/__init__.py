"""Interop with other formats: COCO RLE (pycocotools), COCO panoptic PNGs and Kaggle "start length" strings.

Numpy only: pycocotools is not needed at run time (the tests check our output against it).

COCO RLE
    A dict ``{"size": [H, W], "counts": ...}`` for one binary mask. ``counts`` are the lengths of
    alternating runs of 0 and 1 along the mask flattened in column-major (Fortran) order, starting
    with a run of 0 that may be empty. They come as a list of ints (the "uncompressed" form of COCO
    JSON crowd annotations) or as pycocotools' compressed string: each count (from the fourth on, the
    difference with the count two places earlier, so it may be negative) is written as 5-bit
    two's-complement chunks, least significant first, one ASCII character per chunk:
    ``48 + chunk``, plus 32 when another chunk of the same count follows.

    Output is byte-compatible with ``pycocotools.mask.encode(np.asfortranarray(mask))``: compressed
    counts are ``bytes``, as pycocotools returns them (``rle["counts"].decode("ascii")`` before
    writing JSON); input counts may be a list, ``bytes`` or ``str``. A label map or an instance map
    becomes one RLE per non-zero value, keyed by that value.

Kaggle
    ``"start length start length ..."`` for one binary mask: starts of the runs of 1, in the given
    raster order ("F", column-major, in most Kaggle competitions) and ``index_base`` (usually 1).
    An empty mask is the empty string.

COCO panoptic
    An RGB PNG of segment ids (``id = R + 256 G + 256**2 B``) plus ``segments_info``, to and from
    rleseg's (semantic, instances) maps; see :mod:`rleseg.tokens.formats.panoptic`.

Example::

    >>> import numpy as np
    >>> mask = np.array([[0, 1], [1, 1]], dtype=np.uint8)
    >>> binary_mask_to_coco_rle(mask)
    {'size': [2, 2], 'counts': b'13'}
    >>> mask_to_kaggle_rle(mask)
    '2 3'
"""

from .coco import (
    binary_mask_to_coco_rle,
    coco_rle_to_binary_mask,
    coco_rles_to_instance_map,
    coco_rles_to_label_map,
    instance_map_to_coco_rles,
    label_map_to_coco_rles,
)
from .kaggle import kaggle_rle_to_mask, mask_to_kaggle_rle
from .panoptic import coco_panoptic_ids, coco_panoptic_rgb, coco_to_panoptic, panoptic_to_coco

__all__ = [
    "binary_mask_to_coco_rle",
    "coco_panoptic_ids",
    "coco_panoptic_rgb",
    "coco_rle_to_binary_mask",
    "coco_rles_to_instance_map",
    "coco_rles_to_label_map",
    "coco_to_panoptic",
    "instance_map_to_coco_rles",
    "kaggle_rle_to_mask",
    "label_map_to_coco_rles",
    "mask_to_kaggle_rle",
    "panoptic_to_coco",
]
