"""Video segmentation: the per-frame scores of SegmentationMeter plus temporal consistency.

Temporal consistency is the *flip rate*: the fraction of pixels whose label changes between two
consecutive frames, counted over pixels that are not ignored in the ground truth of either frame.
It is reported for the prediction and for the ground truth (the true amount of change, from motion),
with their ratio (prediction / ground truth; > 1 means flicker beyond real motion) and difference
(prediction - ground truth). Two aggregations, as for the frame scores: ``per_video`` averages each
video's rate over videos (with at least one counted pixel pair), ``pooled`` divides flips summed over
the dataset by pixel pairs summed over it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rleseg.metrics.pixels import check_pair
from rleseg.metrics.segmentation import SegmentationMeter


def _flips(labels: np.ndarray, valid_pairs: np.ndarray) -> np.ndarray:
    """(B,) number of counted pixels whose label differs from the previous frame; labels (B, T, H, W)."""
    return ((labels[:, 1:] != labels[:, :-1]) & valid_pairs).sum((1, 2, 3))


def _rates(total: np.ndarray, count: int) -> dict[str, float | None]:
    """Flip rates from (2,) totals (prediction, ground truth) and their denominator."""
    pred, gt = (float(t / count) for t in total) if count else (None, None)
    return {
        "pred_flip_rate": pred,
        "gt_flip_rate": gt,
        "ratio": pred / gt if pred is not None and gt else None,
        "difference": pred - gt if pred is not None and gt is not None else None,
    }


class VideoMeter(SegmentationMeter):
    """SegmentationMeter over the frames of videos, plus the flip rates described in the module doc.

    Same arguments as SegmentationMeter; ``update`` takes (T, H, W) or (B, T, H, W) label maps.
    """

    def _fields(self) -> dict[str, tuple[tuple[int, ...], type]]:
        return {
            **super()._fields(),
            "flips": ((2,), np.int64),  # pooled flips: prediction, ground truth
            "pixel_pairs": ((), np.int64),  # pooled counted (pixel, consecutive frame pair)s
            "video_rate_sums": ((2,), np.float64),  # per-video flip rates summed: prediction, ground truth
            "videos": ((2,), np.int64),  # videos seen, videos with at least one counted pixel pair
        }

    def update(self, pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
        """Add videos; returns the per-frame scores of ``SegmentationMeter.update`` (frames of all
        videos in order, N = B * T)."""
        pred, gt = np.asarray(pred), np.asarray(gt)
        if gt.ndim not in (3, 4) or pred.shape != gt.shape:
            raise ValueError(f"videos must be (T, H, W) or (B, T, H, W) of one shape, got {pred.shape} and {gt.shape}")
        frames = pred.reshape(-1, *gt.shape[-2:]), gt.reshape(-1, *gt.shape[-2:])
        pred_l, gt_l, valid = check_pair(*frames, self.num_classes, self.ignore_index)
        per_frame = self._update_checked(pred_l, gt_l)
        videos = gt.reshape(-1, *gt.shape[-3:]).shape
        pred_l, gt_l, valid = pred_l.reshape(videos), gt_l.reshape(videos), valid.reshape(videos)
        valid_pairs = valid[:, 1:] & valid[:, :-1]
        pairs = valid_pairs.sum((1, 2, 3))
        flips = np.stack([_flips(pred_l, valid_pairs), _flips(gt_l, valid_pairs)])  # (2, B)
        rates = np.divide(flips, pairs, out=np.zeros(flips.shape), where=pairs > 0)
        self._add("flips", flips.sum(1))
        self._add("pixel_pairs", pairs.sum())
        self._add("video_rate_sums", rates.sum(1))
        self._add("videos", np.array([len(pairs), int((pairs > 0).sum())]))
        return per_frame

    def compute(self) -> dict[str, Any]:
        """SegmentationMeter's layout over frames (``num_images`` counts frames), plus::

            "num_videos": int,
            "temporal": {"per_video": {pred_flip_rate, gt_flip_rate, ratio, difference},
                         "pooled": {...the same...}, "pixel_pairs": int}

        For ``per_video`` the ratio and difference are those of the two averaged rates.
        """
        s = self._state
        return {
            **super().compute(),
            "num_videos": int(s["videos"][0]),
            "temporal": {
                "per_video": _rates(s["video_rate_sums"], int(s["videos"][1])),
                "pooled": _rates(s["flips"], int(s["pixel_pairs"])),
                "pixel_pairs": int(s["pixel_pairs"]),
            },
        }
