"""SegmentationMeter: semantic segmentation scores aggregated two ways, always both.

* ``per_image`` (the paper's protocol, docs/method.md section 6): each score is computed per image and per
  class, then averaged over the images in which the class is present in the prediction or the ground
  truth (images where it is absent from both are skipped for that class).
* ``pooled`` (MMSegmentation / cityscapesScripts mIoU, mDice): pixel counts (TP, FP, FN) and boundary
  counts are summed over the whole dataset first, then each score is computed once per class.

Class means are NaN-skipping means over the per-class values, with and without the background class.
Pixels whose ground truth is ``ignore_index`` are excluded from everything, boundaries included.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rleseg.metrics.boundary import boundary_counts, f_from_counts
from rleseg.metrics.meter import Meter, nan_mean, to_json
from rleseg.metrics.pixels import SCORES, check_pair, confusion_matrices, scores_from_confusion


class SegmentationMeter(Meter):
    """Accumulates semantic segmentation scores over images, batches and DDP ranks.

    Args:
        num_classes: C; labels are ``0 .. C-1``.
        ignore_index: ground-truth label excluded from scoring (e.g. 255), or None.
        background: class left out of the ``mean_without_background`` means, or None (then those equal
            the plain means).
        boundary_tolerance: pixel tolerance of the boundary F-score, or None to skip it (it is the
            costly part, about 10x the confusion matrix).
    """

    ARGUMENTS = ("num_classes", "ignore_index", "background", "boundary_tolerance")

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = None,
        background: int | None = 0,
        boundary_tolerance: int | None = 2,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if background is not None and not 0 <= background < num_classes:
            raise ValueError(f"background class {background} is not in [0, {num_classes})")
        if boundary_tolerance is not None and boundary_tolerance < 0:
            raise ValueError(f"boundary_tolerance must be >= 0 pixels or None, got {boundary_tolerance}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.background = background
        self.boundary_tolerance = boundary_tolerance
        self.reset()

    @property
    def scores(self) -> tuple[str, ...]:
        """Names of the per-class scores, in the row order of the per-image sums."""
        return (*SCORES, "boundary_f") if self.boundary_tolerance is not None else SCORES

    def _fields(self) -> dict[str, tuple[tuple[int, ...], type]]:
        c = self.num_classes
        return {
            "confusion": ((c, c), np.int64),  # pooled pixel counts, rows gt, columns prediction
            "boundary": ((4, c), np.int64),  # pooled boundary counts, rows as boundary.BOUNDARY_COUNTS
            "image_score_sums": ((len(self.scores), c), np.float64),  # per-image scores summed over images
            "image_counts": ((c,), np.int64),  # images in which each class is present
            "image_accuracy_sum": ((), np.float64),  # per-image pixel accuracy summed over images
            "images": ((2,), np.int64),  # images seen, images with at least one counted pixel
        }

    def update(self, pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
        """Add a batch of label maps, (H, W) or (N, H, W) integer arrays.

        Returns this batch's per-image scores (for per-image tables): each score name -> (N, C) float64
        with NaN where the class is absent from both maps, and ``"pixel_accuracy"`` -> (N,) (NaN for an
        image with no counted pixel).
        """
        pred, gt, _ = check_pair(pred, gt, self.num_classes, self.ignore_index)
        return self._update_checked(pred, gt)

    def _update_checked(self, pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
        """``update`` for (N, H, W) int64 maps with -1 at ignored pixels, as ``check_pair`` returns them."""
        confusion = confusion_matrices(pred, gt, self.num_classes)  # (N, C, C)
        per_image = scores_from_confusion(confusion)
        if self.boundary_tolerance is not None:
            counts = boundary_counts(pred, gt, self.num_classes, self.boundary_tolerance)  # (4, N, C)
            self._add("boundary", counts.sum(1))
            per_image["boundary_f"] = f_from_counts(counts, confusion.sum(-2) > 0, confusion.sum(-1) > 0)
        counted = confusion.sum((-2, -1))
        correct = np.trace(confusion, axis1=-2, axis2=-1)
        accuracy = np.divide(correct, counted, out=np.full(counted.shape, np.nan), where=counted > 0)

        self._add("confusion", confusion.sum(0))
        self._add("image_score_sums", np.stack([np.nansum(per_image[s], 0) for s in self.scores]))
        self._add("image_counts", (~np.isnan(per_image["iou"])).sum(0))
        self._add("image_accuracy_sum", np.nansum(accuracy))
        self._add("images", np.array([len(gt), int((counted > 0).sum())]))
        return {**per_image, "pixel_accuracy": accuracy}

    def _summary(self, per_class: dict[str, np.ndarray]) -> dict[str, Any]:
        keep = np.ones(self.num_classes, bool)
        if self.background is not None:
            keep[self.background] = False
        return {
            "per_class": {name: to_json(value) for name, value in per_class.items()},
            "mean": {name: nan_mean(value) for name, value in per_class.items()},
            "mean_without_background": {name: nan_mean(value[keep]) for name, value in per_class.items()},
        }

    def compute(self) -> dict[str, Any]:
        """Scores so far, JSON-serialisable (NaN written as None). Layout::

            {"config": {num_classes, ignore_index, background, boundary_tolerance},
             "num_images": int,
             "per_image": {"per_class": {score: [C]}, "mean": {score: x}, "mean_without_background": {score: x},
                           "pixel_accuracy": x, "images_per_class": [C]},
             "pooled":    {"per_class": {score: [C]}, "mean": {...}, "mean_without_background": {...},
                           "pixel_accuracy": x, "gt_pixels": [C], "pred_pixels": [C]},
             "confusion": [[C] * C]}   # rows ground truth, columns prediction

        ``score`` runs over dice, iou, precision, recall and boundary_f (when a tolerance is set). Per-class
        pixel accuracy in the MMSegmentation sense (TP / |gt|) is ``recall``; ``pixel_accuracy`` is the
        overall fraction of counted pixels labelled correctly (per image averaged, or pooled).
        """
        s = self._state
        counts = s["image_counts"]
        with np.errstate(invalid="ignore", divide="ignore"):
            image_means = s["image_score_sums"] / counts
        per_image = dict(zip(self.scores, image_means, strict=True))
        pooled = scores_from_confusion(s["confusion"])
        gt_pixels, pred_pixels = s["confusion"].sum(1), s["confusion"].sum(0)
        if self.boundary_tolerance is not None:
            pooled["boundary_f"] = f_from_counts(s["boundary"], pred_pixels > 0, gt_pixels > 0)
        total = int(s["confusion"].sum())
        images, counted_images = (int(v) for v in s["images"])
        return {
            "config": self._config(),
            "num_images": images,
            "per_image": {
                **self._summary(per_image),
                "pixel_accuracy": float(s["image_accuracy_sum"] / counted_images) if counted_images else None,
                "images_per_class": counts.tolist(),
            },
            "pooled": {
                **self._summary(pooled),
                "pixel_accuracy": float(np.trace(s["confusion"]) / total) if total else None,
                "gt_pixels": gt_pixels.tolist(),
                "pred_pixels": pred_pixels.tolist(),
            },
            "confusion": s["confusion"].tolist(),
        }
