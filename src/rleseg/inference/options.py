"""How images are predicted: the patching of the :class:`~rleseg.inference.Predictor` and the sampling of
:func:`~rleseg.inference.predict_batch`, one flat dataclass so that ``rleseg.load(path, **options)`` and
the command line name every field the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class InferenceOptions:
    mode: Literal["patches", "whole"] = "patches"
    stride: int | None = None  # window step in pixels of the resized image; None = the patch size
    scale: float = 1.0  # images are resized by this before patching (mode "patches")
    batch_size: int = 16  # patches per generation call
    temperature: float = 0.0  # 0 = greedy; the paper samples at 1.0 with top_p 0.4
    top_p: float = 1.0
    constrained: bool = True  # grammar-constrained decoding
    max_len: int | None = None  # tokens generated at most per patch (default: the model's max_seq_len)
    seed: int | None = None  # seeds the predictor's own generator for sampling at temperature > 0
    eos_by_mass: bool = False  # end a sequence only where EOS holds half the allowed probability

    def check(self) -> None:
        if self.mode not in ("patches", "whole"):
            raise ValueError(f"mode must be 'patches' or 'whole', got {self.mode!r}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be a positive number of pixels, got {self.stride}")
        if self.scale <= 0 or self.batch_size < 1:
            raise ValueError(f"scale must be > 0 and batch_size >= 1, got {self.scale}, {self.batch_size}")
