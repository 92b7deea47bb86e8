"""Boundary F-score per class with a pixel tolerance.

The boundary of class c is the set of pixels labelled c that have a 4-neighbour with another label
(the inner contour of the class mask, one pixel thick). The image border is not a boundary; an ignored
pixel counts as "another label", so both maps get the same contour around ignored regions and
ignored pixels themselves are never boundary pixels.

Precision of class c: the fraction of predicted boundary pixels of c lying within ``tolerance`` pixels
(Euclidean, i.e. a disk) of a ground-truth boundary pixel of c; recall the same the other way round;
F = 2PR / (P + R). Edge cases, per class: NaN when the class is absent from both maps; when a boundary
is empty (no pixels, or the class fills every counted pixel) F is 1 if both boundaries are empty and
the class is present in both maps, else 0.

Matching visits only boundary pixels, once per offset of the disk, so the cost is
O(boundary pixels x tolerance^2), all classes at once.
"""

from __future__ import annotations

import numpy as np

from rleseg.metrics.pixels import check_pair, safe_ratio

#: Rows of the (4, ...) count arrays returned by ``boundary_counts``.
BOUNDARY_COUNTS = ("pred_boundary", "pred_matched", "gt_boundary", "gt_matched")


def _disk_offsets(tolerance: int) -> np.ndarray:
    """(K, 2) offsets (dy, dx) with dy^2 + dx^2 <= tolerance^2."""
    r = np.arange(-tolerance, tolerance + 1)
    dy, dx = np.meshgrid(r, r, indexing="ij")
    inside = dy**2 + dx**2 <= tolerance**2
    return np.stack([dy[inside], dx[inside]], axis=1)


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """Bool (..., H, W): pixels with label >= 0 that have a 4-neighbour with a different label."""
    edge = np.zeros(labels.shape, bool)
    rows = labels[..., 1:, :] != labels[..., :-1, :]
    edge[..., 1:, :] |= rows
    edge[..., :-1, :] |= rows
    cols = labels[..., :, 1:] != labels[..., :, :-1]
    edge[..., :, 1:] |= cols
    edge[..., :, :-1] |= cols
    return edge & (labels >= 0)


def _matched(src: np.ndarray, dst: np.ndarray, tolerance: int) -> tuple[np.ndarray, np.ndarray]:
    """Boundary pixels of ``src`` (N, H, W) and whether each has a same-class boundary pixel of ``dst``
    within ``tolerance``. Returns (flat indices into src, matched bool)."""
    src_edge = label_boundaries(src)
    # -1 marks "no boundary"; padding by the tolerance keeps every shifted look-up in bounds.
    dst_labels = np.where(label_boundaries(dst), dst, -1)
    dst_labels = np.pad(dst_labels, ((0, 0), (tolerance, tolerance), (tolerance, tolerance)), constant_values=-1)
    n, y, x = np.nonzero(src_edge)
    cls = src[n, y, x]
    padded_w = dst_labels.shape[2]
    base = np.ravel_multi_index((n, y + tolerance, x + tolerance), dst_labels.shape)
    dst_flat = dst_labels.reshape(-1)
    hit = np.zeros(cls.shape, bool)
    for dy, dx in _disk_offsets(tolerance):
        hit |= dst_flat[base + (dy * padded_w + dx)] == cls
    return np.ravel_multi_index((n, y, x), src.shape), hit


def boundary_counts(pred: np.ndarray, gt: np.ndarray, num_classes: int, tolerance: int) -> np.ndarray:
    """(4, N, C) int64 counts per image and class, rows as in ``BOUNDARY_COUNTS``.

    ``pred`` and ``gt`` are (N, H, W) int64 with -1 at ignored pixels, as ``check_pair`` returns them.
    """
    if tolerance < 0:
        raise ValueError(f"boundary tolerance must be >= 0 pixels, got {tolerance}")
    n, c = gt.shape[0], num_classes
    counts = np.zeros((4, n * c), np.int64)
    for row, (src, dst) in enumerate(((pred, gt), (gt, pred))):
        flat, hit = _matched(src, dst, tolerance)
        key = (flat // (gt.shape[1] * gt.shape[2])) * c + src.reshape(-1)[flat]
        counts[2 * row] = np.bincount(key, minlength=n * c)
        counts[2 * row + 1] = np.bincount(key[hit], minlength=n * c)
    return counts.reshape(4, n, c)


def f_from_counts(counts: np.ndarray, pred_present: np.ndarray, gt_present: np.ndarray) -> np.ndarray:
    """Boundary F from (4, ...) counts and bool presence of each class in prediction / ground truth."""
    n_pred, m_pred, n_gt, m_gt = counts
    precision = safe_ratio(m_pred, n_pred)
    recall = safe_ratio(m_gt, n_gt)
    f = safe_ratio(2 * precision * recall, precision + recall)
    no_edge = (n_pred == 0) | (n_gt == 0)
    both_flat = (n_pred == 0) & (n_gt == 0) & pred_present & gt_present
    f = np.where(no_edge, both_flat.astype(np.float64), f)
    return np.where(pred_present | gt_present, f, np.nan)


def boundary_f_score(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, tolerance: int = 2, ignore_index: int | None = None
) -> np.ndarray:
    """(C,) float64 boundary F-score per class, counts pooled over all images given.

    ``pred``, ``gt``: integer label maps (H, W) or (N, H, W). See the module docstring for the
    definition and edge cases (NaN where the class is absent from both maps).
    """
    pred, gt, _ = check_pair(pred, gt, num_classes, ignore_index)
    counts = boundary_counts(pred, gt, num_classes, tolerance).sum(1)
    pred_present = np.bincount(pred[pred >= 0], minlength=num_classes) > 0
    gt_present = np.bincount(gt[gt >= 0], minlength=num_classes) > 0
    return f_from_counts(counts, pred_present, gt_present)
