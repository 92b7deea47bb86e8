"""Stitching: per-patch predictions back into one label map of the whole image (and video windows
back into one sequence).

Each patch's label map, at the subsampled size ``(P/s, P/s)``, is upsampled (nearest) by ``s`` and
pasted at its box (``(y0, x0, y1, x1)`` in pixels of the resized image, as
``rleseg.data.patches.sliding_windows`` cuts them); where patches overlap, a pixel takes the majority
label (ties go to the patch in which the pixel lies farther from the border) or, when scores are
given, the label of the highest-scoring patch. Panoptic patches are stitched by that score alone
(:func:`stitch_panoptic_patches`), so that a pixel's class and instance come from one patch, after the
instances that patch borders cut are joined across patches (``PANOPTIC_JOINS``).
"""

from __future__ import annotations

import numpy as np

from ..data.patches import PatchConfig, resize, scaled_shape
from ..tokens import upsample_mask

# How instances are joined across patches (stitch_panoptic_patches): "touch" joins across every window
# border, "overlap" only where windows overlap, "none" leaves each patch's instances apart.
PANOPTIC_JOINS = ("touch", "overlap", "none")


def _centrality(size: int) -> np.ndarray:
    """(size, size) weight in [0, 1): distance to the nearest patch border, scaled down so that as a vote
    weight it only ever breaks ties between equal vote counts (as a score only its order matters)."""
    edge = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32)
    return np.minimum(edge[:, None], edge[None, :]) / (size * 4.0)


def stitch(
    predictions: np.ndarray,
    boxes: np.ndarray,
    shape: tuple[int, int],
    factor: int,
    num_classes: int,
    scores: np.ndarray | None = None,
    fill: int = 0,
) -> np.ndarray:
    """Merge per-patch label maps into one full-resolution (H, W) int64 label map.

    Args:
        predictions: (K, h, w) subsampled label maps, values in 0..num_classes-1.
        boxes: (K, 4) ``(y0, x0, y1, x1)`` of each patch in the image, ``y1 - y0 == h * factor``
            (or the patch size when ``h * factor`` overshoots it).
        shape: (H, W) of the image the boxes refer to.
        scores: optional (K,) or (K, h, w) confidences; then each pixel takes the label of the
            highest-scoring patch covering it instead of the majority vote.
        fill: label of pixels no box covers.
    """
    predictions, boxes = np.asarray(predictions), np.asarray(boxes, dtype=np.int64)
    if predictions.ndim != 3 or len(predictions) != len(boxes):
        raise ValueError(f"predictions must be (K, h, w) with one box each, got {predictions.shape}, {boxes.shape}")
    if predictions.size and (predictions.min() < 0 or predictions.max() >= num_classes):
        raise ValueError(f"prediction labels must lie in 0..{num_classes - 1}")
    if factor > 1 and not (boxes % factor).any():
        # Boxes on the subsampling grid: vote (or rank scores, constant over a cell too) on that grid,
        # factor**2 fewer pixels, then upsample.
        coarse = (-(-shape[0] // factor), -(-shape[1] // factor))
        labels = stitch(predictions, boxes // factor, coarse, 1, num_classes, scores, fill)
        return upsample_mask(labels, factor, shape)
    if scores is not None:
        return _stitch_by_score(predictions, boxes, shape, factor, np.asarray(scores, np.float32), fill)
    pieces = [piece[:3] for piece in _pieces(predictions, boxes, shape, factor)]
    # One vote map per label present (not a (C, H, W) array): memory stays 3 maps of the image.
    labels = np.full(shape, fill, dtype=np.int64)
    best = np.zeros(shape, dtype=np.float32)
    for label in np.unique(predictions):
        votes = np.zeros(shape, dtype=np.float32)
        for window, piece, weight in pieces:
            votes[window] += (piece == label) * weight
        better = votes > best
        labels[better], best[better] = label, votes[better]
    return labels


def _pieces(predictions: np.ndarray, boxes: np.ndarray, shape: tuple[int, int], factor: int):
    """Per patch: the image slice it covers, its upsampled labels there and their vote weights."""
    for k, (pred, box) in enumerate(zip(predictions, boxes, strict=True)):
        size = int(box[2] - box[0])
        height, width = min(size, shape[0] - int(box[0])), min(size, shape[1] - int(box[1]))
        window = (slice(int(box[0]), int(box[0]) + height), slice(int(box[1]), int(box[1]) + width))
        up = upsample_mask(pred, factor)[:height, :width]
        yield window, up, 1.0 + _centrality(size)[:height, :width], k


def _stitch_by_score(predictions, boxes, shape, factor, scores, fill) -> np.ndarray:
    labels = np.full(shape, fill, dtype=np.int64)
    best = np.full(shape, -np.inf, dtype=np.float32)
    for window, up, _, k in _pieces(predictions, boxes, shape, factor):
        score = scores[k] if scores.ndim == 1 else upsample_mask(scores[k], factor)[: up.shape[0], : up.shape[1]]
        score = np.broadcast_to(score, up.shape)
        better = score > best[window]
        best[window] = np.where(better, score, best[window])
        labels[window] = np.where(better, up, labels[window])
    return labels


def stitch_windows(predictions: np.ndarray, starts: np.ndarray, num_frames: int, num_classes: int) -> np.ndarray:
    """Merge overlapping video windows per frame by majority vote.

    Args:
        predictions: (num_windows, N, H, W) label maps of windows of N frames.
        starts: (num_windows,) first frame of each window.
        num_frames: T, frames of the whole sequence.

    Returns:
        (T, H, W) int64; a frame no window covers is all 0. Ties go to the smaller label.
    """
    predictions, starts = np.asarray(predictions), np.asarray(starts, dtype=np.int64)
    windows, frames = predictions.shape[:2]
    if starts.min(initial=0) < 0 or starts.max(initial=0) + frames > num_frames:
        raise ValueError(f"windows of {frames} frames starting at {starts.tolist()} overrun {num_frames} frames")
    pixels = int(np.prod(predictions.shape[2:]))
    frame = (starts[:, None] + np.arange(frames)[None, :])[..., None]  # (num_windows, N, 1)
    index = (frame * num_classes + predictions.reshape(windows, frames, -1)) * pixels + np.arange(pixels)
    votes = np.bincount(index.ravel(), minlength=num_frames * num_classes * pixels)
    votes = votes.reshape(num_frames, num_classes, *predictions.shape[2:])
    return votes.argmax(axis=1).astype(np.int64)


def stitch_patches_of_image(
    predictions: np.ndarray,
    boxes: np.ndarray,
    config: PatchConfig,
    original_shape: tuple[int, int],
    num_classes: int,
    scores: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`stitch` in the resized frame of ``config.scale``, then back to ``original_shape`` (nearest)."""
    resized = scaled_shape(original_shape, config.scale)
    labels = stitch(predictions, boxes, resized, config.factor, num_classes, scores)
    return resize(labels, original_shape, -2, linear=False)


def stitch_score_maps(
    score_maps: np.ndarray, predictions: np.ndarray, boxes: np.ndarray, config: PatchConfig, labels: np.ndarray
) -> np.ndarray:
    """Per-patch score maps (K, h, w) -> (H, W) float32 beside the stitched ``labels`` (H, W) of the image.

    Each pixel takes its score from a patch whose label there (``predictions`` (K, h, w), ``h`` a whole
    multiple of the score maps') is the stitched one, the patch in which it lies farthest from the
    border; where no patch agrees (a nearest resize can shift a label by a pixel) from the most central
    patch; NaN where no patch covers it.
    """
    resized = scaled_shape(labels.shape, config.scale)
    stitched = resize(labels, resized, -2, linear=False)
    factor = config.factor
    map_factor = factor * predictions.shape[-1] // score_maps.shape[-1]  # a refiner's masks are finer
    if factor > 1 and map_factor == factor and not (boxes % factor).any():
        # Boxes on the mask grid: pick on that grid (factor**2 fewer pixels), as stitch votes, then upsample.
        coarse = _scores_by_agreement(score_maps, predictions, boxes // factor, stitched[::factor, ::factor], 1, 1)
        scores = upsample_mask(coarse, factor, resized)
    else:
        scores = _scores_by_agreement(score_maps, predictions, boxes, stitched, factor, map_factor)
    return resize(scores, labels.shape, -2, linear=False)


def _scores_by_agreement(score_maps, predictions, boxes, stitched, factor: int, map_factor: int) -> np.ndarray:
    scores = np.full(stitched.shape, np.nan, dtype=np.float32)
    best = np.zeros(stitched.shape, dtype=np.float32)
    pieces = zip(_pieces(predictions, boxes, stitched.shape, factor),
                 _pieces(score_maps, boxes, stitched.shape, map_factor), strict=True)
    for (window, up, weight, _), (_, up_scores, _, _) in pieces:
        key = weight + 2.0 * (up == stitched[window])  # agreement outranks centrality (weights < 2)
        better = key > best[window]
        best[window] = np.where(better, key, best[window])
        scores[window] = np.where(better, up_scores, scores[window])
    return scores


def stitch_panoptic_patches(
    semantic: np.ndarray,
    instances: np.ndarray,
    boxes: np.ndarray,
    config: PatchConfig,
    original_shape: tuple[int, int],
    num_classes: int,
    join: str = "touch",
    join_iou: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Panoptic patches -> (classes, instances), both (H, W) int64 at ``original_shape``.

    semantic, instances: (K, h, w) per-patch class maps and instance ids (0 = none). Both maps take each
    pixel from the patch in which it lies farthest from the border, so class and instance agree. Instance
    ids are numbered 1..n over the image.

    Each patch numbers its own instances, so an object that a patch border cuts comes out as one instance
    per patch. ``join`` puts it back together, from the patches' own predictions near the border:

    - where two windows overlap, an instance of each joins when both have one class and the IoU of their
      pixels inside the region the two windows share exceeds ``join_iou`` (0.5 makes every match one to
      one: two different objects, touching or not, keep apart as long as each patch separates them);
    - ``"touch"`` also joins where two windows abut (a border in common, no pixel shared, and no third
      window covering the border, whose overlaps would decide): an instance on the pixel line just before
      the border joins one of its class on the line just after it when more than ``join_iou`` of the
      shorter of their two footprints along the border lies against the other. The shorter footprint,
      not the union, because an object's outline moves between two neighbouring lines: the tip of a
      round object barely crossing the border must join it. Without overlap there is no second view to
      tell a cut object from two objects that touch across the border exactly there; those are joined;
    - joins are transitive, so an object cut by several borders is one instance; ``"none"`` joins nothing
      (one instance per patch, as before joining existed).

    With perfect patches (the ground truth of each) this gives back the whole image's instances up to the
    subsampling, with or without overlap (tests/test_stitch.py, docs/results.md).
    """
    if join not in PANOPTIC_JOINS:
        raise ValueError(f"join must be one of {', '.join(PANOPTIC_JOINS)}, got {join!r}")
    semantic, ids = np.asarray(semantic, np.int64), np.asarray(instances, np.int64)
    offsets = np.concatenate(([0], np.cumsum(ids.reshape(len(ids), -1).max(1))[:-1]))
    ids = np.where(ids > 0, ids + offsets[:, None, None], 0)  # unique across patches
    if join != "none":
        boxes, (height, width) = np.asarray(boxes, np.int64), scaled_shape(original_shape, config.scale)
        # Boxes on the subsampling grid: compare on that grid (factor**2 fewer pixels), as stitch votes.
        grid = config.factor if not (boxes % config.factor).any() else 1
        shape = (-(-height // grid), -(-width // grid))
        pairs = _joined_ids(semantic, ids, boxes // grid, config.factor // grid, shape, join, join_iou)
        ids = _components(pairs, int(ids.max(initial=0)))[ids]
    score = np.broadcast_to(_centrality(semantic.shape[-1]), semantic.shape)
    labels = stitch_patches_of_image(semantic, boxes, config, original_shape, num_classes, score)
    stitched = stitch_patches_of_image(ids, boxes, config, original_shape, int(ids.max()) + 1, score)
    # Ids left in the image numbered 1..n in their order, 0 staying "no instance": a table, not a sort.
    present = np.zeros(int(ids.max()) + 1, dtype=bool)
    present[stitched.ravel()] = True
    present[0] = False
    return labels, (np.cumsum(present) * present)[stitched]


def _joined_ids(semantic: np.ndarray, ids: np.ndarray, boxes: np.ndarray, factor: int, shape: tuple[int, int],
                join: str, join_iou: float) -> np.ndarray:
    """(2, M) pairs of instance ids (unique across patches) that :func:`stitch_panoptic_patches` joins."""
    extent = np.concatenate([boxes[:, :2], np.minimum(boxes[:, 2:], shape)], axis=1)  # (top, left, bottom, right)
    a, b = _neighbours(extent)
    # What two windows share, (y0, x0, y1, x1): an empty range of rows or columns where they only abut.
    shared = np.concatenate([np.maximum(extent[a, :2], extent[b, :2]), np.minimum(extent[a, 2:], extent[b, 2:])], 1)
    found = []
    for k in np.flatnonzero((shared[:, 2:] > shared[:, :2]).all(axis=1)):
        found.append(_matches(*_view(semantic, ids, boxes, a[k], shared[k], factor),
                              *_view(semantic, ids, boxes, b[k], shared[k], factor), join_iou, over="union"))
    if join == "touch":
        for one, other, before, after in _border_lines(extent, a, b, shared):
            found.append(_matches(*_view(semantic, ids, boxes, one, before, factor),
                                  *_view(semantic, ids, boxes, other, after, factor), join_iou, over="smaller"))
    return np.concatenate(found, axis=1) if found else np.zeros((2, 0), np.int64)


def _neighbours(extent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a, b), a < b, of windows ((K, 4) top, left, bottom, right) that overlap or abut; one window
    against the rest at a time, so that memory stays O(K) however large the image."""
    pairs = [np.zeros((2, 0), np.int64)]
    for i in range(len(extent) - 1):
        rest = extent[i + 1 :]
        near = (np.minimum(rest[:, 2:], extent[i, 2:]) >= np.maximum(rest[:, :2], extent[i, :2])).all(axis=1)
        pairs.append(np.stack([np.full(near.sum(), i), i + 1 + np.flatnonzero(near)]))
    return tuple(np.concatenate(pairs, axis=1))


def _border_lines(extent: np.ndarray, a: np.ndarray, b: np.ndarray, shared: np.ndarray):
    """Per pair of abutting windows: (the window before the border, the one after it, the pixel line before
    the border, the line after it), lines as (y0, x0, y1, x1). Borders whose two lines a third window covers
    are left out: that window's overlaps with both decide there."""
    for axis in (0, 1):  # 0: one window above the other, 1: beside it
        lines = np.flatnonzero((shared[:, axis] == shared[:, axis + 2]) & (shared[:, 3 - axis] > shared[:, 1 - axis]))
        span = shared[lines].copy()  # both lines: from the one before the border to the one after it
        span[:, axis] -= 1
        span[:, axis + 2] += 1
        for k, line in zip(lines, span, strict=True):
            if ((extent[:, :2] <= line[:2]) & (extent[:, 2:] >= line[2:])).all(axis=1).any():
                continue  # a third window holds both lines
            first, second = (a[k], b[k]) if extent[a[k], axis] < extent[b[k], axis] else (b[k], a[k])
            before, after = line.copy(), line.copy()
            before[axis + 2] -= 1
            after[axis] += 1
            yield first, second, before, after


def _view(semantic: np.ndarray, ids: np.ndarray, boxes: np.ndarray, patch: int, span: np.ndarray, factor: int):
    """(classes, ids) that ``patch`` predicts (on its subsampled grid) for the pixels ``span`` ((y0, x0, y1,
    x1) in the image, pixels of the frame ``boxes`` are in): one value per pixel."""
    where = np.ix_((np.arange(span[0], span[2]) - boxes[patch, 0]) // factor,
                   (np.arange(span[1], span[3]) - boxes[patch, 1]) // factor)
    return semantic[patch][where], ids[patch][where]


def _matches(sem_a: np.ndarray, ids_a: np.ndarray, sem_b: np.ndarray, ids_b: np.ndarray, join_iou: float,
             over: str) -> np.ndarray:
    """(2, M) pairs (instance of a, instance of b) of one class whose common pixels among these aligned
    ones exceed ``join_iou`` times their union (``over`` "union": the IoU) or the smaller one's pixels."""
    both = (ids_a > 0) & (ids_b > 0) & (sem_a == sem_b)
    base = int(max(ids_a.max(initial=0), ids_b.max(initial=0))) + 1
    pairs, common = np.unique(ids_a[both] * base + ids_b[both], return_counts=True)
    first, second = pairs // base, pairs % base
    area_a, area_b = _areas(ids_a, first), _areas(ids_b, second)
    whole = area_a + area_b - common if over == "union" else np.minimum(area_a, area_b)
    keep = common > join_iou * whole
    return np.stack([first[keep], second[keep]])


def _areas(ids: np.ndarray, which: np.ndarray) -> np.ndarray:
    present, counts = np.unique(ids, return_counts=True)
    return counts[np.searchsorted(present, which)]


def _components(pairs: np.ndarray, count: int) -> np.ndarray:
    """(count + 1,) the smallest id of each id's connected component under the joined ``pairs``; 0 stays 0.
    Min-label propagation with pointer jumping: a handful of rounds, as patch chains are short."""
    label = np.arange(count + 1, dtype=np.int64)
    while True:
        low = np.minimum(label[pairs[0]], label[pairs[1]])
        updated = label.copy()
        for ends in (pairs[0], pairs[1], label[pairs[0]], label[pairs[1]]):
            np.minimum.at(updated, ends, low)
        updated = updated[updated]
        if np.array_equal(updated, label):
            return label
        label = updated
