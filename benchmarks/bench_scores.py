"""What the scores cost: ``run_scores`` per sequence against decoding it, ``stitch_score_maps`` per image
against stitching its labels, one thread.

Sequences: 50 random 64 x 64 masks of twelve 8 x 8 squares of two classes (about 86 runs each), encoded by
an lac tokenizer, with random log-probabilities. Stitching: a 1024 x 1024 image of 256-pixel patches
subsampled by 4 (16 patches). Times are the best of 5 repeats.

    .venv/bin/python benchmarks/bench_scores.py
"""

from __future__ import annotations

import time

import numpy as np
import torch

from rleseg.data.patches import PatchConfig, sliding_windows
from rleseg.inference.stitch import stitch_patches_of_image, stitch_score_maps
from rleseg.models.decode import run_scores
from rleseg.tokens import Tokenizer


def best_of(function, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def squares(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    for _ in range(12):
        row, col = rng.integers(0, size - 8, 2)
        mask[row : row + 8, col : col + 8] = rng.integers(1, 3)
    return mask


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    tokenizer = Tokenizer((64, 64), 3)
    masks = [squares(rng) for _ in range(50)]
    sequences = [tokenizer.encode(m) for m in masks]
    logprobs = [-rng.random(s.size).astype(np.float32) for s in sequences]
    runs = np.mean([(s.size - 1) / tokenizer.tokens_per_run for s in sequences])
    decode = best_of(lambda: [tokenizer.decode(s) for s in sequences]) / len(sequences)
    scores = best_of(lambda: [run_scores(tokenizer, s, lp, "strict") for s, lp in zip(sequences, logprobs,
                                                                                        strict=True)]) / len(sequences)
    print(f"{runs:.0f} runs per sequence: decode {decode * 1e6:.0f} us, run_scores {scores * 1e6:.0f} us")

    shape = (1024, 1024)
    boxes = sliding_windows(shape, 256, None)
    predictions = np.stack([masks[k % len(masks)] for k in range(len(boxes))])
    maps = np.stack([run_scores(tokenizer, sequences[k % 50], logprobs[k % 50], "strict")[1]
                     for k in range(len(boxes))])
    config = PatchConfig(patch_size=256, factor=4, scale=1.0)
    labels = stitch_patches_of_image(predictions, boxes, config, shape, 3)
    stitch_labels = best_of(lambda: stitch_patches_of_image(predictions, boxes, config, shape, 3))
    stitch_scores = best_of(lambda: stitch_score_maps(maps, predictions, boxes, config, labels))
    print(f"{len(boxes)} patches, {shape[0]}x{shape[1]}: stitch labels {stitch_labels * 1e3:.1f} ms, "
          f"stitch scores {stitch_scores * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
