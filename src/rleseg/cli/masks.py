"""``rleseg tokenize``, ``stats`` and ``examples``: the tokenizer's commands (no torch)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..imageio import read_label_map
from ..stats import StatsOptions, folder_stats
from ..stats.panoptic import folder_panoptic_stats
from ..stats.report import format_panoptic_stats, format_stats, format_video_stats
from ..stats.video import path_video_stats
from ..tokens import BandTokenizer, Tokenizer, downsample_mask, split_sequences
from ..tokens.run_format import EXTENTS
from ..tokens.tokenizer import SCHEMES, START_MODES
from .common import (
    UserError,
    add_command,
    add_overrides,
    list_of,
    non_negative_int,
    num_classes,
    positive_int,
    user_errors,
    write_json,
)

EXAMPLES = Path(__file__).parent.with_name("examples")


def _add_tokenizer_options(parser: argparse.ArgumentParser, many: bool) -> None:
    """--scheme/--starts (one value, or --schemes/--starts lists), --order, --max-run, --downsample-method."""
    if many:
        parser.add_argument("--schemes", type=list_of(str, SCHEMES), default=SCHEMES, metavar="LIST",
                            help="comma-separated schemes (default: lac,class,binary; binary only for 2 classes)")
        parser.add_argument("--starts", type=list_of(str, START_MODES), default=START_MODES,
                            metavar="LIST", help="comma-separated start modes among 1d,2d (default: 1d,2d)")
    else:
        parser.add_argument("--scheme", choices=SCHEMES, default="lac", help="token scheme (default: lac)")
        parser.add_argument("--starts", choices=START_MODES, default="1d",
                            help="1d: one flat-index token per start; 2d: row and column tokens (default: 1d)")
        parser.add_argument("--extent", choices=EXTENTS, default="length",
                            help="length: a run's length token; end: its last cell as a flat index, 1-D starts "
                            "only (default: length)")
    parser.add_argument("--order", choices=("C", "F"), default="C",
                        help="raster order: C row-major, F column-major (default: C)")
    parser.add_argument("--max-run", type=positive_int, default=None, metavar="L",
                        help="longest run L (default: one row of the subsampled mask)")
    parser.add_argument("--downsample-method", choices=("nearest", "mode"), default="nearest",
                        help="nearest: centre pixel of each cell; mode: most frequent label (default: nearest)")
    parser.add_argument("--num-classes", type=num_classes, default=None, metavar="C",
                        help="C, background included (default: largest label + 1, at least 2)")


# ----------------------------------------------------------------------------- tokenize
def add_tokenize(subparsers) -> None:
    parser = add_command(subparsers, _run_tokenize)
    parser.add_argument("mask", type=Path, metavar="MASK_IMAGE", help="label PNG (grayscale or palette) or TIFF")
    _add_tokenizer_options(parser, many=False)
    parser.add_argument("--subsample", type=positive_int, default=1, metavar="N",
                        help="subsampling factor before encoding (default: 1)")
    parser.add_argument("--bands", type=positive_int, default=1, metavar="K",
                        help="K band sequences, one per block of scan lines, each after its band's prompt token "
                        "(1-D starts; default: 1, one sequence)")
    parser.add_argument("--json", action="store_true", help="print tokens, summary and tokenizer as JSON")


def _encode(
    mask: np.ndarray, name: str, *, scheme: str = "lac", starts: str = "1d", order: str = "C",
    max_run: int | None = None, subsample: int = 1, method: str = "nearest", num_classes: int | None = None,
    extent: str = "length", bands: int = 1,
) -> tuple[Tokenizer | BandTokenizer, np.ndarray, dict]:
    """Subsample and encode one mask; returns the tokenizer, the tokens (with ``bands`` > 1 the bands'
    sequences one after the other) and a summary."""
    max_label = int(mask.max()) if mask.size else 0
    num_classes = num_classes or max(2, max_label + 1)
    if max_label >= num_classes:
        raise UserError(f"{name}: holds label {max_label}, expected labels < --num-classes {num_classes}")
    small = downsample_mask(mask, subsample, method)
    try:
        if bands > 1 and starts != "1d":
            raise ValueError(f"--bands needs --starts 1d, got {starts}")
        tokenizer = (Tokenizer(small.shape, num_classes, scheme, starts, order, max_run, extent) if bands == 1
                     else BandTokenizer(small.shape, num_classes, scheme, order, max_run, extent, bands))
    except ValueError as error:  # the options are the user's: e.g. scheme binary with 3 classes
        raise UserError(f"{name}: {error}") from None
    tokens = tokenizer.encode(small)
    summary = {
        "file": name,
        "mask_size": list(mask.shape),
        "subsampled_size": list(small.shape),
        "runs": tokenizer.count_runs(tokens)[0],
        "tokens": int(tokens.size),
        "longest_sequence": max(len(seq) for seq in split_sequences(tokens)),
        "vocab_size": tokenizer.vocab.size,
        "pixels_per_token": mask.size / tokens.size,
    }
    return tokenizer, tokens, summary


def _summary_line(tokenizer: Tokenizer, summary: dict, subsample: int) -> str:
    height, width = summary["mask_size"]
    small = "x".join(str(v) for v in summary["subsampled_size"])
    return (
        f"{summary['file']}: {height}x{width}"
        + (f" -> {small} (subsample {subsample})" if subsample > 1 else "")
        + f", {tokenizer.num_classes} classes, {tokenizer.scheme}/{tokenizer.starts}"
        + (f" extent {tokenizer.extent}" if tokenizer.extent != "length" else "") + f" order {tokenizer.order}"
        f" max_run {tokenizer.max_run}: {summary['runs']} runs, {summary['tokens']} tokens (EOS included),"
        + (f" {tokenizer.bands} bands, the longest {summary['longest_sequence']} tokens,"
           if isinstance(tokenizer, BandTokenizer) else "")
        + f" vocab size {summary['vocab_size']}"
    )


def _run_tokenize(args: argparse.Namespace) -> int:
    """Print the token sequence of one label mask.

    Encode one label mask (PNG or TIFF) and print its tokens.
    """
    mask = read_label_map(args.mask)
    tokenizer, tokens, summary = _encode(
        mask, str(args.mask), scheme=args.scheme, starts=args.starts, order=args.order, max_run=args.max_run,
        subsample=args.subsample, method=args.downsample_method, num_classes=args.num_classes, extent=args.extent,
        bands=args.bands,
    )
    if args.json:
        print(json.dumps({"tokens": tokens.tolist(), "summary": summary, "tokenizer": tokenizer.to_dict()}))
    else:
        print(" ".join(map(str, tokens.tolist())))
        print(_summary_line(tokenizer, summary, args.subsample))
    return 0


# ----------------------------------------------------------------------------- stats
def add_stats(subparsers) -> None:
    parser = add_command(subparsers, _run_stats)
    parser.add_argument("folder", type=Path, nargs="?", metavar="MASK_DIR",
                        help="folder of label PNGs / TIFFs (with --video: also a multi-page TIFF)")
    _add_tokenizer_options(parser, many=True)
    parser.add_argument("--subsample", type=list_of(positive_int), default=(1, 2, 4, 8), metavar="N,N,...",
                        help="comma-separated subsampling factors (default: 1,2,4,8)")
    parser.add_argument("--tolerance", type=non_negative_int, default=2, metavar="PX",
                        help="boundary F-score tolerance in full-resolution pixels (default: 2)")
    parser.add_argument("--ignore-index", type=non_negative_int, default=None, metavar="LABEL",
                        help="label of unlabelled pixels (e.g. 255): background to the tokenizer, not scored")
    parser.add_argument("--max-seq-len", type=positive_int, default=None, metavar="N",
                        help="cut sequences after N tokens, as a model of that length would, and score what "
                        "decodes (default: no cut)")
    parser.add_argument("--text-tokenizer", default=None, metavar="PATH",
                        help="a language model's tokenizer.json (or its folder): also count each mask's text form "
                        "(rleseg.tokens.text) in its tokens, per configuration")
    parser.add_argument("--pattern", default="*", help="glob for mask file names (default: *)")
    parser.add_argument("--recursive", action="store_true", help="also look in subfolders")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE", help="also write the JSON to FILE")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overrides(parser, help="with --config: override a config value (repeatable)")
    parser.add_argument("--epochs", type=positive_int, default=1, metavar="N",
                        help="with --config: patches of N epochs (random strides and augmentation differ; default: 1)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--config", type=Path, default=None, metavar="CONFIG",
                      help="instead of MASK_DIR: tokens per training patch of an experiment config, after its "
                      "patch pipeline (random strides, augmentation, subsampling), against its model.max_seq_len")
    mode.add_argument("--video", type=positive_int, default=None, metavar="N",
                      help="MASK_DIR is one video (its frames, in name order), a multi-page TIFF or a folder of "
                      "them: tokens per window of 1, 2, 4 .. N frames under volume, TAC and LTAC")
    mode.add_argument("--panoptic", action="store_true",
                      help="the masks are instance maps (0 background, each id one instance): panoptic tokens, "
                      "fidelity and PQ")


def _stats_options(args: argparse.Namespace) -> StatsOptions:
    return StatsOptions(
        factors=args.subsample, schemes=args.schemes, starts=args.starts, order=args.order,
        max_run=args.max_run, downsample_method=args.downsample_method, num_classes=args.num_classes,
        ignore_index=args.ignore_index, tolerance=args.tolerance, max_seq_len=args.max_seq_len,
        text_tokenizer=args.text_tokenizer,
    )


def _run_stats(args: argparse.Namespace) -> int:
    """Token lengths and subsampling fidelity over a folder of label masks.

    For each scheme x starts x subsampling factor: tokens per mask (mean, p50, p95, p99, max; EOS included),
    vocabulary size, and mean IoU / boundary F of downsample -> encode -> decode -> upsample against the
    full-resolution masks.
    """
    if args.text_tokenizer is not None and (args.config is not None or args.video is not None or args.panoptic):
        raise UserError("--text-tokenizer counts the text of image masks (a MASK_DIR of label maps); it does not "
                        "combine with --config, --video or --panoptic")
    if args.config is not None:
        return _run_patch_stats(args)
    if args.folder is None:
        raise UserError("give a MASK_DIR, or --config CONFIG for the patches of a training run")
    if args.video is not None or args.panoptic:
        return _run_stats_mode(args)
    result = folder_stats(args.folder, _stats_options(args), args.pattern, args.recursive,
                          progress=not args.no_progress)
    if not result.rows:
        raise UserError(f"{args.folder}: nothing to report, {'; '.join(result.notes)}")
    _emit({"source": str(args.folder), **result.to_dict()}, format_stats(result, str(args.folder)), args)
    return 0


def _emit(data: dict, text: str, args: argparse.Namespace) -> None:
    """A statistics result: ``data`` as JSON to ``--out`` and, with ``--json``, on screen; ``text`` otherwise."""
    if args.out is not None:
        write_json(args.out, data)
    print(json.dumps(data, indent=1) if args.json else text)
    if args.out is not None and not args.json:
        print(f"JSON written to {args.out}")


def _run_patch_stats(args: argparse.Namespace) -> int:
    """``stats --config``: the token lengths of the training patches (imports torch, unlike the rest)."""
    if args.folder is not None:
        raise UserError("give either MASK_DIR or --config CONFIG, not both")
    from ..experiment import load_config
    from ..patch_stats import patch_lengths

    with user_errors():
        result = patch_lengths(load_config(args.config, args.overrides), args.epochs, not args.no_progress)
    data = {"source": str(args.config), "overrides": args.overrides, **asdict(result),
            "recommendation": result.recommendation()}
    _emit(data, f"{args.config}: {result.patches} training sequences ({result.epochs} epoch(s); one a patch, "
          f"per-class and bands: one a patch and class / band), tokens per sequence (EOS included): "
          f"mean {result.mean:.1f}, p50 {result.p50}, p95 {result.p95}, p99 {result.p99}, "
          f"max {result.max}\n{result.recommendation()}", args)
    return 0


def _run_stats_mode(args: argparse.Namespace) -> int:
    """``stats --video N`` / ``stats --panoptic``: the modes of rleseg.stats.video and rleseg.stats.panoptic."""
    options = _stats_options(args)
    if args.video is not None:
        result = path_video_stats(args.folder, args.video, options, args.pattern, args.recursive,
                                  progress=not args.no_progress)
        text = format_video_stats(result, str(args.folder))
    else:
        result = folder_panoptic_stats(args.folder, options, args.pattern, args.recursive,
                                       progress=not args.no_progress)
        text = format_panoptic_stats(result, str(args.folder))
    _emit({"source": str(args.folder), **result.to_dict()}, text, args)
    return 0


# ----------------------------------------------------------------------------- examples
def add_examples(subparsers) -> None:
    parser = add_command(subparsers, _run_examples)
    parser.add_argument("--out", type=Path, default=None, metavar="DIR", help="write stats.json into DIR")


def _run_examples(args: argparse.Namespace) -> int:
    """Tokenize the bundled example masks (a tour of the tokenizer, no torch).

    Tokenize the bundled example masks with a few schemes and print their statistics.
    """
    files = sorted(EXAMPLES.glob("*.png"))
    if not files:
        raise UserError(f"{EXAMPLES}: no example masks (is the package installed with its data?)")
    print("rleseg examples: each bundled example mask encoded with three settings (first tokens shown),\n"
          "then the statistics of the examples folder as `rleseg stats` prints them.\n")
    for path in files:
        mask = read_label_map(path)
        print(f"== {path.name}: {mask.shape[0]}x{mask.shape[1]}, labels {np.unique(mask).tolist()}")
        for scheme, starts, factor in (("lac", "1d", 1), ("class", "2d", 1), ("lac", "1d", 4)):
            tokenizer, tokens, summary = _encode(mask, path.name, scheme=scheme, starts=starts, subsample=factor)
            head = " ".join(map(str, tokens[:12].tolist())) + (" ..." if tokens.size > 12 else "")
            print(f"  {scheme:5s} {starts} subsample {factor}: {summary['runs']:5d} runs, {tokens.size:5d} tokens, "
                  f"vocab {tokenizer.vocab.size:6d}, {summary['pixels_per_token']:6.1f} pixels/token  [{head}]")
            if not np.array_equal(tokenizer.decode(tokens), downsample_mask(mask, factor)):
                raise RuntimeError(f"{path.name}: decode(encode(mask)) differs from the mask")  # a bug, not user error
        print()
    result = folder_stats(EXAMPLES, StatsOptions(factors=(1, 2, 4, 8)), pattern="*.png")
    print(format_stats(result, "bundled examples"))
    if args.out is not None:
        write_json(args.out / "stats.json", {"source": "bundled examples", **result.to_dict()})
        print(f"JSON written to {args.out / 'stats.json'}")
    return 0


