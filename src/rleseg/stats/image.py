"""Statistics of 2-D label masks: every scheme x start mode x subsampling factor of the image tokenizer."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from rleseg.tokens import Tokenizer, downsample_mask

from ..imageio import MaskError
from .core import Accumulator, DatasetStats, StatsOptions, VocabSize, encode_cut_decode, progress_bar
from .masks import over_folder


def image_stats(
    masks: Iterable[tuple[str, np.ndarray]], options: StatsOptions | None = None, progress: bool = False,
    total: int | None = None,
) -> DatasetStats:
    """Token lengths and fidelity of 2-D label masks for every scheme x starts x factor of ``options``.

    Args:
        masks: (name, (H, W) integer label map) pairs; names appear in error messages.
        progress: show a tqdm bar on stderr (only when stderr is a terminal).
        total: number of masks, for the progress bar.

    Raises:
        MaskError: a mask holds a label >= ``options.num_classes`` or is not a 2-D label map.
    """
    options = options or StatsOptions()
    acc = Accumulator(options)
    for name, mask in progress_bar(masks, progress, total):
        mask = np.asarray(mask)
        if mask.ndim != 2 or not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
            raise MaskError(f"{name}: expected a 2-D integer label map, got shape {mask.shape} {mask.dtype}")
        _add_image(acc, name, mask.astype(np.uint8) if mask.dtype == bool else mask)
    if "binary" in options.schemes and acc.num_images and acc.num_classes != 2:
        note = f"scheme 'binary' skipped: it needs 2 classes, the masks have {acc.num_classes}"
        return acc.result(_vocab_size(options), exclude=("binary",), notes=[note])
    return acc.result(_vocab_size(options))


def folder_stats(folder: str | Path, options: StatsOptions | None = None, pattern: str = "*", recursive: bool = False,
                 progress: bool = False) -> DatasetStats:
    """:func:`image_stats` over the label masks of a folder."""
    return over_folder(image_stats, folder, options, pattern, recursive, progress)


def _add_image(acc: Accumulator, name: str, truth: np.ndarray) -> None:
    """Downsample -> encode -> (cut) -> decode -> upsample one mask for every configuration."""
    opts = acc.options
    mask, num_classes = acc.begin_mask(name, truth)
    for factor in opts.factors:
        small = downsample_mask(mask, factor, opts.downsample_method)
        # Scored once per distinct reconstruction: every scheme that decodes back to `small` shares it.
        shared = acc.score(truth, small, factor, num_classes)
        acc.add_subsampling(factor, shared)
        for scheme in opts.schemes:
            if scheme == "binary" and num_classes != 2:
                continue  # the dataset has more classes: its binary rows are dropped at the end
            for starts in opts.starts:
                tokenizer = Tokenizer(small.shape, num_classes, scheme, starts, opts.order, opts.max_run)
                tokens, decoded = encode_cut_decode(tokenizer, small, opts.max_seq_len)
                scores = shared if np.array_equal(decoded, small) else acc.score(truth, decoded, factor, num_classes)
                acc.add(scheme, starts, factor, tokens.size, small.shape, scores)
                acc.add_text_length(scheme, starts, factor, tokenizer, tokens)


def _vocab_size(options: StatsOptions) -> VocabSize:
    def vocab_size(scheme: str, starts: str, size: tuple[int, int], num_classes: int) -> int:
        return Tokenizer(size, num_classes, scheme, starts, options.order, options.max_run).vocab.size

    return vocab_size
