"""COCO RLE: ``{"size": [H, W], "counts": ...}`` per binary mask, byte-compatible with pycocotools."""

from __future__ import annotations

import itertools

import numpy as np

from ..runs import Runs, check_label_map, flat_runs, label_dtype, paint_runs

# A count is a uint32 in pycocotools, so it and the difference of two counts fit in 7 chunks.
_MAX_CHUNKS = 7
# A value needs more than n chunks when it lies outside [-2**(5n-1), 2**(5n-1)), n = 1 .. 6.
_CHUNK_LIMITS = 1 << (5 * np.arange(1, _MAX_CHUNKS, dtype=np.int64) - 1)
_MAX_PIXELS = 2**32


# ------------------------------------------------------------------------------------ validation
def check_shape(shape) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (H, W), two integers, got {shape!r}") from None
    if height < 0 or width < 0 or (height, width) != tuple(shape):
        raise ValueError(f"shape must be (H, W), two non-negative integers, got {shape!r}")
    if height * width >= _MAX_PIXELS:
        raise ValueError(f"a mask of shape {shape!r} has over 2**32 pixels, more than COCO RLE can count")
    return height, width


def check_binary_mask(mask) -> np.ndarray:
    mask = check_label_map(mask, 2, "binary mask")
    if mask.size and mask.max() > 1:
        raise ValueError(f"binary mask must hold only 0 and 1 (or be bool), got value {int(mask.max())}")
    check_shape(mask.shape)
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
        shapes.append(check_shape(rle["size"]))
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
    mask = check_binary_mask(mask)
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
    shape = check_shape(shape)
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
    label_map = check_label_map(label_map, 2, "label_map", num_classes)
    check_shape(label_map.shape)
    return _map_to_rles(label_map, compressed)


def coco_rles_to_label_map(rles: dict[int, dict], shape: tuple[int, int]) -> np.ndarray:
    """{class: COCO RLE} -> (H, W) label map (uint8, or wider past 255 classes), 0 where no RLE is 1.

    Where RLEs overlap, the later one in the dict wins.
    """
    return _rles_to_map(rles, shape)


def instance_map_to_coco_rles(instances: np.ndarray, compressed: bool = True) -> dict[int, dict]:
    """(H, W) instance-id map (0 = no instance) -> {instance id: COCO RLE of its mask}."""
    instances = check_label_map(instances, 2, "instance map")
    check_shape(instances.shape)
    return _map_to_rles(instances, compressed)


def coco_rles_to_instance_map(rles: dict[int, dict], shape: tuple[int, int]) -> np.ndarray:
    """{instance id: COCO RLE} -> (H, W) instance-id map; where instances overlap, the later one wins."""
    return _rles_to_map(rles, shape)
