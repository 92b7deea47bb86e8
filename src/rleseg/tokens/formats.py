"""Interop with other run-length formats: COCO RLE (pycocotools) and Kaggle "start length" strings.

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

Example::

    >>> import numpy as np
    >>> mask = np.array([[0, 1], [1, 1]], dtype=np.uint8)
    >>> binary_mask_to_coco_rle(mask)
    {'size': [2, 2], 'counts': b'13'}
    >>> mask_to_kaggle_rle(mask)
    '2 3'
"""

from __future__ import annotations

import itertools

import numpy as np

from .runs import Runs, check_label_map, check_order, flat_runs, label_dtype, paint_runs

# A count is a uint32 in pycocotools, so it and the difference of two counts fit in 7 chunks.
_MAX_CHUNKS = 7
# A value needs more than n chunks when it lies outside [-2**(5n-1), 2**(5n-1)), n = 1 .. 6.
_CHUNK_LIMITS = 1 << (5 * np.arange(1, _MAX_CHUNKS, dtype=np.int64) - 1)
_MAX_PIXELS = 2**32


# ------------------------------------------------------------------------------------ validation
def _check_shape(shape) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (H, W), two integers, got {shape!r}") from None
    if height < 0 or width < 0 or (height, width) != tuple(shape):
        raise ValueError(f"shape must be (H, W), two non-negative integers, got {shape!r}")
    if height * width >= _MAX_PIXELS:
        raise ValueError(f"a mask of shape {shape!r} has over 2**32 pixels, more than COCO RLE can count")
    return height, width


def _check_binary_mask(mask) -> np.ndarray:
    mask = check_label_map(mask, 2, "binary mask")
    if mask.size and mask.max() > 1:
        raise ValueError(f"binary mask must hold only 0 and 1 (or be bool), got value {int(mask.max())}")
    _check_shape(mask.shape)
    return mask


def _check_keys(rles: dict) -> None:
    if not isinstance(rles, dict):
        raise ValueError(f"expected a dict of id -> RLE, got {type(rles).__name__}")
    for key in rles:
        if isinstance(key, bool) or not isinstance(key, int | np.integer) or key < 1:
            raise ValueError(f"RLE keys must be labels >= 1 (ints; background 0 is never encoded), got {key!r}")


# ------------------------------------------------------------------------------- counts <-> runs
# Several masks' counts travel laid end to end in one int64 array, mask i owning
# ``counts[bounds[i]:bounds[i + 1]]``, so that a label map's classes are handled in one numpy pass.
def _segment_cumsum(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Cumulative sums of ``values`` restarting at each index in ``first`` (sorted, starting at 0)."""
    total = np.cumsum(values)
    return total - np.repeat(total[first] - values[first], np.diff(np.append(first, values.size)))


def _column_major_runs(label_map: np.ndarray) -> Runs:
    """``flat_runs(label_map.ravel(order="F"))`` without splitting, and without the column-major copy
    of a C-ordered map, which costs several times the run finding itself (5 ms of 6 at 1024x2048)."""
    height, width = label_map.shape
    size = label_map.size
    if size == 0 or label_map.flags.f_contiguous:
        return flat_runs(label_map.ravel(order="F"), max_run=max(size, 1))
    # A run starts where a pixel differs from the one above it, or a column's top pixel from the
    # bottom of the previous column.
    below = np.flatnonzero(label_map[1:] != label_map[:-1])
    rows, cols = np.divmod(below, width)
    top = np.flatnonzero(label_map[0, 1:] != label_map[-1, :-1]) + 1
    change = np.sort(np.concatenate((cols * height + rows + 1, top * height)))
    starts = np.append(0, change)
    lengths = np.append(change, size) - starts
    classes = label_map[starts % height, starts // height].astype(np.int64)
    keep = classes != 0
    return Runs(starts[keep], lengths[keep], classes[keep])


def _counts_of_groups(runs: Runs, first: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """COCO counts and their bounds for several binary masks of ``size`` pixels.

    ``runs`` holds the runs of 1 of every mask, grouped by mask and sorted by start within a group;
    group g starts at run ``first[g]`` and has at least one run.
    """
    n = len(runs)
    ends = runs.ends
    previous_end = np.empty_like(ends)
    previous_end[1:] = ends[:-1]
    previous_end[first] = 0
    last = np.append(first[1:], n) - 1
    tails = size - ends[last]
    # A mask that ends in 1 has no final count of 0, as pycocotools writes it.
    has_tail = (tails > 0).astype(np.int64)
    tails_before = np.cumsum(has_tail) - has_tail
    gap_at = 2 * np.arange(n) + np.repeat(tails_before, np.diff(np.append(first, n)))
    counts = np.empty(2 * n + int(has_tail.sum()), dtype=np.int64)
    counts[gap_at] = runs.starts - previous_end
    counts[gap_at + 1] = runs.lengths
    tail_at = 2 * (last + 1) + tails_before
    counts[tail_at[tails > 0]] = tails[tails > 0]
    return counts, np.append(2 * first + tails_before, counts.size)


def _position_in_mask(bounds: np.ndarray) -> np.ndarray:
    """For each count, its index within its own mask's counts."""
    sizes = np.diff(bounds)
    return np.arange(bounds[-1]) - np.repeat(bounds[:-1], sizes)


def _runs_of_counts(counts: np.ndarray, bounds: np.ndarray, labels: np.ndarray) -> Runs:
    """Runs of 1 of every mask, with the mask's label as class; empty runs are dropped."""
    position = _position_in_mask(bounds)
    nonempty = bounds[:-1][np.diff(bounds) > 0]
    starts = _segment_cumsum(counts, nonempty) - counts
    keep = np.flatnonzero((position % 2 == 1) & (counts > 0))
    mask_of_count = np.repeat(np.arange(len(labels)), np.diff(bounds))
    return Runs(starts[keep], counts[keep], labels[mask_of_count[keep]])


# ----------------------------------------------------------------------- compressed string codec
def _compress_counts(counts: np.ndarray, bounds: np.ndarray) -> list[bytes]:
    """pycocotools' string form of each mask's counts (every mask has at least one count)."""
    values = counts.copy()
    relative = np.flatnonzero(_position_in_mask(bounds) >= 3)
    values[relative] -= counts[relative - 2]
    magnitude = np.where(values < 0, ~values, values)
    num_chunks = 1 + np.searchsorted(_CHUNK_LIMITS, magnitude, side="right")
    chunk_end = np.cumsum(num_chunks)
    chunk = np.arange(chunk_end[-1]) - np.repeat(chunk_end - num_chunks, num_chunks)
    more = chunk < np.repeat(num_chunks - 1, num_chunks)
    chars = ((np.repeat(values, num_chunks) >> (5 * chunk)) & 0x1F) + 48 + 32 * more
    data = chars.astype(np.uint8).tobytes()
    char_bounds = np.append(0, chunk_end)[bounds].tolist()
    return [data[a:b] for a, b in itertools.pairwise(char_bounds)]


def _decompress_counts(texts: list[bytes], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' compressed strings -> int64 counts and their bounds (sums not yet checked)."""
    char_bounds = np.cumsum([0, *map(len, texts)])
    codes = np.frombuffer(b"".join(texts), dtype=np.uint8).astype(np.int64) - 48

    def where(pos: int) -> str:
        i = int(np.searchsorted(char_bounds, pos, side="right")) - 1
        return f"{names[i]}: compressed counts, character {pos - int(char_bounds[i])}"

    bad = np.flatnonzero((codes < 0) | (codes > 63))
    if bad.size:
        raise ValueError(f"{where(int(bad[0]))} ({chr(codes[bad[0]] + 48)!r}) is outside '0'..'o'")
    more = (codes & 32) != 0
    text_ends = char_bounds[1:][np.diff(char_bounds) > 0] - 1
    if more[text_ends].any():
        pos = int(text_ends[np.argmax(more[text_ends])])
        raise ValueError(f"{where(pos)} ends in the middle of a count (it has bit 32 set)")
    last = np.flatnonzero(~more)
    begin = np.append(0, last[:-1] + 1)[: last.size]
    num_chunks = last - begin + 1
    if num_chunks.size and num_chunks.max() > _MAX_CHUNKS:
        i = int(np.argmax(num_chunks > _MAX_CHUNKS))
        raise ValueError(f"{where(int(begin[i]))} starts a count of {num_chunks[i]} characters, "
                         f"more than the {_MAX_CHUNKS} a 32-bit count needs")
    chunk = np.arange(codes.size) - np.repeat(begin, num_chunks)
    values = np.add.reduceat((codes & 0x1F) << (5 * chunk), begin) if codes.size else codes
    negative = (codes[last] & 16) != 0
    values[negative] -= np.int64(1) << (5 * num_chunks[negative])
    bounds = np.searchsorted(last, char_bounds)
    # Undo the differences: count i (i >= 3) was stored minus count i - 2, so each parity is a
    # cumulative sum restarting at counts 0, 1 and 2 of every mask.
    position = _position_in_mask(bounds)
    for parity in (0, 1):
        chain = np.flatnonzero(position % 2 == parity)
        values[chain] = _segment_cumsum(values[chain], np.flatnonzero(position[chain] < 3))
    return values, bounds


def _read_rles(rles: list, names: list[str]) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """Validated shapes, concatenated int64 counts and their bounds of COCO RLE dicts."""
    shapes, pieces, texts, text_of = [], [], [], []
    for i, (rle, name) in enumerate(zip(rles, names, strict=True)):
        if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
            raise ValueError(f"{name} must be a dict with keys 'size' and 'counts', got {rle!r:.80}")
        shapes.append(_check_shape(rle["size"]))
        raw = rle["counts"]
        if isinstance(raw, str):
            if not raw.isascii():
                raise ValueError(f"{name}: compressed counts must be ASCII, got {raw!r:.40}")
            raw = raw.encode("ascii")
        if isinstance(raw, bytes):
            texts.append(raw)
            text_of.append(i)
            pieces.append(None)
            continue
        counts = np.asarray(raw)
        if counts.size == 0:
            counts = counts.astype(np.int64)
        if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer):
            raise ValueError(f"{name}: counts must be a flat list of integers, bytes or str, got {raw!r:.80}")
        pieces.append(counts.astype(np.int64))
    if len(texts) == len(rles):
        counts, bounds = _decompress_counts(texts, names)
    else:
        if texts:
            values, value_bounds = _decompress_counts(texts, [names[i] for i in text_of])
            for j, i in enumerate(text_of):
                pieces[i] = values[value_bounds[j] : value_bounds[j + 1]]
        counts = np.concatenate([np.zeros(0, dtype=np.int64), *pieces])
        bounds = np.cumsum([0, *map(len, pieces)])
    negative = np.flatnonzero(counts < 0)
    if negative.size:
        pos = int(negative[0])
        i = int(np.searchsorted(bounds, pos, side="right")) - 1
        raise ValueError(f"{names[i]}: count {pos - bounds[i]} is negative ({counts[pos]})")
    total = np.append(0, np.cumsum(counts))
    sums = total[bounds[1:]] - total[bounds[:-1]]
    pixels = np.array([h * w for h, w in shapes], dtype=np.int64)
    if np.any(sums != pixels):
        i = int(np.argmax(sums != pixels))
        raise ValueError(f"{names[i]}: counts sum to {sums[i]} pixels, its size {list(shapes[i])} has {pixels[i]}")
    return shapes, counts, bounds


def _rle(shape: tuple[int, int], counts: np.ndarray | bytes, compressed: bool) -> dict:
    return {"size": [shape[0], shape[1]], "counts": counts if compressed else counts.tolist()}


# ------------------------------------------------------------------------------- COCO public API
def binary_mask_to_coco_rle(mask: np.ndarray, compressed: bool = True) -> dict:
    """(H, W) binary mask (0/1 or bool) -> ``{"size": [H, W], "counts": bytes | list[int]}``.

    ``compressed=True`` gives the same dict as ``pycocotools.mask.encode``; ``False`` the list form.
    """
    mask = _check_binary_mask(mask)
    size = mask.size
    runs = _column_major_runs(mask)
    if len(runs) == 0:
        counts, bounds = np.array([size], dtype=np.int64), np.array([0, 1])
    else:
        counts, bounds = _counts_of_groups(runs, np.zeros(1, dtype=np.int64), size)
    return _rle(mask.shape, _compress_counts(counts, bounds)[0] if compressed else counts, compressed)


def coco_rle_to_binary_mask(rle: dict) -> np.ndarray:
    """COCO RLE (counts compressed or a list) -> (H, W) uint8 mask of 0 and 1, like ``mask.decode``."""
    [shape], counts, _ = _read_rles([rle], ["RLE"])
    flat = np.repeat(np.arange(counts.size, dtype=np.uint8) & 1, counts)
    return flat.reshape(shape, order="F")


def _map_to_rles(label_map: np.ndarray, compressed: bool) -> dict[int, dict]:
    size = label_map.size
    runs = _column_major_runs(label_map)
    if len(runs) == 0:
        return {}
    by_label = np.argsort(runs.classes, kind="stable")
    runs = Runs(runs.starts[by_label], runs.lengths[by_label], runs.classes[by_label])
    labels, first = np.unique(runs.classes, return_index=True)
    counts, bounds = _counts_of_groups(runs, first, size)
    if compressed:
        encoded = _compress_counts(counts, bounds)
    else:
        encoded = [counts[a:b] for a, b in itertools.pairwise(bounds)]
    return {int(label): _rle(label_map.shape, e, compressed) for label, e in zip(labels, encoded, strict=True)}


def _rles_to_map(rles: dict, shape) -> np.ndarray:
    _check_keys(rles)
    shape = _check_shape(shape)
    size = shape[0] * shape[1]
    dtype = label_dtype(max(rles, default=1) + 1)
    if not rles:
        return np.zeros(shape, dtype=dtype)
    names = [f"RLE of id {key}" for key in rles]
    shapes, counts, bounds = _read_rles(list(rles.values()), names)
    for name, rle_shape in zip(names, shapes, strict=True):
        if rle_shape != shape:
            raise ValueError(f"{name} has size {list(rle_shape)}, expected {list(shape)}")
    runs = _runs_of_counts(counts, bounds, np.array(list(rles), dtype=np.int64))
    by_start = np.argsort(runs.starts, kind="stable")
    sorted_runs = Runs(runs.starts[by_start], runs.lengths[by_start], runs.classes[by_start])
    disjoint = np.all(sorted_runs.starts[1:] >= sorted_runs.ends[:-1])
    # Overlapping RLEs are painted in dict order, so that the later one wins.
    flat = paint_runs(sorted_runs if disjoint else runs, size, dtype)
    return flat.reshape(shape, order="F")


def label_map_to_coco_rles(
    label_map: np.ndarray, num_classes: int | None = None, compressed: bool = True
) -> dict[int, dict]:
    """(H, W) label map -> {class: COCO RLE of ``label_map == class``} for every class present but 0.

    ``num_classes``, when given, is checked (every label must be below it).
    """
    label_map = check_label_map(label_map, 2, "label_map")
    _check_shape(label_map.shape)
    if num_classes is not None and label_map.size and int(label_map.max()) >= num_classes:
        raise ValueError(f"label_map holds label {int(label_map.max())}, expected labels < {num_classes}")
    return _map_to_rles(label_map, compressed)


def coco_rles_to_label_map(rles: dict[int, dict], shape: tuple[int, int]) -> np.ndarray:
    """{class: COCO RLE} -> (H, W) label map (uint8, or wider past 255 classes), 0 where no RLE is 1.

    Where RLEs overlap, the later one in the dict wins.
    """
    return _rles_to_map(rles, shape)


def instance_map_to_coco_rles(instances: np.ndarray, compressed: bool = True) -> dict[int, dict]:
    """(H, W) instance-id map (0 = no instance) -> {instance id: COCO RLE of its mask}."""
    instances = check_label_map(instances, 2, "instance map")
    _check_shape(instances.shape)
    return _map_to_rles(instances, compressed)


def coco_rles_to_instance_map(rles: dict[int, dict], shape: tuple[int, int]) -> np.ndarray:
    """{instance id: COCO RLE} -> (H, W) instance-id map; where instances overlap, the later one wins."""
    return _rles_to_map(rles, shape)


# ------------------------------------------------------------------------------------ Kaggle
def _check_index_base(index_base: int) -> int:
    if index_base not in (0, 1) or isinstance(index_base, bool):
        raise ValueError(f"index_base must be 0 or 1, got {index_base!r}")
    return int(index_base)


def mask_to_kaggle_rle(mask: np.ndarray, order: str = "F", index_base: int = 1) -> str:
    """(H, W) binary mask -> ``"start length ..."`` of its runs of 1 (starts in ``order``, from ``index_base``)."""
    mask = _check_binary_mask(mask)
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
    height, width = _check_shape(shape)
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


# ------------------------------------------------------------------------------------ COCO panoptic
# A COCO panoptic annotation is an RGB PNG whose pixel colour encodes a segment id,
# ``id = R + 256 * G + 256**2 * B`` (0 = void), plus ``segments_info``: one dict per segment with its
# ``id``, ``category_id``, ``iscrowd``, ``area`` (pixels) and ``bbox`` ([x, y, width, height], pixels,
# x = column of the leftmost pixel). Whether a category is a thing comes from the dataset's
# ``categories`` list (``isthing``), so reading needs the thing category ids.
# rleseg side: ``semantic`` (H, W) classes (0 = void / background) and ``instances`` (H, W) ids (0 = none),
# as PanopticTokenizer encodes and decodes them. ``categories`` maps class -> COCO category id (default:
# the class itself). Reading and writing PNG files is left to the caller (e.g. Pillow).
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
