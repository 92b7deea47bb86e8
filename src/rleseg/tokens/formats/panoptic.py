"""COCO panoptic annotations: RGB segment-id PNGs plus ``segments_info``, to and from rleseg's maps.

A COCO panoptic annotation is an RGB PNG whose pixel colour encodes a segment id,
``id = R + 256 * G + 256**2 * B`` (0 = void), plus ``segments_info``: one dict per segment with its
``id``, ``category_id``, ``iscrowd``, ``area`` (pixels) and ``bbox`` ([x, y, width, height], pixels,
x = column of the leftmost pixel). Whether a category is a thing comes from the dataset's
``categories`` list (``isthing``), so reading needs the thing category ids.
rleseg side: ``semantic`` (H, W) classes (0 = void / background) and ``instances`` (H, W) ids (0 = none),
as PanopticTokenizer encodes and decodes them. ``categories`` maps class -> COCO category id (default:
the class itself). Reading and writing PNG files is left to the caller (e.g. Pillow).
"""

from __future__ import annotations

import numpy as np

from ..runs import check_label_map, label_dtype

_MAX_SEGMENT_ID = 256**3 - 1


def coco_panoptic_ids(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) COCO panoptic colours -> (H, W) int64 segment ids ``R + 256 G + 256**2 B``."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"a COCO panoptic image must have shape (H, W, 3), got {rgb.shape}")
    if not np.issubdtype(rgb.dtype, np.integer) or (rgb.size and (rgb.min() < 0 or rgb.max() > 255)):
        raise ValueError(f"a COCO panoptic image must hold integers 0 .. 255, got dtype {rgb.dtype}")
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]


def coco_panoptic_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) segment ids -> (H, W, 3) uint8 colours, the inverse of :func:`coco_panoptic_ids`."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() > _MAX_SEGMENT_ID):
        raise ValueError(f"COCO panoptic segment ids must lie in 0 .. {_MAX_SEGMENT_ID}")
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2], axis=-1).astype(np.uint8)


def _category_table(categories, largest: int) -> dict[int, int]:
    if categories is None:
        return {c: c for c in range(1, largest + 1)}
    table = dict(categories) if isinstance(categories, dict) else dict(enumerate(categories))
    table.pop(0, None)  # class 0 is void and has no category
    ids = list(table.values())
    if len(set(ids)) != len(ids):
        raise ValueError(f"categories maps two classes to one COCO category id: {table}")
    return {int(c): int(v) for c, v in table.items()}


def panoptic_to_coco(
    semantic: np.ndarray, instances: np.ndarray, categories=None, thing_classes=None
) -> tuple[np.ndarray, list[dict]]:
    """(semantic, instances) -> (COCO panoptic (H, W, 3) uint8 image, segments_info).

    Every distinct non-zero instance id on non-void pixels becomes one thing segment (it must cover one
    class); the pixels of each class without an instance id become one stuff segment. Segment ids are
    1, 2, ...: things in increasing instance id, then stuff in increasing class. ``iscrowd`` is 0.

    Args:
        categories: class -> COCO category id, as a dict or a sequence indexed by class; default identity.
        thing_classes: if given, instance ids on other classes are ignored (as PanopticTokenizer does)
            and a thing pixel without an instance id is an error.
    """
    semantic = check_label_map(semantic, name="semantic").astype(np.int64)
    instances = check_label_map(instances, name="instances").astype(np.int64)
    if semantic.shape != instances.shape:
        raise ValueError(f"semantic {semantic.shape} and instances {instances.shape} must have the same shape")
    table = _category_table(categories, int(semantic.max(initial=0)))
    missing = sorted(set(np.unique(semantic[semantic > 0]).tolist()) - set(table))
    if missing:
        raise ValueError(f"classes {missing} have no COCO category id in categories")
    if thing_classes is not None:
        thing = np.isin(semantic, list(thing_classes))
        if np.any(thing & (instances == 0)):
            raise ValueError("a pixel of a thing class has instance id 0; every thing pixel needs an instance id")
        instances = np.where(thing, instances, 0)
    instances = np.where(semantic > 0, instances, 0)
    thing_ids, thing_key = np.unique(instances[instances > 0], return_inverse=True)
    stuff_classes = np.unique(semantic[(semantic > 0) & (instances == 0)])
    # Segment ids: things 1..K by instance id, then stuff K+1.. by class.
    segments = np.zeros(semantic.shape, dtype=np.int64)
    segments[instances > 0] = thing_key + 1
    stuff_id = np.zeros(int(semantic.max(initial=0)) + 1, dtype=np.int64)
    stuff_id[stuff_classes] = thing_ids.size + 1 + np.arange(stuff_classes.size)
    segments = np.where((semantic > 0) & (instances == 0), stuff_id[semantic], segments)
    count = thing_ids.size + stuff_classes.size
    if count > _MAX_SEGMENT_ID:
        raise ValueError(f"{count} segments do not fit the 24-bit ids of COCO panoptic")
    # Per-segment class (checked single), area and bounding box, over all labelled pixels at once.
    rows, cols = np.nonzero(segments)
    seg = segments[rows, cols]
    labels = semantic[rows, cols]
    low = np.full(count + 1, np.iinfo(np.int64).max)
    high = np.full(count + 1, -1)
    np.minimum.at(low, seg, labels)
    np.maximum.at(high, seg, labels)
    mixed = np.flatnonzero(low[1 : thing_ids.size + 1] != high[1 : thing_ids.size + 1])
    if mixed.size:
        i = int(mixed[0])
        raise ValueError(f"instance id {thing_ids[i]} covers pixels of classes {low[i + 1]} and {high[i + 1]}")
    area = np.bincount(seg, minlength=count + 1)
    bounds = []
    for coord in (cols, rows):
        first, last = np.full(count + 1, np.iinfo(np.int64).max), np.full(count + 1, -1)
        np.minimum.at(first, seg, coord)
        np.maximum.at(last, seg, coord)
        bounds.append((first, last))
    (x0, x1), (y0, y1) = bounds
    info = [
        {
            "id": s,
            "category_id": table[int(low[s])],
            "iscrowd": 0,
            "area": int(area[s]),
            "bbox": [int(x0[s]), int(y0[s]), int(x1[s] - x0[s] + 1), int(y1[s] - y0[s] + 1)],
        }
        for s in range(1, count + 1)
    ]
    return coco_panoptic_rgb(segments), info


def coco_to_panoptic(
    rgb: np.ndarray, segments_info: list[dict], thing_categories, categories=None, crowd: str = "void"
) -> tuple[np.ndarray, np.ndarray]:
    """COCO panoptic image + segments_info -> (semantic (H, W) classes, instances (H, W) int32 ids).

    Thing segments get instance ids 1, 2, ... in ``segments_info`` order; stuff segments get instance 0
    (two stuff segments of one category merge into that class). Void pixels (id 0) get class 0.

    Args:
        thing_categories: the COCO category ids that are things (``isthing`` in the dataset's categories).
        categories: class -> COCO category id, as for :func:`panoptic_to_coco`; default identity.
        crowd: "void" turns crowd segments (``iscrowd`` 1) into void, as COCO's panoptic evaluation
            ignores them; "instance" keeps each as an ordinary segment.
    """
    if crowd not in ("void", "instance"):
        raise ValueError(f"crowd must be 'void' or 'instance', got {crowd!r}")
    ids = coco_panoptic_ids(rgb)
    try:
        seg_ids = np.array([int(s["id"]) for s in segments_info], dtype=np.int64)
        seg_categories = [int(s["category_id"]) for s in segments_info]
        seg_crowd = np.array([bool(s.get("iscrowd", 0)) for s in segments_info], dtype=bool)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"each segments_info entry needs integer 'id' and 'category_id': {error}") from None
    if np.unique(seg_ids).size != seg_ids.size or np.any(seg_ids <= 0):
        raise ValueError("segments_info ids must be distinct and positive")
    things = {int(c) for c in thing_categories}
    if categories is None:
        to_class = {c: c for c in seg_categories}
    else:
        to_class = {v: c for c, v in _category_table(categories, 0).items()}
    unknown = sorted(set(seg_categories) - set(to_class))
    if unknown:
        raise ValueError(f"COCO category ids {unknown} have no class in categories")
    seg_class = np.array([to_class[c] for c in seg_categories], dtype=np.int64)
    is_thing = np.array([c in things for c in seg_categories], dtype=bool)
    void = seg_crowd if crowd == "void" else np.zeros_like(seg_crowd)
    seg_class = np.where(void, 0, seg_class)
    keep_thing = is_thing & ~void
    seg_instance = np.where(keep_thing, np.cumsum(keep_thing), 0)
    # Look every pixel's id up among the segments: index 0 stands for void.
    order = np.argsort(seg_ids)
    sorted_ids = np.append(seg_ids[order], _MAX_SEGMENT_ID + 1)  # a sentinel no pixel can match
    where = np.searchsorted(sorted_ids, ids)
    found = sorted_ids[where] == ids
    stray = (ids > 0) & ~found
    if np.any(stray):
        raise ValueError(f"segment id {int(ids[stray][0])} appears in the image but not in segments_info")
    index = np.where(found, np.append(order, -1)[where] + 1, 0)
    class_of = np.concatenate(([0], seg_class))
    instance_of = np.concatenate(([0], seg_instance))
    semantic = class_of[index].astype(label_dtype(int(class_of.max()) + 1))
    return semantic, instance_of[index].astype(np.int32)
