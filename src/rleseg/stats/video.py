"""Statistics of video masks: tokens per window of N frames under volume, TAC and LTAC, and how they grow.

For every window size n in 1, 2, 4, ... up to the requested N (and N itself), every encoding (volume with
LAC, TAC with the class scheme, LTAC = TAC with LAC), start mode and subsampling factor: tokens per window
(EOS included) and per frame, the growth against encoding the same frames one by one, the vocabulary the
configuration needs and whether it fits ``max_vocab``, and the fidelity of downsample -> encode -> (cut)
-> decode -> upsample, scored per window with the frames pooled. Windows do not overlap (stride n), as
at evaluation. Token counts do not depend on the class count C (a TAC id is injective for any base above
the largest label), so they are measured even where the vocabulary is infeasible; ``feasible`` says
whether a model could use them.

Input: a multi-page TIFF (T, H, W) is one video; a folder holds either the 2-D frames of one video (in
file name order) or multi-page TIFFs, one video each.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rleseg.tokens import downsample_mask, upsample_mask
from rleseg.tokens.video import DEFAULT_MAX_VOCAB, VideoTokenizer, video_vocab_size

from ..imageio import MASK_SUFFIXES, MaskError, frames_shape, read_label_map
from .core import (
    Accumulator,
    Fidelity,
    StatsOptions,
    StatsRow,
    encode_cut_decode,
    fidelity_scores,
    progress_bar,
    result_dict,
)
from .masks import find_masks

# Encoding name -> (temporal, scheme) of the VideoTokenizer.
ENCODINGS = {"volume": ("volume", "lac"), "TAC": ("tac", "class"), "LTAC": ("tac", "lac")}


def window_sizes(frames: int) -> tuple[int, ...]:
    """1, 2, 4, ... below ``frames``, then ``frames``: enough points to see how token counts grow."""
    if int(frames) != frames or frames < 1:
        raise ValueError(f"frames per window must be a positive integer, got {frames!r}")
    sizes = [1 << k for k in range(int(frames).bit_length()) if 1 << k < frames]
    return (*sizes, int(frames))


@dataclass
class VideoRow:
    """One (encoding, frames, starts, factor) configuration."""

    encoding: str  # "volume", "TAC" or "LTAC"
    frames: int  # n, frames per window
    starts: str
    factor: int
    mask_size: tuple[int, int]  # the largest subsampled frame
    vocab_size: int
    feasible: bool  # vocab_size <= max_vocab
    windows: int
    mean: float  # tokens per window
    p50: int
    p95: int
    p99: int
    max: int
    per_frame: float  # mean / n
    # Tokens of all windows / tokens of the same frames encoded one by one (same encoding, starts and
    # factor): below 1, a window costs less than its frames alone. None if the frames take no tokens.
    growth: float | None
    truncated: float | None
    fidelity: Fidelity


@dataclass
class VideoStats:
    num_videos: int
    num_frames: int
    num_classes: int
    num_classes_inferred: bool
    frames: list[int]  # window sizes measured
    max_vocab: int
    options: StatsOptions
    rows: list[VideoRow]
    subsampling: dict[int, Fidelity]  # per factor, frame by frame (the n = 1 windows)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return result_dict(self)


# ----------------------------------------------------------------------------- reading videos
def read_video(path: str | Path) -> np.ndarray:
    """A (T, H, W) integer label video from a multi-page TIFF (a 2-D file gives one frame).

    Raises:
        MaskError: the file is missing, unreadable or not a stack of label maps.
    """
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return read_label_map(path)[None]
    if not path.is_file():
        raise MaskError(f"{path}: no such file")
    frames_shape(path)  # the header's pixels against the limit, before any is read
    try:
        import tifffile

        video = np.asarray(tifffile.imread(path))
    except Exception as error:  # any decoder failure means the file is unreadable
        raise MaskError(f"{path}: cannot read TIFF ({type(error).__name__}: {error})") from error
    if video.ndim == 2:
        video = video[None]
    if video.ndim != 3:
        raise MaskError(f"{path}: TIFF has shape {video.shape}, expected (frames, H, W) label maps")
    if not np.issubdtype(video.dtype, np.integer) and video.dtype != bool:
        raise MaskError(f"{path}: has dtype {video.dtype}, expected integer class labels")
    if video.size and video.min() < 0:
        raise MaskError(f"{path}: holds negative label {int(video.min())}, expected labels >= 0")
    return video.astype(np.uint8) if video.dtype == bool else video


def iter_videos(path: str | Path, pattern: str = "*", recursive: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """(name, (T, H, W) video) pairs from a multi-page TIFF, a folder of frames, or a folder of TIFF stacks."""
    path = Path(path)
    if path.is_file():
        yield str(path), read_video(path)
        return
    files = find_masks(path, pattern, recursive)
    videos = [(f, read_video(f)) for f in files]
    stacks = [(f, v) for f, v in videos if v.shape[0] > 1]
    if stacks and len(stacks) < len(videos):
        raise MaskError(
            f"{path}: mixes single frames ({len(videos) - len(stacks)}) and multi-frame TIFFs ({len(stacks)}); "
            f"a folder holds the frames of one video or multi-frame TIFFs, one video each"
        )
    if stacks:
        yield from ((str(f), v) for f, v in stacks)
        return
    shapes = {v.shape[1:] for _, v in videos}
    if len(shapes) > 1:
        raise MaskError(f"{path}: frames of one video must share one size, got {sorted(shapes)}")
    yield str(path), np.concatenate([v for _, v in videos])


# ----------------------------------------------------------------------------- statistics
def video_stats(
    videos: Iterable[tuple[str, np.ndarray]], frames: int, options: StatsOptions | None = None,
    max_vocab: int = DEFAULT_MAX_VOCAB, progress: bool = False, total: int | None = None,
) -> VideoStats:
    """Token lengths and fidelity of (T, H, W) label videos in windows of 1, 2, 4, ... ``frames`` frames.

    ``options.schemes`` does not apply (the encodings are fixed: volume, TAC, LTAC); ``options.starts``,
    factors, order, max_run, num_classes, ignore_index, tolerance and max_seq_len do.

    Raises:
        MaskError: a video is not a (T, H, W) integer array, or holds a label >= ``options.num_classes``.
    """
    options = options or StatsOptions()
    sizes = window_sizes(frames)
    accs = {n: Accumulator(options) for n in sizes}
    # Growth: tokens of the windows against the tokens of the same frames encoded one by one.
    window_tokens: dict[tuple, int] = {}
    frame_tokens: dict[tuple, int] = {}
    num_videos = num_frames = 0
    for name, video in progress_bar(videos, progress, total):
        video = np.asarray(video)
        if video.ndim != 3 or not (np.issubdtype(video.dtype, np.integer) or video.dtype == bool):
            raise MaskError(f"{name}: expected a (frames, H, W) integer label video, got shape {video.shape} "
                            f"{video.dtype}")
        video = video.astype(np.uint8) if video.dtype == bool else video
        num_videos, num_frames = num_videos + 1, num_frames + video.shape[0]
        single: dict[tuple, list[int]] = {}  # configuration -> tokens of each frame alone (sizes[0] == 1)
        for n in sizes:
            for first in range(0, video.shape[0] - n + 1, n):
                lengths = _add_window(accs[n], f"{name} frames {first}..{first + n - 1}", video[first : first + n])
                for key, length in lengths.items():
                    if n == 1:
                        single.setdefault(key, []).append(length)
                    window_tokens[(n, *key)] = window_tokens.get((n, *key), 0) + length
                    frame_tokens[(n, *key)] = frame_tokens.get((n, *key), 0) + sum(single[key][first : first + n])
    if num_videos == 0:
        raise MaskError("no videos given")
    num_classes = options.num_classes or max(acc.num_classes for acc in accs.values() if acc.num_images)
    notes = []
    results = {}
    for n, acc in accs.items():
        if acc.num_images == 0:
            notes.append(f"windows of {n} frames skipped: every video is shorter")
            continue
        results[n] = acc.result(_vocab_size(n, num_classes, options)).rows
    rows = []
    for n, stats_rows in results.items():
        for row in stats_rows:
            key = (n, row.scheme, row.starts, row.factor)
            growth = window_tokens[key] / frame_tokens[key] if frame_tokens.get(key) else None
            rows.append(_video_row(n, row, accs[n].num_images, max_vocab, growth))
    rows.sort(key=lambda r: (r.factor, list(ENCODINGS).index(r.encoding), r.starts, r.frames))
    infeasible = sorted({(r.encoding, r.frames) for r in rows if not r.feasible})
    if infeasible:
        notes.append(
            f"infeasible above max_vocab={max_vocab:,} (token counts shown for comparison only): "
            + ", ".join(f"{e} at {n} frames" for e, n in infeasible)
        )
    return VideoStats(
        num_videos=num_videos,
        num_frames=num_frames,
        num_classes=num_classes,
        num_classes_inferred=options.num_classes is None,
        frames=list(results),
        max_vocab=max_vocab,
        options=options,
        rows=rows,
        subsampling={f: s.result(num_classes) for f, s in accs[1].subsampling.items()},
        notes=notes,
    )


def path_video_stats(
    path: str | Path, frames: int, options: StatsOptions | None = None, pattern: str = "*",
    recursive: bool = False, max_vocab: int = DEFAULT_MAX_VOCAB, progress: bool = False,
) -> VideoStats:
    """:func:`video_stats` over a multi-page TIFF, a folder of frames, or a folder of TIFF stacks."""
    path = Path(path)
    if not path.exists():
        raise MaskError(f"{path}: no such file or directory")
    if path.is_file() and path.suffix.lower() not in MASK_SUFFIXES:
        raise MaskError(f"{path}: expected a multi-page TIFF or a folder of frame masks")
    return video_stats(iter_videos(path, pattern, recursive), frames, options, max_vocab, progress)


def _add_window(acc: Accumulator, name: str, truth: np.ndarray) -> dict[tuple[str, str, int], int]:
    """Downsample -> encode -> (cut) -> decode -> upsample one (n, H, W) window for every configuration;
    returns the sequence length (uncut) per (encoding, starts, factor)."""
    opts = acc.options
    window, num_classes = acc.begin_mask(name, truth)
    n = window.shape[0]
    lengths = {}
    for factor in opts.factors:
        small = downsample_mask(window, factor, opts.downsample_method)
        shared = _score(truth, small, factor, num_classes, opts)
        acc.add_subsampling(factor, shared)
        for encoding, (temporal, scheme) in ENCODINGS.items():
            for starts in opts.starts:
                # No vocabulary limit while counting: feasibility is judged on the dataset's class count.
                tokenizer = VideoTokenizer(
                    n, small.shape[1:], num_classes, temporal, scheme, starts, opts.order, opts.max_run,
                    max_vocab=sys.maxsize,
                )
                tokens, decoded = encode_cut_decode(tokenizer, small, opts.max_seq_len)
                scores = shared if np.array_equal(decoded, small) else _score(truth, decoded, factor, num_classes, opts)
                acc.add(encoding, starts, factor, tokens.size, small.shape[1:], scores)
                lengths[(encoding, starts, factor)] = tokens.size
    return lengths


def _score(truth: np.ndarray, small: np.ndarray, factor: int, num_classes: int, opts: StatsOptions):
    restored = upsample_mask(small, factor, truth.shape[-2:])
    return fidelity_scores(truth, restored, num_classes, opts.tolerance, opts.ignore_index)


def _vocab_size(frames: int, num_classes: int, options: StatsOptions):
    def vocab_size(encoding: str, starts: str, size: tuple[int, int], _: int) -> int:
        temporal, scheme = ENCODINGS[encoding]
        return video_vocab_size(frames, size, num_classes, temporal, scheme, starts, options.order, options.max_run)

    return vocab_size


def _video_row(n: int, row: StatsRow, windows: int, max_vocab: int, growth: float | None) -> VideoRow:
    return VideoRow(
        encoding=row.scheme,
        frames=n,
        starts=row.starts,
        factor=row.factor,
        mask_size=row.mask_size,
        vocab_size=row.vocab_size,
        feasible=row.vocab_size <= max_vocab,
        windows=windows,
        mean=row.mean,
        p50=row.p50,
        p95=row.p95,
        p99=row.p99,
        max=row.max,
        per_frame=row.mean / n,
        growth=growth,
        truncated=row.truncated,
        fidelity=row.fidelity,
    )
