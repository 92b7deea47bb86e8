"""One batch of patches (or video windows) through a model: :func:`predict_batch`.

Token models generate once; each sequence is cut after its first EOS once, decoded once
(``errors="strict"`` under the grammar, which guarantees well-formed sequences; ``"ignore"`` otherwise,
dropping malformed runs) and its runs are counted by the tokenizer. Dense models (``target_key ==
"mask"``) give the argmax of their logits and no tokens. Both the predictor and the training loop's
validation go through here, so a mask is always decoded the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..tokens import EOS
from .options import InferenceOptions


@dataclass
class BatchPrediction:
    """What :func:`predict_batch` gives for B patches, one entry per patch, in order.

    masks: as ``tokenizer.decode`` returns them: (h, w) label maps on the tokenizer's grid (image
        tokenizers), (N, h, w) volumes (video), (semantic, instances) pairs (panoptic); dense models:
        (P, P) int64 label maps at the patch's own resolution.
    tokens: (T_b,) int64, the generated tokens up to and including the first EOS (all of them when the
        sequence ran into ``max_len`` without one); dense models: empty.
    logprobs: (T_b,) float32, the log-probability of each of those tokens (see ``Generation``).
    runs: (B, 2) int64, per sequence the runs it stands for and the runs the decoder kept
        (``tokenizer.count_runs``); their difference is what lenient decoding dropped. Dense: 0.
    truncated: (B,) bool, sequences the length limit ``max_len`` cut (``Generation.truncated``): without
        EOS (unconstrained), or ended by the grammar because no further run fitted (constrained).
    """

    masks: list
    tokens: list[np.ndarray]
    logprobs: list[np.ndarray]
    runs: np.ndarray
    truncated: np.ndarray


@torch.no_grad()
def predict_batch(model, images: torch.Tensor, options: InferenceOptions | None = None,
                  generator: torch.Generator | None = None) -> BatchPrediction:
    """Masks for a batch of patches: images (B, 3, P, P) float in [0, 1] (video models: (B, N, 3, P, P)),
    on the model's device. Sampling follows ``options`` (temperature, top_p, constrained, max_len,
    eos_by_mass); ``generator`` seeds it."""
    o = options or InferenceOptions()
    batch = len(images)
    if model.target_key == "mask":
        labels = model.predict_logits(images).argmax(1).cpu().numpy()  # (B, P, P) int64
        empty = [np.zeros(0, np.int64)] * batch
        return BatchPrediction(list(labels), empty, [np.zeros(0, np.float32)] * batch,
                               np.zeros((batch, 2), np.int64), np.zeros(batch, bool))
    out = model.generate(images, max_len=o.max_len, temperature=o.temperature, top_p=o.top_p,
                         constrained=o.constrained, generator=generator, eos_by_mass=o.eos_by_mass)
    tokenizer, errors = model.tokenizer, "strict" if o.constrained else "ignore"
    result = BatchPrediction([], [], [], np.zeros((batch, 2), np.int64), np.zeros(batch, bool))
    result.truncated[:] = out.truncated.numpy()
    for b, (row, logprobs) in enumerate(zip(out.tokens.numpy(), out.logprobs.numpy(), strict=True)):
        eos = np.flatnonzero(row == EOS)
        end = eos[0] + 1 if eos.size else row.size
        result.tokens.append(row[:end])
        result.logprobs.append(logprobs[:end])
        result.masks.append(tokenizer.decode(row[:end], errors=errors))
        result.runs[b] = tokenizer.count_runs(row[:end], errors)  # strict: decoded above, not again
    return result

