"""Panoptic quality (PQ = SQ x RQ) with the rules of COCO panopticapi (``pq_compute.py``).

Input per image: a semantic map and an instance map of equal shape, for prediction and ground truth.
A *segment* is the set of pixels sharing (class, instance id) for a thing class, or sharing the class
for a stuff class (instance ids are ignored there). Pixels whose class is ``ignore_index`` or belongs
to neither the things nor the stuff are *void*. Rules, as panopticapi:

* a predicted and a ground-truth segment of the same class match when IoU > 0.5, where the union
  leaves out the predicted segment's pixels that are void in the ground truth:
  ``union = |P| + |G| - |P & G| - |P & void_gt|``; IoU > 0.5 makes every match unique;
* TP: matched pairs (their IoUs are summed); FN: unmatched ground-truth segments; FP: unmatched
  predicted segments, except those lying more than half in ground-truth void, which are not counted;
* per class: PQ = sum IoU / (TP + FP/2 + FN/2), SQ = sum IoU / TP (0 when TP = 0), RQ = TP / (TP + FP/2
  + FN/2); counts are pooled over the dataset; the ``all`` / ``things`` / ``stuff`` figures are means over
  the classes of the group with TP + FP + FN > 0.
* objects (``objects``, thing classes pooled): the true objects (TP + FN), the predicted ones (TP + FP),
  the matched ones (TP), and precision, recall and F1 of that matching at IoU > 0.5, the object-level
  scores microscopy reports (StarDist's ``matching`` at threshold 0.5, up to its IoU >= 0.5 and our void
  rule). F1 = 2 TP / (2 TP + FP + FN) is the things' RQ with the counts pooled over the classes.

Not implemented: crowd regions (panopticapi ignores ``iscrowd`` ground-truth segments and discounts
predicted pixels on them like void); map crowd pixels to ``ignore_index`` to get the void treatment.
Differences from torchmetrics' ``PanopticQuality``: it also removes pixels predicted as void from the
union and drops ground-truth segments that are mostly predicted void from the FN count; panopticapi
does neither, nor do we. Both agree when the prediction has no void pixel.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from rleseg.metrics.meter import Meter, nan_mean, to_json

PQ_COUNTS = ("tp", "fp", "fn")


def _check_panoptic(
    semantic: np.ndarray,
    instance: np.ndarray,
    shape: tuple[int, ...] | None,
    num_classes: int,
    ignore_index: int | None,
    name: str,
) -> tuple[np.ndarray, np.ndarray]:
    semantic, instance = np.asarray(semantic), np.asarray(instance)
    if semantic.shape != instance.shape or semantic.ndim not in (2, 3) or (shape and semantic.shape != shape):
        raise ValueError(
            f"{name} semantic {semantic.shape} and instance {instance.shape} maps must share one (H, W) or"
            f" (N, H, W) shape" + (f" equal to {shape}" if shape else "")
        )
    for kind, labels in (("semantic", semantic), ("instance", instance)):
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{name} {kind} map must hold integers, got dtype {labels.dtype}")
    semantic = semantic.astype(np.int64).reshape(-1, *semantic.shape[-2:])
    bad = (semantic < 0) | (semantic >= num_classes)
    if ignore_index is not None:
        bad &= semantic != ignore_index
    if bad.any():
        raise ValueError(f"{name} semantic map holds label {int(semantic[bad][0])} outside [0, {num_classes})")
    return semantic, instance.astype(np.int64).reshape(semantic.shape)


def _segments(
    semantic: np.ndarray, instance: np.ndarray, category: np.ndarray, thing: np.ndarray, ignore_index: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Number the segments of (N, H, W) maps. Returns (per-pixel segment index, class per segment) with
    class -1 for each image's void segment."""
    c = len(category)
    in_range = (semantic >= 0) & (semantic < c)
    cls = np.where(in_range, semantic, 0)
    counted = in_range & category[cls]
    if ignore_index is not None:
        counted &= semantic != ignore_index
    inst = np.where(counted & thing[cls], instance, 0)
    cls = np.where(counted, cls, -1)
    _, inst = np.unique(inst, return_inverse=True)
    n_inst = int(inst.max(initial=0)) + 1
    image = np.arange(semantic.shape[0]).reshape(-1, 1, 1)
    key = ((image * (c + 1) + cls + 1) * n_inst + inst.reshape(cls.shape)).reshape(-1)
    keys, index = np.unique(key, return_inverse=True)
    return index.reshape(-1), (keys // n_inst) % (c + 1) - 1


def panoptic_counts(
    pred: tuple[np.ndarray, np.ndarray],
    gt: tuple[np.ndarray, np.ndarray],
    category: np.ndarray,
    thing: np.ndarray,
    ignore_index: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (3, C) int64 TP / FP / FN counts and (C,) float64 IoU sums over a batch.

    ``pred`` / ``gt``: (semantic, instance) int64 (N, H, W) maps; ``category``: (C,) bool, class is
    scored (thing or stuff); ``thing``: (C,) bool, class is a thing.
    """
    c = len(category)
    pred_seg, pred_cls = _segments(*pred, category, thing, ignore_index)
    gt_seg, gt_cls = _segments(*gt, category, thing, ignore_index)
    pred_area = np.bincount(pred_seg, minlength=len(pred_cls))
    gt_area = np.bincount(gt_seg, minlength=len(gt_cls))
    # Segment keys lead with the image index, so pairs never join segments of different images.
    pairs, inter = np.unique(gt_seg * len(pred_cls) + pred_seg, return_counts=True)
    g, p = pairs // len(pred_cls), pairs % len(pred_cls)
    in_void = gt_cls[g] < 0
    pred_void_area = np.bincount(p[in_void], weights=inter[in_void], minlength=len(pred_cls))

    same = (gt_cls[g] >= 0) & (gt_cls[g] == pred_cls[p])
    g, p, inter = g[same], p[same], inter[same]
    iou = inter / (pred_area[p] + gt_area[g] - inter - pred_void_area[p])
    match = iou > 0.5
    gt_matched = np.zeros(len(gt_cls), bool)
    gt_matched[g[match]] = True
    pred_matched = np.zeros(len(pred_cls), bool)
    pred_matched[p[match]] = True

    fn = (gt_cls >= 0) & ~gt_matched
    fp = (pred_cls >= 0) & ~pred_matched & (pred_void_area <= 0.5 * pred_area)
    counts = np.stack(
        [
            np.bincount(gt_cls[g[match]], minlength=c),
            np.bincount(pred_cls[fp], minlength=c),
            np.bincount(gt_cls[fn], minlength=c),
        ]
    )
    return counts, np.bincount(gt_cls[g[match]], weights=iou[match], minlength=c)


def _class_set(classes: Iterable[int], num_classes: int, name: str) -> list[int]:
    out = sorted({int(k) for k in classes})
    if out and not (0 <= out[0] and out[-1] < num_classes):
        raise ValueError(f"{name} {out} must lie in [0, {num_classes})")
    return out


class PanopticMeter(Meter):
    """Accumulates PQ / SQ / RQ over images, batches and DDP ranks (counts pooled, as panopticapi).

    Args:
        num_classes: C; semantic labels are ``0 .. C-1``.
        thing_classes: classes with instances.
        stuff_classes: classes scored as one segment per image; None means every class that is not a
            thing. Classes in neither set are void (e.g. leave out an unlabelled background).
        ignore_index: semantic label marking void pixels (ground truth: not scored; prediction:
            unassigned pixels), or None.
    """

    ARGUMENTS = ("num_classes", "thing_classes", "stuff_classes", "ignore_index")

    def __init__(
        self,
        num_classes: int,
        thing_classes: Iterable[int],
        stuff_classes: Iterable[int] | None = None,
        ignore_index: int | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        things = _class_set(thing_classes, num_classes, "thing_classes")
        if stuff_classes is None:
            stuff = [k for k in range(num_classes) if k not in set(things)]
        else:
            stuff = _class_set(stuff_classes, num_classes, "stuff_classes")
        if set(things) & set(stuff):
            raise ValueError(f"classes {sorted(set(things) & set(stuff))} are both things and stuff")
        self.num_classes = num_classes
        self.thing_classes = things
        self.stuff_classes = stuff
        self.ignore_index = ignore_index
        self._thing = np.isin(np.arange(num_classes), things)
        self._category = self._thing | np.isin(np.arange(num_classes), stuff)
        self.reset()

    def _fields(self) -> dict[str, tuple[tuple[int, ...], type]]:
        c = self.num_classes
        return {"counts": ((3, c), np.int64), "iou_sum": ((c,), np.float64), "images": ((), np.int64)}

    def update(
        self, pred_semantic: np.ndarray, pred_instance: np.ndarray, gt_semantic: np.ndarray, gt_instance: np.ndarray
    ) -> None:
        """Add a batch: four integer maps of one shape, (H, W) or (N, H, W). Instance ids are arbitrary
        integers, compared only within one image and one class."""
        gt = _check_panoptic(gt_semantic, gt_instance, None, self.num_classes, self.ignore_index, "ground-truth")
        pred = _check_panoptic(
            pred_semantic, pred_instance, np.shape(gt_semantic), self.num_classes, self.ignore_index, "predicted"
        )
        counts, iou_sum = panoptic_counts(pred, gt, self._category, self._thing, self.ignore_index)
        self._add("counts", counts)
        self._add("iou_sum", iou_sum)
        self._add("images", len(gt[0]))

    def compute(self) -> dict[str, Any]:
        """Scores so far, JSON-serialisable (None where undefined). Layout::

            {"config": {...}, "num_images": int,
             "all" | "things" | "stuff": {"pq": x, "sq": x, "rq": x, "n": classes averaged},
             "per_class": {"pq": [C], "sq": [C], "rq": [C], "tp": [C], "fp": [C], "fn": [C]},
             "objects": {"true": int, "predicted": int, "matched": int, "precision": x, "recall": x, "f1": x}}

        Per-class scores are None for void classes and for classes with TP + FP + FN = 0.
        """
        tp, fp, fn = self._state["counts"].astype(np.float64)
        den = tp + 0.5 * fp + 0.5 * fn
        scored = self._category & (den > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            sq = np.where(tp > 0, self._state["iou_sum"] / tp, 0.0)
            rq = tp / den
        per_class = {"pq": sq * rq, "sq": sq, "rq": rq}
        for value in per_class.values():
            value[~scored] = np.nan
        out: dict[str, Any] = {"config": self._config(), "num_images": int(self._state["images"])}
        for group, members in (
            ("all", self._category),
            ("things", self._thing),
            ("stuff", self._category & ~self._thing),
        ):
            out[group] = {name: nan_mean(value[members]) for name, value in per_class.items()}
            out[group]["n"] = int((members & scored).sum())
        out["per_class"] = {name: to_json(value) for name, value in per_class.items()}
        out["per_class"].update(
            {name: row.tolist() for name, row in zip(PQ_COUNTS, self._state["counts"], strict=True)}
        )
        out["objects"] = object_scores(*(int(count) for count in self._state["counts"][:, self._thing].sum(1)))
        return out


def object_scores(tp: int, fp: int, fn: int) -> dict[str, Any]:
    """The object counts and matching scores of pooled TP / FP / FN counts (None where undefined)."""
    def ratio(num: int, den: int) -> float | None:
        return num / den if den else None

    return {"true": tp + fn, "predicted": tp + fp, "matched": tp, "precision": ratio(tp, tp + fp),
            "recall": ratio(tp, tp + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn)}


def panoptic_quality(
    pred: tuple[np.ndarray, np.ndarray],
    gt: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    thing_classes: Iterable[int],
    stuff_classes: Iterable[int] | None = None,
    ignore_index: int | None = None,
) -> dict[str, Any]:
    """PQ / SQ / RQ of (semantic, instance) maps, (H, W) or (N, H, W), as ``PanopticMeter.compute``."""
    meter = PanopticMeter(num_classes, thing_classes, stuff_classes, ignore_index)
    meter.update(pred[0], pred[1], gt[0], gt[1])
    return meter.compute()
