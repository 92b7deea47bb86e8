"""Dataset statistics for choosing a tokenizer: sequence lengths and the fidelity each compression step costs.

For every scheme x start mode x subsampling factor, over a folder of label masks:

- tokens per mask (EOS included, BOS not): mean, p50, p95, p99, max, and the vocabulary size. Percentiles
  are empirical quantiles (numpy's ``inverted_cdf``): p99 is the smallest length that at least 99% of the
  masks fit in, so ``max_seq_len >= p99`` truncates at most 1% of the masks.
- fidelity: each mask goes through the paper's pipeline, downsample -> encode -> decode -> upsample
  (nearest, cropped to full resolution), and is scored against the full-resolution mask with per-class
  IoU and boundary F-score. Per class, scores are averaged over the images where the class is present in
  the ground truth or the reconstruction; mIoU and mBF average those over the foreground classes 1..C-1
  (background 0 is never encoded, it is what the runs leave uncovered; its scores are in the per-class
  lists). Encoding is lossless, so without ``max_seq_len`` the loss is the subsampling's alone and is the
  same for every scheme; with ``max_seq_len`` the sequences are cut as a model of that length would cut
  them, and the loss then depends on the scheme.

The computation lives here as plain functions returning dataclasses; the command line only formats them.
Layout: ``masks.py`` reads label files, ``core.py`` holds the options, the result records and the
accumulator every mode shares, ``image.py`` is the image mode (:func:`image_stats`, :func:`folder_stats`);
video and panoptic modes go beside it as modules of their own.
"""

from .core import (
    RECOMMENDATION,
    Accumulator,
    DatasetStats,
    Fidelity,
    StatsOptions,
    StatsRow,
    fidelity_scores,
    progress_bar,
)
from .image import folder_stats, image_stats
from .masks import find_masks, iter_masks

__all__ = [
    "RECOMMENDATION",
    "Accumulator",
    "DatasetStats",
    "Fidelity",
    "StatsOptions",
    "StatsRow",
    "fidelity_scores",
    "find_masks",
    "folder_stats",
    "image_stats",
    "iter_masks",
    "progress_bar",
]
