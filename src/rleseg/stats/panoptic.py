"""Statistics of instance masks under the panoptic tokenizer: sequence lengths, fidelity and PQ.

Each mask is an (H, W) instance map: 0 is background, every other value one instance of a single thing
class (class 1; there is no stuff). For every start mode x subsampling factor: tokens per mask (EOS
included), instances per mask after subsampling (small instances can vanish), the vocabulary, the
semantic fidelity (IoU and boundary F of foreground vs background, as for images) and the panoptic
quality (PQ, SQ, RQ of the thing class, COCO panopticapi rules) of downsample -> encode -> (cut) ->
decode -> upsample against the full-resolution instances.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from rleseg.metrics import PanopticMeter
from rleseg.tokens import downsample_mask, upsample_mask
from rleseg.tokens.panoptic import PanopticTokenizer

from ..imageio import MaskError
from .core import RECOMMENDATION, Accumulator, Fidelity, StatsOptions, fidelity_scores, progress_bar
from .masks import over_folder

THING = 1  # the class every instance gets


@dataclass
class PanopticQuality:
    pq: float | None
    sq: float | None
    rq: float | None


@dataclass
class PanopticRow:
    """One (starts, factor) configuration."""

    starts: str
    factor: int
    mask_size: tuple[int, int]  # the largest subsampled mask
    vocab_size: int
    mean: float  # tokens per mask
    p50: int
    p95: int
    p99: int
    max: int
    instances: float  # mean instances per mask left after subsampling
    truncated: float | None
    fidelity: Fidelity  # semantic: background 0 / instances 1
    quality: PanopticQuality


@dataclass
class PanopticStats:
    num_images: int
    instances: float  # mean instances per full-resolution mask
    mask_sizes: dict[str, int]
    options: StatsOptions
    rows: list[PanopticRow]
    subsampling: dict[int, Fidelity]  # per factor: semantic fidelity of subsampling alone
    subsampling_quality: dict[int, PanopticQuality]  # per factor: PQ of subsampling alone
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = {"recommendation": RECOMMENDATION, **asdict(self)}
        data["options"] = asdict(self.options)
        data["subsampling"] = {str(k): asdict(v) for k, v in self.subsampling.items()}
        data["subsampling_quality"] = {str(k): asdict(v) for k, v in self.subsampling_quality.items()}
        return data


def panoptic_stats(
    masks: Iterable[tuple[str, np.ndarray]], options: StatsOptions | None = None, progress: bool = False,
    total: int | None = None,
) -> PanopticStats:
    """Token lengths, fidelity and PQ of (H, W) instance masks for every starts x factor of ``options``.

    ``options.schemes`` and ``num_classes`` do not apply (the panoptic tokenizer has one layout, and the
    masks one thing class); ``ignore_index`` marks void pixels, left out of every score.

    Raises:
        MaskError: a mask is not a 2-D integer map.
    """
    options = options or StatsOptions()
    notes = []
    if options.num_classes not in (None, 2):
        notes.append(f"num_classes={options.num_classes} ignored: instance masks have one thing class")
    # The accumulator sees the semantic side: 0 background, 1 instance, ignore_index void.
    acc = Accumulator(replace(options, num_classes=2))
    meters: dict[tuple[str, int], PanopticMeter] = {}
    subsampling_meters: dict[int, PanopticMeter] = {}
    kept: dict[tuple[str, int], list[int]] = {}
    counts = []
    for name, mask in progress_bar(masks, progress, total):
        mask = np.asarray(mask)
        if mask.ndim != 2 or not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
            raise MaskError(f"{name}: expected a 2-D integer instance map, got shape {mask.shape} {mask.dtype}")
        instances = mask.astype(np.int64)
        void = instances == options.ignore_index if options.ignore_index is not None else np.zeros(mask.shape, bool)
        instances[void] = 0
        truth = np.where(void, options.ignore_index or 0, instances > 0).astype(np.int64)
        acc.begin_mask(name, truth)
        counts.append(np.unique(instances[instances > 0]).size)
        gt = (truth, instances)
        for factor in options.factors:
            small = downsample_mask(instances, factor, options.downsample_method)
            shared = _scores(gt, small, factor, options)
            acc.add_subsampling(factor, shared[0])
            _meter(subsampling_meters, factor, options).update(*shared[1], *gt)
            for starts in options.starts:
                tokenizer = PanopticTokenizer(small.shape, 2, [THING], starts, options.order, options.max_run)
                tokens = tokenizer.encode(small > 0, small)
                length = tokens.size
                if options.max_seq_len is not None:
                    tokens = tokens[: options.max_seq_len]
                decoded = tokenizer.decode(tokens, errors="ignore")[1]
                scores = shared if np.array_equal(decoded > 0, small > 0) and _same_partition(decoded, small) else (
                    _scores(gt, decoded, factor, options)
                )
                acc.add("panoptic", starts, factor, length, small.shape, scores[0])
                _meter(meters, (starts, factor), options).update(*scores[1], *gt)
                kept.setdefault((starts, factor), []).append(np.unique(decoded[decoded > 0]).size)
    if acc.num_images == 0:
        raise MaskError("no masks given")

    def vocab_size(_: str, starts: str, size: tuple[int, int], __: int) -> int:
        return PanopticTokenizer(size, 2, [THING], starts, options.order, options.max_run).vocab.size

    result = acc.result(vocab_size)
    rows = [
        PanopticRow(
            starts=row.starts, factor=row.factor, mask_size=row.mask_size, vocab_size=row.vocab_size,
            mean=row.mean, p50=row.p50, p95=row.p95, p99=row.p99, max=row.max,
            instances=float(np.mean(kept[(row.starts, row.factor)])), truncated=row.truncated,
            fidelity=row.fidelity, quality=_quality(meters[(row.starts, row.factor)]),
        )
        for row in result.rows
    ]
    return PanopticStats(
        num_images=result.num_images,
        instances=float(np.mean(counts)),
        mask_sizes=result.mask_sizes,
        options=options,
        rows=rows,
        subsampling=result.subsampling,
        subsampling_quality={f: _quality(m) for f, m in subsampling_meters.items()},
        notes=notes,
    )


def folder_panoptic_stats(folder: str | Path, options: StatsOptions | None = None, pattern: str = "*",
                          recursive: bool = False, progress: bool = False) -> PanopticStats:
    """:func:`panoptic_stats` over the instance masks of a folder."""
    return over_folder(panoptic_stats, folder, options, pattern, recursive, progress)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two instance maps group the pixels identically (ids may differ)."""
    a, b = a.ravel().astype(np.int64), b.ravel().astype(np.int64)
    pairs = np.unique(a * (int(b.max(initial=0)) + 1) + b)
    return np.unique(a).size == pairs.size == np.unique(b).size


def _scores(gt: tuple[np.ndarray, np.ndarray], small: np.ndarray, factor: int, options: StatsOptions):
    """((IoU, BF) of the semantic side, (semantic, instances) restored to full resolution)."""
    truth, _ = gt
    restored = upsample_mask(small, factor, truth.shape)
    semantic = (restored > 0).astype(np.int64)
    scores = fidelity_scores(truth, semantic, 2, options.tolerance, options.ignore_index)
    return scores, (semantic, restored)


def _meter(meters: dict, key, options: StatsOptions) -> PanopticMeter:
    if key not in meters:
        # Background is neither thing nor stuff: void to PQ, as in instance-segmentation benchmarks.
        meters[key] = PanopticMeter(2, [THING], stuff_classes=[], ignore_index=options.ignore_index)
    return meters[key]


def _quality(meter: PanopticMeter) -> PanopticQuality:
    things = meter.compute()["things"]
    return PanopticQuality(pq=things["pq"], sq=things["sq"], rq=things["rq"])
