"""How images are predicted: the patching and batching of the :class:`~rleseg.inference.Predictor`, the
autocast of :func:`~rleseg.inference.predict_batch`, and the model's :class:`~rleseg.models.DecodingOptions`
(``decoding``), so that ``rleseg.load(path, **options)`` and the command line name every field the same way."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal

from ..models import DecodingOptions
from .stitch import PANOPTIC_JOINS


@dataclass
class InferenceOptions:
    mode: Literal["patches", "whole"] = "patches"
    stride: int | None = None  # window step in pixels of the resized image; None = the patch size
    scale: float = 1.0  # images are resized by this before patching (mode "patches")
    # Panoptic models: join the instances that patch borders cut (rleseg.inference.stitch_panoptic_patches).
    # "touch" across every border (shared-region IoU where windows overlap, the pixel lines either side of
    # it where they abut), "overlap" only where windows overlap, "none" keeps one instance per patch.
    panoptic_join: Literal["touch", "overlap", "none"] = "touch"
    join_iou: float = 0.5  # instances join above this overlap (IoU in the shared region; see stitch)
    # Patches per generation call; a token model's decoding step costs far less per row in a full batch
    # (docs/benchmarks.md, prediction speed).
    batch_size: int = 32
    seed: int | None = None  # seeds the predictor's own generator for sampling at temperature > 0
    decoding: DecodingOptions = field(default_factory=DecodingOptions)  # sampling, grammar, length, refinement
    # Autocast dtype of the forward passes: fp32 (none), bf16, or fp16 (GPUs without bf16; CPU runs it too).
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    @classmethod
    def from_fields(cls, **values) -> InferenceOptions:
        """The options of flat ``values``: this class's fields, and :class:`DecodingOptions`' (``temperature``,
        ``max_len``, ``refine``, ...) gathered into ``decoding``, as ``rleseg.load(path, **values)`` and the
        command line give them. ValueError naming a key that is neither's."""
        decoding = {f.name for f in fields(DecodingOptions)}
        unknown = sorted(set(values) - decoding - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown inference option {unknown[0]!r}; expected fields of InferenceOptions or "
                             "DecodingOptions")
        chosen = {k: v for k, v in values.items() if k in decoding}
        own = {k: v for k, v in values.items() if k not in decoding}
        return cls(**own, decoding=DecodingOptions(**chosen)) if chosen else cls(**own)

    def check(self) -> None:
        if self.mode not in ("patches", "whole"):
            raise ValueError(f"mode must be 'patches' or 'whole', got {self.mode!r}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be a positive number of pixels, got {self.stride}")
        if not 0 < self.scale < math.inf or self.batch_size < 1:
            raise ValueError(f"scale must be a finite number > 0 and batch_size >= 1, got {self.scale}, "
                             f"{self.batch_size}")
        if self.panoptic_join not in PANOPTIC_JOINS:
            raise ValueError(f"panoptic_join must be one of {', '.join(PANOPTIC_JOINS)}, got {self.panoptic_join!r}")
        if not 0 <= self.join_iou < 1:
            raise ValueError(f"join_iou must lie in [0, 1), got {self.join_iou}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {self.precision!r}")
