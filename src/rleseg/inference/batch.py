"""One batch of patches (or video windows) through a model: :func:`predict_batch`.

Token models generate once; each sequence is cut after its first EOS once, decoded once
(``errors="strict"`` under the grammar, which guarantees well-formed sequences; ``"ignore"`` otherwise,
dropping malformed runs) and its runs are counted by the tokenizer. Dense models (``target_key ==
"mask"``) give the argmax of their logits and no tokens. A token model with a refiner (``model.refine_band``)
redraws its decoded masks' boundary band at full resolution, reading the encoder's pyramid computed
once for generation and refinement; ``InferenceOptions.refine`` off keeps the decoded masks.

Scores: a run's score is the probability the model gave to the tokens that say it (start, length,
class: the product of their probabilities, ``exp`` of the summed ``Generation.logprobs``; a panoptic
run's tokens include its group's class token); a score map gives each pixel the score of the run that
paints it (NaN where none does: background, which a sequence never writes). Dense models: each
pixel's softmax probability of its predicted class. Reading the runs' token positions parses the
sequence's runs once more (``decode_runs_at``, no painting). Both the predictor and the training loop's
validation go through here, so a mask is always decoded the same way.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..tokens import EOS, Runs
from ..tokens.runs import paint_runs, upsample_mask
from .options import InferenceOptions


@dataclass
class BatchPrediction:
    """What :func:`predict_batch` gives for B patches, one entry per patch, in order.

    masks: as ``tokenizer.decode`` returns them: (h, w) label maps on the tokenizer's grid (image
        tokenizers), (N, h, w) volumes (video), (semantic, instances) pairs (panoptic); dense models,
        and token models with a refiner unless ``InferenceOptions.refine`` is off: (P, P) int64 label
        maps at the patch's own resolution.
    tokens: (T_b,) int64, the generated tokens up to and including the first EOS (all of them when the
        sequence ran into ``max_len`` without one); per-class sequences: each class's so cut, joined in
        class order (the tokenizer's flat form); dense models: empty.
    logprobs: (T_b,) float32, the log-probability of each of those tokens (see ``Generation``).
    runs: (B, 2) int64, per sequence the runs it stands for and the runs the decoder kept
        (``tokenizer.count_runs``); their difference is what lenient decoding dropped. Dense: 0.
    truncated: (B,) bool, sequences the length limit ``max_len`` cut (``Generation.truncated``): without
        EOS (unconstrained), or ended by the grammar because no further run fitted (constrained).
    run_scores: per patch (R,) float32, the probability of each decoded run, in ``decode_runs`` order
        (see the module doc); dense models: empty.
    score_maps: per patch a float32 map of the mask's shape: the score of each pixel (module doc);
        video models: None (their runs paint a volume or time-as-class map, not the frames).
    """

    masks: list
    tokens: list[np.ndarray]
    logprobs: list[np.ndarray]
    runs: np.ndarray
    truncated: np.ndarray
    run_scores: list[np.ndarray]
    score_maps: list[np.ndarray | None]


@torch.no_grad()
def predict_batch(model, images: torch.Tensor, options: InferenceOptions | None = None,
                  generator: torch.Generator | None = None) -> BatchPrediction:
    """Masks for a batch of patches: images (B, 3, P, P) float in [0, 1] (video models: (B, N, 3, P, P)),
    on the model's device. Sampling follows ``options`` (temperature, top_p, constrained, max_len,
    eos_by_mass), under the autocast of ``options.precision``; ``generator`` seeds it."""
    o = options or InferenceOptions()
    with autocast(images.device, o.precision):
        return _predict_batch(model, images, o, generator)


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` ("fp32": none; "bf16", "fp16": that dtype) on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def _predict_batch(model, images: torch.Tensor, o: InferenceOptions, generator: torch.Generator | None
                   ) -> BatchPrediction:
    batch = len(images)
    if model.target_key == "mask":
        probability, labels = model.predict_logits(images).float().softmax(1).max(1)  # (B, P, P) each
        empty = [np.zeros(0, np.int64)] * batch
        none = [np.zeros(0, np.float32)] * batch
        return BatchPrediction(list(labels.cpu().numpy()), empty, none, np.zeros((batch, 2), np.int64),
                               np.zeros(batch, bool), none, list(probability.cpu().numpy()))
    refiner = getattr(model, "refiner", None) if o.refine else None
    encoded = _encode(model, images) if refiner is not None else None  # once, for generation and refinement
    out = model.generate(images, max_len=o.max_len, temperature=o.temperature, top_p=o.top_p,
                         constrained=o.constrained, generator=generator, eos_by_mass=o.eos_by_mass, encoded=encoded,
                         beams=o.beams, samples=o.samples, length_penalty=o.length_penalty)
    tokenizer, errors = model.tokenizer, "strict" if o.constrained else "ignore"
    result = BatchPrediction([], [], [], np.zeros((batch, 2), np.int64), np.zeros(batch, bool), [], [])
    per_image = len(tokenizer.prompts)  # rows of one image: 1, or one per class (adjacent)
    result.truncated[:] = out.truncated.numpy().reshape(batch, per_image).any(axis=1)
    rows = list(zip(out.tokens.numpy(), out.logprobs.numpy(), strict=True))
    for b in range(batch):
        cut = [cut_after_eos(*row) for row in rows[b * per_image : (b + 1) * per_image]]
        tokens, logprobs = (np.concatenate([c[i] for c in cut]) for i in (0, 1))  # the flat form
        result.tokens.append(tokens)
        result.logprobs.append(logprobs)
        result.masks.append(tokenizer.decode(tokens, errors=errors))
        result.runs[b] = tokenizer.count_runs(tokens, errors)  # strict: decoded above, not again
        scores, score_map = run_scores(tokenizer, tokens, logprobs, errors)
        result.run_scores.append(scores)
        result.score_maps.append(score_map)
    if refiner is not None:
        refine(model, images, encoded[2], result)
    return result


def cut_after_eos(tokens: np.ndarray, logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A generated row's tokens and log-probabilities up to and including its first EOS (all without one)."""
    eos = np.flatnonzero(tokens == EOS)
    end = eos[0] + 1 if eos.size else tokens.size
    return tokens[:end], logprobs[:end]


def _encode(model, images: torch.Tensor) -> tuple:
    """``model.encode(images)`` in eval mode, as generation computes it."""
    was_training = model.training
    model.eval()
    encoded = model.encode(images)
    model.train(was_training)
    return encoded


def refine(model, images: torch.Tensor, cells: torch.Tensor, result: BatchPrediction) -> None:
    """The decoded masks of ``result`` -> the refiner's full-resolution masks (``Pix2Seq.refine``), their
    score maps upsampled (nearest) to match: a redrawn pixel keeps the score of its cell."""
    coarse = torch.from_numpy(np.stack(result.masks).astype(np.int64)).to(images.device)
    refined = model.refine(images, cells, coarse).cpu().numpy()
    factor = refined.shape[-1] // coarse.shape[-1]
    result.masks = list(refined)
    result.score_maps = [upsample_mask(m, factor) for m in result.score_maps]


def run_scores(tokenizer, tokens: np.ndarray, logprobs: np.ndarray, errors: str
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """((R,) float32 probability of each run of ``tokens``, the score map of the mask (None for video));
    see the module doc."""
    runs, positions = tokenizer.decode_runs_at(tokens, errors)
    scores = np.exp(logprobs[positions].sum(axis=1, dtype=np.float64)).astype(np.float32)
    if tokenizer.task == "video":
        return scores, None
    numbered = Runs(runs.starts, runs.lengths, np.arange(1, len(runs) + 1))  # painted as decode paints them
    painted = paint_runs(numbered, math.prod(tokenizer.mask_size), np.int64)
    score_map = np.concatenate(([np.nan], scores)).astype(np.float32)[painted]
    return scores, score_map.reshape(tokenizer.mask_size, order=tokenizer.order)

