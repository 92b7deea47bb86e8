"""What every model offers to training and inference, written down as ``tokens/protocol.py`` does for tokenizers.

Training calls ``model.loss(images, *targets)`` with the batch entries ``model.target_keys`` names;
inference calls ``model.predict(images, options)``. Nothing outside ``rleseg.models`` asks a model what it
is: what differs between the token models (:class:`~rleseg.models.Pix2Seq`, its video variant) and the
dense baseline (:class:`~rleseg.models.DenseModel`) is behind these members.

    >>> prediction = model.predict(images, DecodingOptions(temperature=0))
    >>> prediction.masks[0]            # label map of the first patch (grid or patch resolution, see below)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from rleseg.tokens import MaskTokenizer, upsample_mask

from .generate import DecodingOptions


@dataclass
class Prediction:
    """What ``model.predict`` gives for B patches (or video windows), one entry per patch, in order.

    masks: as ``tokenizer.decode`` returns them: (h, w) label maps on the tokenizer's grid (image
        tokenizers), (N, h, w) volumes (video), (semantic, instances) pairs (panoptic); dense models, and
        token models that refine (unless ``DecodingOptions.refine`` is off): (P, P) int64 label maps at the
        patch's own resolution.
    tokens: (T_b,) int64, the generated tokens up to and including the first EOS (all of them when the
        sequence ran into ``max_len`` without one); several sequences a patch (per class, per band): each
        so cut, joined in prompt order (the tokenizer's flat form); dense models: empty.
    logprobs: (T_b,) float32, the log-probability of each of those tokens (see ``Generation``).
    runs: (B, 2) int64, per patch the runs its sequences stand for and the runs the decoder kept
        (``tokenizer.count_runs``); their difference is what lenient decoding dropped. Dense: 0.
    truncated: (B,) bool, sequences the length limit cut (``Generation.truncated``). Dense: False.
    run_scores: per patch (R,) float32, the probability of each decoded run (the product of the
        probabilities of its tokens), in ``decode_runs`` order; dense models: empty.
    score_maps: per patch a float32 map of the mask's shape: token models, the score of the run that
        paints each pixel (NaN where none does); dense models, the softmax probability of the pixel's
        class; video models: None (their runs paint a volume or time-as-class map, not the frames).
    passes: (B,) int64, the sequential decoder passes each patch took (its rows decode side by side: the
        most of them); dense models: 0.
    redrawn: (B,) int64, the pixels of each patch that the boundary refiner gave another class than the
        decoded mask upsampled (nearest); None where no refiner ran (dense models, ``refine`` off).
    """

    masks: list
    tokens: list[np.ndarray]
    logprobs: list[np.ndarray]
    runs: np.ndarray
    truncated: np.ndarray
    run_scores: list[np.ndarray]
    score_maps: list[np.ndarray | None]
    passes: np.ndarray
    redrawn: np.ndarray | None = None

    def refined(self, masks: list) -> Prediction:
        """This prediction with ``masks`` (label maps, or panoptic pairs) at the patch's resolution in place
        of the grid's; the score maps upsampled (nearest) to match, so a redrawn pixel keeps the score of its
        cell; ``redrawn`` counts the pixels whose class the new masks changed."""
        new, old = semantic_maps(masks), semantic_maps(self.masks)
        factor = new[0].shape[-1] // old[0].shape[-1]
        coarse = np.stack([upsample_mask(m, factor) for m in old])  # (B, P, P)
        redrawn = (np.stack(new) != coarse).reshape(len(masks), -1).sum(axis=1)
        return replace(self, masks=masks, score_maps=[upsample_mask(m, factor) for m in self.score_maps],
                       redrawn=redrawn.astype(np.int64))


def semantic_maps(masks: list) -> list[np.ndarray]:
    """The class maps of ``Prediction.masks``: the first of each panoptic (semantic, instances) pair."""
    return [m[0] if isinstance(m, tuple) else m for m in masks]


@runtime_checkable
class SegmentationModel(Protocol):
    """A ``torch.nn.Module`` that training and inference use through these members only.

    Images are (B, 3, P, P) float RGB in [0, 1] (video models: windows (B, N, 3, P, P)), P divisible by
    the backbone's stride.
    """

    tokenizer: MaskTokenizer  # the task (classes, mask grid); token models also write its sequences
    config: object  # the model's config dataclass, as checkpoints store it

    @property
    def target_keys(self) -> tuple[str, ...]:
        """The batch entries (``rleseg.data.Collate``) that :meth:`loss` takes after the images, in order."""
        ...

    @property
    def max_seq_len(self) -> int | None:
        """The longest token sequence the model writes (training sequences are cut there); None: no tokens."""
        ...

    @property
    def grid_factor(self) -> int:
        """Patch pixels per cell of the masks the model decides on (the tokenizer's grid; 1 for the dense head)."""
        ...

    @property
    def refines(self) -> bool:
        """Whether :meth:`predict` redraws its masks at the patch's resolution (``DecodingOptions.refine``)."""
        ...

    def loss(self, images: torch.Tensor, *targets: torch.Tensor) -> torch.Tensor:
        """The scalar training loss of a batch."""
        ...

    def predict(self, images: torch.Tensor, options: DecodingOptions | None = None,
                generator: torch.Generator | None = None) -> Prediction:
        """Label maps (and tokens and scores where the model has them) of a batch, in eval mode."""
        ...


def output_factor(model: SegmentationModel, options: DecodingOptions) -> int:
    """Patch pixels per cell of the masks ``model.predict`` gives with ``options`` (1: the patch's resolution)."""
    return 1 if model.refines and options.refine else model.grid_factor
