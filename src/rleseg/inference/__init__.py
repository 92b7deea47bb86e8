"""rleseg.inference: whole images and videos through a trained model.

``predictor`` cuts images into patches, predicts them in batches and stitches the results back
(``rleseg.load`` builds one from a checkpoint); ``batch`` runs one batch of patches through a model
and decodes it (shared with the training loop's validation); ``stitch`` merges patches and video
windows. ``rleseg predict`` and ``rleseg evaluate`` both go through here.
"""

from .batch import autocast, predict_batch
from .options import InferenceOptions
from .predictor import (
    ImageLike,
    ImagePrediction,
    Predictor,
    VideoPrediction,
    as_image,
    load,
    stored_normalization,
)
from .stitch import stitch, stitch_panoptic_patches, stitch_patches_of_image, stitch_windows

__all__ = [
    "ImageLike",
    "ImagePrediction",
    "InferenceOptions",
    "Predictor",
    "VideoPrediction",
    "as_image",
    "autocast",
    "load",
    "predict_batch",
    "stitch",
    "stitch_panoptic_patches",
    "stitch_patches_of_image",
    "stitch_windows",
    "stored_normalization",
]
