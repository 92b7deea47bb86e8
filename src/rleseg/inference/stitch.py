"""Stitching: per-patch predictions back into one label map of the whole image (and video windows
back into one sequence).

Each patch's label map, at the subsampled size ``(P/s, P/s)``, is upsampled (nearest) by ``s`` and
pasted at its box (``(y0, x0, y1, x1)`` in pixels of the resized image, as
``rleseg.data.patches.sliding_windows`` cuts them); where patches overlap, a pixel takes the majority
label (ties go to the patch in which the pixel lies farther from the border) or, when scores are
given, the label of the highest-scoring patch. Panoptic patches are stitched by that score alone
(:func:`stitch_panoptic_patches`), so that a pixel's class and instance come from one patch.
"""

from __future__ import annotations

import numpy as np

from ..data.patches import PatchConfig, resize, scaled_shape
from ..tokens import upsample_mask


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
    if scores is not None:
        return _stitch_by_score(predictions, boxes, shape, factor, np.asarray(scores, np.float32), fill)
    if factor > 1 and not (boxes % factor).any():
        # Boxes on the subsampling grid: vote on that grid (factor**2 fewer pixels), then upsample.
        coarse = (-(-shape[0] // factor), -(-shape[1] // factor))
        labels = stitch(predictions, boxes // factor, coarse, 1, num_classes, fill=fill)
        return upsample_mask(labels, factor, shape)
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


def stitch_panoptic_patches(
    semantic: np.ndarray,
    instances: np.ndarray,
    boxes: np.ndarray,
    config: PatchConfig,
    original_shape: tuple[int, int],
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Panoptic patches -> (classes, instances), both (H, W) int64 at ``original_shape``.

    semantic, instances: (K, h, w) per-patch class maps and instance ids (0 = none). Both maps take each
    pixel from the patch in which it lies farthest from the border, so class and instance agree. Instance
    ids are made unique per patch and numbered 1..n over the image; an object cut by patch borders stays
    one instance per patch.
    """
    semantic, ids = np.asarray(semantic, np.int64), np.asarray(instances, np.int64)
    offsets = np.concatenate(([0], np.cumsum(ids.reshape(len(ids), -1).max(1))[:-1]))
    ids = np.where(ids > 0, ids + offsets[:, None, None], 0)  # unique across patches
    score = np.broadcast_to(_centrality(semantic.shape[-1]), semantic.shape)
    labels = stitch_patches_of_image(semantic, boxes, config, original_shape, num_classes, score)
    stitched = stitch_patches_of_image(ids, boxes, config, original_shape, int(ids.max()) + 1, score)
    numbered = np.unique(stitched, return_inverse=True)[1].reshape(original_shape)
    if not (stitched == 0).any():
        numbered += 1  # np.unique numbers from 0; 0 must stay "no instance"
    return labels, numbered
