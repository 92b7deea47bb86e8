"""Per-class pixel scores: confusion matrices and Dice / IoU / precision / recall from them.

Label maps are integer arrays of shape (H, W) or (N, H, W) (N images). ``gt == ignore_index`` marks
pixels excluded from every count; predictions there are not looked at. Every other pixel must hold a
class in ``[0, num_classes)`` in both maps, otherwise ValueError.

A confusion matrix has rows = ground-truth class, columns = predicted class (int64 pixel counts).
"""

from __future__ import annotations

import numpy as np

SCORES = ("dice", "iou", "precision", "recall")


def check_pair(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate a prediction / ground-truth pair of label maps.

    Returns ``(pred, gt, valid)`` as (N, H, W) arrays: int64 labels with ignored pixels set to -1 in
    both, and the bool mask of counted pixels.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    if gt.ndim not in (2, 3):
        raise ValueError(f"label maps must be (H, W) or (N, H, W), got shape {gt.shape}")
    for name, labels in (("prediction", pred), ("ground truth", gt)):
        if not (labels.dtype == bool or np.issubdtype(labels.dtype, np.integer)):
            raise ValueError(f"{name} must hold integer labels, got dtype {labels.dtype}")
    pred = pred.astype(np.int64).reshape(-1, *gt.shape[-2:])
    gt = gt.astype(np.int64).reshape(pred.shape)
    valid = np.ones(gt.shape, bool) if ignore_index is None else gt != ignore_index
    for name, labels in (("ground truth", gt), ("prediction", pred)):
        bad = valid & ((labels < 0) | (labels >= num_classes))
        if bad.any():
            raise ValueError(
                f"{name} holds label {int(labels[bad][0])} outside [0, {num_classes})"
                + ("" if ignore_index is None else f" and not ignore_index {ignore_index}")
            )
    return np.where(valid, pred, -1), np.where(valid, gt, -1), valid


def confusion_matrices(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, C, C) int64 confusion matrix of each image; -1 labels (ignored pixels) are not counted."""
    n = gt.shape[0]
    c = num_classes
    keep = gt >= 0
    image = np.broadcast_to(np.arange(n).reshape(n, 1, 1), gt.shape)[keep]
    index = (image * c + gt[keep]) * c + pred[keep]
    return np.bincount(index, minlength=n * c * c).reshape(n, c, c)


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """(C, C) int64 confusion matrix, rows ground truth, columns prediction, pooled over all images given."""
    pred, gt, _ = check_pair(pred, gt, num_classes, ignore_index)
    return confusion_matrices(pred.reshape(1, -1, 1), gt.reshape(1, -1, 1), num_classes)[0]


def safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (callers mark undefined entries NaN themselves)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def scores_from_confusion(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class Dice, IoU, precision and recall from a (..., C, C) confusion matrix.

    Dice = 2TP / (|pred| + |gt|), IoU = TP / (TP + FP + FN), precision = TP / |pred|, recall = TP / |gt|.
    Each array has shape (..., C). A class absent from both prediction and ground truth is NaN in every
    score; a class present in only one of them scores 0 (precision 0 when nothing of it was predicted,
    recall 0 when it is not in the ground truth: the zero-division convention of scikit-learn).
    """
    confusion = np.asarray(confusion, np.int64)
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    n_gt = confusion.sum(-1)
    n_pred = confusion.sum(-2)
    union = n_gt + n_pred - tp
    scores = {
        "dice": safe_ratio(2 * tp, n_gt + n_pred),
        "iou": safe_ratio(tp, union),
        "precision": safe_ratio(tp, n_pred),
        "recall": safe_ratio(tp, n_gt),
    }
    absent = union == 0
    for value in scores.values():
        value[absent] = np.nan
    return scores


def per_class_iou(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """(C,) float64 IoU per class, pooled over all images given; NaN where a class is absent from both."""
    return scores_from_confusion(confusion_matrix(pred, gt, num_classes, ignore_index))["iou"]
