"""One batch of patches (or video windows) through a model: :func:`predict_batch`, ``model.predict``
(models/protocol.py) under the autocast that the options ask for. Both the predictor and the training
loop's validation go through here, so a mask is always predicted and decoded the same way."""

from __future__ import annotations

import contextlib

import torch

from ..models import Prediction, SegmentationModel
from .options import InferenceOptions


@torch.no_grad()
def predict_batch(model: SegmentationModel, images: torch.Tensor, options: InferenceOptions | None = None,
                  generator: torch.Generator | None = None) -> Prediction:
    """Masks, tokens and scores (:class:`~rleseg.models.Prediction`) of a batch of patches: images (B, 3, P, P)
    float in [0, 1] (video models: (B, N, 3, P, P)), on the model's device, decoded as ``options.decoding``
    says under the autocast of ``options.precision``; ``generator`` seeds the sampling."""
    o = options or InferenceOptions()
    with autocast(images.device, o.precision):
        return model.predict(images, o.decoding, generator)


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` ("fp32": none; "bf16", "fp16": that dtype) on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
