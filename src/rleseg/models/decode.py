"""Generated token rows -> a :class:`~rleseg.models.protocol.Prediction`, in numpy: each sequence cut after
its first EOS once, decoded once (``errors="strict"`` under the grammar, which guarantees well-formed
sequences; ``"ignore"`` otherwise, dropping malformed runs) and its runs counted by the tokenizer.

Scores: a run's score is the probability the model gave to the tokens that say it (start, length or end,
class: the product of their probabilities, ``exp`` of the summed ``Generation.logprobs``; a panoptic run's
tokens include its group's class token); a score map gives each pixel the score of the run that paints it
(NaN where none does: background, which a sequence never writes). Reading the runs' token positions parses
the sequence's runs once more (``decode_runs_at``, no painting).
"""

from __future__ import annotations

import math

import numpy as np

from rleseg.tokens import EOS, MaskTokenizer, Runs
from rleseg.tokens.runs import paint_runs

from .generate import Generation
from .protocol import Prediction


def decode_generation(tokenizer: MaskTokenizer, out: Generation, constrained: bool) -> Prediction:
    """The masks, tokens, run counts and scores of a generation of ``len(tokenizer.prompts)`` adjacent rows
    per patch."""
    per_image = len(tokenizer.prompts)
    batch, errors = len(out.tokens) // per_image, "strict" if constrained else "ignore"
    passes = out.passes.numpy().reshape(batch, per_image).max(axis=1)
    result = Prediction([], [], [], np.zeros((batch, 2), np.int64), np.zeros(batch, bool), [], [], passes)
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
    return result


def cut_after_eos(tokens: np.ndarray, logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A generated row's tokens and log-probabilities up to and including its first EOS (all without one)."""
    eos = np.flatnonzero(tokens == EOS)
    end = eos[0] + 1 if eos.size else tokens.size
    return tokens[:end], logprobs[:end]


def run_scores(tokenizer: MaskTokenizer, tokens: np.ndarray, logprobs: np.ndarray, errors: str
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
