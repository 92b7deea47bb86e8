"""Segmentation metrics: numpy only; importing this package never imports torch.

- pixels: confusion matrices and per-class Dice / IoU / precision / recall.
- boundary: boundary F-score per class with a pixel tolerance.
- segmentation: SegmentationMeter, both aggregations (per image as the paper, pooled as MMSegmentation).
- panoptic: PQ / SQ / RQ with COCO panopticapi rules, PanopticMeter.
- video: VideoMeter, per-frame scores plus the temporal flip rate.
- refinement: RefinementMeter, the share of the pixels a boundary refiner changed.
- meter: the merge / state_dict / DDP all_reduce machinery the meters share.
"""

from rleseg.metrics.boundary import boundary_f_score
from rleseg.metrics.meter import Meter
from rleseg.metrics.panoptic import PanopticMeter, panoptic_quality
from rleseg.metrics.pixels import confusion_matrix, per_class_iou, scores_from_confusion
from rleseg.metrics.refinement import RefinementMeter
from rleseg.metrics.segmentation import SegmentationMeter
from rleseg.metrics.video import VideoMeter

__all__ = [
    "Meter",
    "PanopticMeter",
    "RefinementMeter",
    "SegmentationMeter",
    "VideoMeter",
    "boundary_f_score",
    "confusion_matrix",
    "panoptic_quality",
    "per_class_iou",
    "scores_from_confusion",
]
