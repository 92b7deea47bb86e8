"""Token lengths of the patches a training run actually sees (``rleseg stats --config``).

``rleseg stats MASK_DIR`` measures whole masks; a model reads patch masks after the config's patch
pipeline (random strides, augmentation, subsampling), so ``max_seq_len`` is best chosen from these.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .data.loading import sequence_rows
from .experiment import ExperimentConfig, build_datasets, build_model_config, build_tokenizer
from .progress import progress


@dataclass
class PatchLengths:
    """Tokens (body + EOS) per training sequence (per patch, or per patch and class with per-class sequences)
    over ``epochs`` epochs of the training set; ``patches`` counts the sequences."""

    patches: int
    epochs: int
    mean: float
    p50: int
    p95: int
    p99: int
    max: int
    max_seq_len: int | None  # the config's, None for a dense model
    cut: float  # share of the patches longer than max_seq_len (0 without one)

    def recommendation(self) -> str:
        if self.max_seq_len is None:
            return f"the dense model reads masks, not tokens; token models need max_seq_len >= {self.p99} (p99)"
        verdict = "fits" if self.max_seq_len >= self.p99 else "is below p99: raise it"
        return (f"model.max_seq_len {self.max_seq_len} {verdict}; choose max_seq_len >= p99 = {self.p99} (cuts "
                f"{100 * self.cut:.1f}% of the patches now)")


def patch_lengths(config: ExperimentConfig, epochs: int = 1, show_progress: bool = True) -> PatchLengths:
    """Every training patch of ``epochs`` epochs, tokenized as training would; nothing is trained."""
    tokenizer = build_tokenizer(config)
    train, _ = build_datasets(config, tokenizer)
    lengths = []
    for epoch in range(epochs):
        train.set_epoch(epoch)
        items = progress(range(len(train)), desc=f"patches (epoch {epoch + 1}/{epochs})", unit="patch",
                         enabled=show_progress, terminal_only=True, leave=False)
        lengths += token_lengths(train, items)
    return summarise(lengths, epochs, build_model_config(config).max_seq_len)  # None for the dense model


def token_lengths(dataset, items: Iterable[int]) -> list[int]:
    """Tokens (body + EOS) of the sequences of the patches ``items`` of ``dataset``, as the dataset tokenizes
    them and the model reads them: one per patch, or one per foreground class (:func:`sequence_rows`)."""
    return [int(row.numel()) for i in items for row in sequence_rows(dataset[i]["tokens"])]


def summarise(lengths: list[int], epochs: int, max_seq_len: int | None) -> PatchLengths:
    """The percentiles of ``lengths`` and the share of them longer than ``max_seq_len``."""
    lengths = np.asarray(lengths)
    p50, p95, p99 = (int(np.ceil(np.percentile(lengths, q))) for q in (50, 95, 99))
    cut = float((lengths > max_seq_len).mean()) if max_seq_len is not None else 0.0
    return PatchLengths(len(lengths), epochs, float(lengths.mean()), p50, p95, p99, int(lengths.max()), max_seq_len,
                        cut)
