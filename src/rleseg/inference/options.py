"""How images are predicted: the patching of the :class:`~rleseg.inference.Predictor` and the sampling of
:func:`~rleseg.inference.predict_batch`, one flat dataclass so that ``rleseg.load(path, **options)`` and
the command line name every field the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..models.search import check_search
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
    temperature: float = 0.0  # 0 = greedy; the paper samples at 1.0 with top_p 0.4
    top_p: float = 1.0
    constrained: bool = True  # grammar-constrained decoding
    max_len: int | None = None  # tokens generated at most per patch (default: the model's max_seq_len)
    seed: int | None = None  # seeds the predictor's own generator for sampling at temperature > 0
    eos_by_mass: bool = False  # end a sequence only where EOS holds half the allowed probability
    beams: int = 1  # beam search of this width under the grammar (temperature 0); 1 = off
    samples: int = 1  # best-of-N: draw this many sequences per patch (temperature > 0), keep the likeliest
    length_penalty: float = 0.0  # beams and samples rank by total log-probability / length ** this
    # Models with a refiner (model.refine_band > 0): redraw the decoded mask's boundary band at full
    # resolution; false gives the token-only mask (upsampled nearest), to compare both on one checkpoint.
    refine: bool = True
    # Autocast dtype of the forward passes: fp32 (none), bf16, or fp16 (GPUs without bf16; CPU runs it too).
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    def check(self) -> None:
        if self.mode not in ("patches", "whole"):
            raise ValueError(f"mode must be 'patches' or 'whole', got {self.mode!r}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be a positive number of pixels, got {self.stride}")
        if self.scale <= 0 or self.batch_size < 1:
            raise ValueError(f"scale must be > 0 and batch_size >= 1, got {self.scale}, {self.batch_size}")
        if self.panoptic_join not in PANOPTIC_JOINS:
            raise ValueError(f"panoptic_join must be one of {', '.join(PANOPTIC_JOINS)}, got {self.panoptic_join!r}")
        if not 0 <= self.join_iou < 1:
            raise ValueError(f"join_iou must lie in [0, 1), got {self.join_iou}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {self.precision!r}")
        check_search(self.beams, self.samples, self.temperature, self.length_penalty)
