"""The ``rleseg`` command line.

Each subcommand is a ``_add_<name>(subparsers)`` function that declares its options and sets
``run=_run_<name>``; :func:`main` lists the ``_add_*`` functions. Commands that need torch import it
inside their ``_run_*`` function, so ``tokenize``, ``stats`` and ``examples`` start fast and
never import torch.

User errors (a missing or unreadable file, a label out of range, a bad option value) print one line,
``rleseg: error: ...``, and exit with status 2. They are recognised by type, never by catching every
ValueError: :class:`UserError` raised here, :class:`rleseg.stats.MaskError` raised while reading masks,
and argparse's own errors. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .stats import DatasetStats, MaskError, StatsOptions, folder_stats, read_label_mask
from .stats.panoptic import folder_panoptic_stats
from .stats.report import format_panoptic_stats, format_score, format_stats, format_video_stats
from .stats.video import path_video_stats
from .tokens import Tokenizer, downsample_mask
from .tokens.tokenizer import ABSOLUTE_START_MODES, SCHEMES, START_MODES

EXIT_USER_ERROR = 2
EXAMPLES = Path(__file__).with_name("examples")


class UserError(Exception):
    """An error the user can fix; :func:`main` prints its message on one line and exits with status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # argparse would print the usage block and exit; one line that points to --help is clearer.
        raise UserError(f"{message} (see '{self.prog} --help')")


# ----------------------------------------------------------------------------- option types
def _number(kind: type, accept, expected: str):
    """An argparse type: ``kind(text)`` that ``accept`` approves, or "expected ..., got ..."."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_probability = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
_non_negative_float = _number(float, lambda v: v >= 0, "a number >= 0")


def _num_classes(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected at least 2 classes (background included), got {text!r}")
    return value


def _list_of(parse: Callable[[str], object], choices: Sequence[str] | None = None):
    def parse_list(text: str) -> tuple:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        if choices is not None:
            bad = [item for item in items if item not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"invalid choice {bad[0]!r} (choose from {', '.join(choices)})")
        return tuple(dict.fromkeys(parse(item) for item in items))

    return parse_list


def _add_tokenizer_options(parser: argparse.ArgumentParser, many: bool) -> None:
    """--scheme/--starts (one value, or --schemes/--starts lists), --order, --max-run, --downsample-method."""
    if many:
        parser.add_argument("--schemes", type=_list_of(str, SCHEMES), default=SCHEMES, metavar="LIST",
                            help="comma-separated schemes (default: lac,class,binary; binary only for 2 classes)")
        parser.add_argument("--starts", type=_list_of(str, START_MODES), default=ABSOLUTE_START_MODES,
                            metavar="LIST", help="comma-separated start modes among 1d,2d,relative (default: 1d,2d; "
                            "relative not with --video or --panoptic)")
    else:
        parser.add_argument("--scheme", choices=SCHEMES, default="lac", help="token scheme (default: lac)")
        parser.add_argument("--starts", choices=START_MODES, default="1d",
                            help="1d: one flat-index token per start; 2d: row and column tokens; relative: one "
                            "token for the gap after the previous run (default: 1d)")
    parser.add_argument("--order", choices=("C", "F"), default="C",
                        help="raster order: C row-major, F column-major (default: C)")
    parser.add_argument("--max-run", type=_positive_int, default=None, metavar="L",
                        help="longest run L (default: one row of the subsampled mask)")
    parser.add_argument("--downsample-method", choices=("nearest", "mode"), default="nearest",
                        help="nearest: centre pixel of each cell; mode: most frequent label (default: nearest)")
    parser.add_argument("--num-classes", type=_num_classes, default=None, metavar="C",
                        help="C, background included (default: largest label + 1, at least 2)")


# ----------------------------------------------------------------------------- tokenize
def _add_tokenize(subparsers) -> None:
    parser = subparsers.add_parser("tokenize", help="print the token sequence of one label mask",
                                   description="Encode one label mask (PNG or TIFF) and print its tokens.")
    parser.add_argument("mask", type=Path, metavar="MASK_IMAGE", help="label PNG (grayscale or palette) or TIFF")
    _add_tokenizer_options(parser, many=False)
    parser.add_argument("--subsample", type=_positive_int, default=1, metavar="N",
                        help="subsampling factor before encoding (default: 1)")
    parser.add_argument("--json", action="store_true", help="print tokens, summary and tokenizer as JSON")
    parser.set_defaults(run=_run_tokenize)


def _encode(
    mask: np.ndarray, name: str, *, scheme: str = "lac", starts: str = "1d", order: str = "C",
    max_run: int | None = None, subsample: int = 1, method: str = "nearest", num_classes: int | None = None,
) -> tuple[Tokenizer, np.ndarray, dict]:
    """Subsample and encode one mask; returns the tokenizer, the tokens and a summary."""
    max_label = int(mask.max()) if mask.size else 0
    num_classes = num_classes or max(2, max_label + 1)
    if max_label >= num_classes:
        raise UserError(f"{name}: holds label {max_label}, expected labels < --num-classes {num_classes}")
    small = downsample_mask(mask, subsample, method)
    try:
        tokenizer = Tokenizer(small.shape, num_classes, scheme, starts, order, max_run)
    except ValueError as error:  # the options are the user's: e.g. scheme binary with 3 classes
        raise UserError(f"{name}: {error}") from None
    tokens = tokenizer.encode(small)
    summary = {
        "file": name,
        "mask_size": list(mask.shape),
        "subsampled_size": list(small.shape),
        "runs": (tokens.size - 1) // tokenizer.tokens_per_run,
        "tokens": int(tokens.size),
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
        + f", {tokenizer.num_classes} classes, {tokenizer.scheme}/{tokenizer.starts} order {tokenizer.order}"
        f" max_run {tokenizer.max_run}: {summary['runs']} runs, {summary['tokens']} tokens (EOS included),"
        f" vocab size {summary['vocab_size']}"
    )


def _run_tokenize(args: argparse.Namespace) -> int:
    mask = read_label_mask(args.mask)
    tokenizer, tokens, summary = _encode(
        mask, str(args.mask), scheme=args.scheme, starts=args.starts, order=args.order, max_run=args.max_run,
        subsample=args.subsample, method=args.downsample_method, num_classes=args.num_classes,
    )
    if args.json:
        print(json.dumps({"tokens": tokens.tolist(), "summary": summary, "tokenizer": tokenizer.to_dict()}))
    else:
        print(" ".join(map(str, tokens.tolist())))
        print(_summary_line(tokenizer, summary, args.subsample))
    return 0


# ----------------------------------------------------------------------------- stats
def _add_stats(subparsers) -> None:
    parser = subparsers.add_parser(
        "stats", help="token lengths and subsampling fidelity over a folder of label masks",
        description="For each scheme x starts x subsampling factor: tokens per mask (mean, p50, p95, p99, "
        "max; EOS included), vocabulary size, and mean IoU / boundary F of downsample -> encode -> decode "
        "-> upsample against the full-resolution masks.",
    )
    parser.add_argument("folder", type=Path, metavar="MASK_DIR",
                        help="folder of label PNGs / TIFFs (with --video: also a multi-page TIFF)")
    _add_tokenizer_options(parser, many=True)
    parser.add_argument("--subsample", type=_list_of(_positive_int), default=(1, 2, 4, 8), metavar="N,N,...",
                        help="comma-separated subsampling factors (default: 1,2,4,8)")
    parser.add_argument("--tolerance", type=_non_negative_int, default=2, metavar="PX",
                        help="boundary F-score tolerance in full-resolution pixels (default: 2)")
    parser.add_argument("--ignore-index", type=_non_negative_int, default=None, metavar="LABEL",
                        help="label of unlabelled pixels (e.g. 255): background to the tokenizer, not scored")
    parser.add_argument("--max-seq-len", type=_positive_int, default=None, metavar="N",
                        help="cut sequences after N tokens, as a model of that length would, and score what "
                        "decodes (default: no cut)")
    parser.add_argument("--pattern", default="*", help="glob for mask file names (default: *)")
    parser.add_argument("--recursive", action="store_true", help="also look in subfolders")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE", help="also write the JSON to FILE")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--video", type=_positive_int, default=None, metavar="N",
                      help="MASK_DIR is one video (its frames, in name order), a multi-page TIFF or a folder of "
                      "them: tokens per window of 1, 2, 4 .. N frames under volume, TAC and LTAC")
    mode.add_argument("--panoptic", action="store_true",
                      help="the masks are instance maps (0 background, each id one instance): panoptic tokens, "
                      "fidelity and PQ")
    parser.set_defaults(run=_run_stats)


def _stats_options(args: argparse.Namespace) -> StatsOptions:
    return StatsOptions(
        factors=args.subsample, schemes=args.schemes, starts=args.starts, order=args.order,
        max_run=args.max_run, downsample_method=args.downsample_method, num_classes=args.num_classes,
        ignore_index=args.ignore_index, tolerance=args.tolerance, max_seq_len=args.max_seq_len,
    )


def _run_stats(args: argparse.Namespace) -> int:
    if args.video is not None or args.panoptic:
        return _run_stats_mode(args)
    result = folder_stats(args.folder, _stats_options(args), args.pattern, args.recursive,
                          progress=not args.no_progress)
    if not result.rows:
        raise UserError(f"{args.folder}: nothing to report, {'; '.join(result.notes)}")
    _emit_stats(result, str(args.folder), args.json, args.out)
    return 0


def _emit_stats(result: DatasetStats, source: str, as_json: bool, out: Path | None) -> None:
    data = {"source": source, **result.to_dict()}
    if out is not None:
        _write_json(out, data)
    if as_json:
        print(json.dumps(data, indent=1))
    else:
        print(format_stats(result, source))
        if out is not None:
            print(f"JSON written to {out}")


def _write_json(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")
    except OSError as error:
        raise UserError(f"{path}: cannot write ({error.strerror or error})") from None


def _run_stats_mode(args: argparse.Namespace) -> int:
    """``stats --video N`` / ``stats --panoptic``: the modes of rleseg.stats.video and rleseg.stats.panoptic."""
    if "relative" in args.starts:
        raise UserError("--starts relative is for image statistics only, not with --video or --panoptic")
    options = _stats_options(args)
    if args.video is not None:
        result = path_video_stats(args.folder, args.video, options, args.pattern, args.recursive,
                                  progress=not args.no_progress)
        text = format_video_stats(result, str(args.folder))
    else:
        result = folder_panoptic_stats(args.folder, options, args.pattern, args.recursive,
                                       progress=not args.no_progress)
        text = format_panoptic_stats(result, str(args.folder))
    data = {"source": str(args.folder), **result.to_dict()}
    if args.out is not None:
        _write_json(args.out, data)
    print(json.dumps(data, indent=1) if args.json else text)
    if args.out is not None and not args.json:
        print(f"JSON written to {args.out}")
    return 0


# ----------------------------------------------------------------------------- examples
def _add_examples(subparsers) -> None:
    parser = subparsers.add_parser(
        "examples", help="tokenize the bundled example masks (a tour of the tokenizer, no torch)",
        description="Tokenize the bundled example masks with a few schemes and print their statistics.",
    )
    parser.add_argument("--out", type=Path, default=None, metavar="DIR", help="write stats.json into DIR")
    parser.set_defaults(run=_run_examples)


def _run_examples(args: argparse.Namespace) -> int:
    files = sorted(EXAMPLES.glob("*.png"))
    if not files:
        raise UserError(f"{EXAMPLES}: no example masks (is the package installed with its data?)")
    print("rleseg examples: each bundled example mask encoded with three settings (first tokens shown),\n"
          "then the statistics of the examples folder as `rleseg stats` prints them.\n")
    for path in files:
        mask = read_label_mask(path)
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
        _write_json(args.out / "stats.json", {"source": "bundled examples", **result.to_dict()})
        print(f"JSON written to {args.out / 'stats.json'}")
    return 0


# ----------------------------------------------------------------------------- train
def _add_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model from a YAML config",
        description="Train from a YAML experiment config (see configs/). Under torchrun it trains with DDP.",
    )
    parser.add_argument("config", type=Path, nargs="?", metavar="CONFIG", help="experiment YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR", help="run folder (default: output.dir)")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its newest checkpoint, with its saved config")
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .experiment import load_config
    from .train import train

    if args.resume is not None:
        if args.config is not None:
            raise UserError("give either CONFIG or --resume RUN_DIR (a resumed run uses its saved config)")
        source, run_dir = args.resume / "config.yaml", args.resume
        if not source.is_file():
            raise UserError(f"{args.resume}: not a run folder (no config.yaml)")
    elif args.config is None:
        raise UserError("give a CONFIG file (see configs/) or --resume RUN_DIR")
    else:
        source, run_dir = args.config, args.out
    with _user_errors():
        config = load_config(source, args.overrides)
        result = train(config, run_dir, resume=args.resume is not None)
    if result.interrupted:
        return 130
    if result.metrics is not None:
        print(f"run folder: {result.run_dir} (best.safetensors, metrics.json, pictures/)")
    return 0


@contextlib.contextmanager
def _user_errors():
    """Commands that build models and read data: their ValueError/OSError name the value or file at
    fault, so print one line instead of a traceback (RLESEG_DEBUG=1 shows the traceback)."""
    try:
        yield
    except (ValueError, OSError) as error:
        if os.environ.get("RLESEG_DEBUG"):
            raise
        raise UserError(str(error)) from None


# ----------------------------------------------------------------------------- demo
def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="train, evaluate and report a small model on generated data (the main job)",
        description="Generate the synthetic dataset, train the tiny token model for a bounded time on the CPU, "
        "evaluate it and write a run folder with checkpoint, metrics, report and pictures.",
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget in minutes (default: 5)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR",
                        help="run folder (default: runs/demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of the demo config (repeatable)")
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.minutes <= 0:
        raise UserError(f"--minutes must be positive, got {args.minutes}")
    with _user_errors():
        report = run_demo(args.minutes, args.out, args.overrides)
    return 0 if report is not None else 130


# ----------------------------------------------------------------------------- evaluate / predict
def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    """How full images are predicted (see rleseg.api): mode, stride, sampling, batching, device."""
    parser.add_argument("--mode", choices=("patches", "whole"), default="patches",
                        help="patches: sliding windows of the model input, stitched at full resolution (the paper); "
                        "whole: the image scaled to the model input (default: patches)")
    parser.add_argument("--stride", type=_positive_int, default=None, metavar="PX",
                        help="window step in pixels (default: the patch size, no overlap)")
    parser.add_argument("--batch-size", type=_positive_int, default=16, metavar="N", help="patches per batch (16)")
    parser.add_argument("--temperature", type=_non_negative_float, default=0.0, metavar="T",
                        help="sampling temperature, 0 = greedy (default: 0; the paper samples at 1 with top-p 0.4)")
    parser.add_argument("--top-p", type=_probability, default=1.0, metavar="P", help="nucleus sampling mass (1 = off)")
    parser.add_argument("--unconstrained", action="store_true",
                        help="sample without the token grammar (malformed runs are dropped and counted)")
    parser.add_argument("--max-len", type=_positive_int, default=None, metavar="N",
                        help="tokens generated at most per patch (default: the model's max_seq_len)")
    parser.add_argument("--eos-by-mass", action="store_true",
                        help="end a sequence only where EOS holds at least half the allowed probability")
    parser.add_argument("--seed", type=int, default=None, help="random seed for sampling at temperature > 0")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _inference_options(args: argparse.Namespace) -> dict:
    return {"mode": args.mode, "stride": args.stride, "batch_size": args.batch_size, "temperature": args.temperature,
            "top_p": args.top_p, "constrained": not args.unconstrained, "max_len": args.max_len, "seed": args.seed,
            "eos_by_mass": args.eos_by_mass}


def _add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score a checkpoint on a dataset, or prediction PNGs against ground-truth PNGs",
        description="With CHECKPOINT (a .safetensors file or a run folder): predict every image of the data "
        "(--config / the run's config.yaml, or --images/--masks) and score at full resolution. Without it: score "
        "--pred-dir label maps against --gt-dir label maps paired by file stem (no torch needed). Writes "
        "metrics.json, metrics.md, per_image.csv, confusion.png and pictures into --out.",
    )
    parser.add_argument("checkpoint", type=Path, nargs="?", metavar="CHECKPOINT", help="model file or run folder")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (written atomically)")
    data = parser.add_argument_group("data")
    data.add_argument("--config", type=Path, default=None, metavar="YAML",
                      help="experiment config whose dataset to use (default: config.yaml beside the checkpoint)")
    data.add_argument("--split", choices=("val", "train"), default="val", help="split of the config's dataset (val)")
    data.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config value, e.g. --set data.root=/data (repeatable)")
    data.add_argument("--images", type=Path, default=None, metavar="DIR", help="folder of images (with --masks)")
    data.add_argument("--masks", type=Path, default=None, metavar="DIR", help="folder of label maps, paired by stem")
    data.add_argument("--mask-suffix", default="", help="masks are named <image stem><suffix>.png (default: none)")
    data.add_argument("--pred-dir", type=Path, default=None, metavar="DIR", help="predicted label maps (no checkpoint)")
    data.add_argument("--gt-dir", type=Path, default=None, metavar="DIR", help="ground-truth label maps")
    data.add_argument("--num-classes", type=_num_classes, default=None, metavar="C",
                      help="classes, background included (required with --pred-dir; checked against a checkpoint)")
    data.add_argument("--class-names", type=_list_of(str), default=None, metavar="LIST", help="comma-separated names")
    data.add_argument("--ignore-index", type=_non_negative_int, default=None, metavar="LABEL",
                      help="ground-truth label left out of scoring (default: the config's, 255 for --images, "
                      "none for --pred-dir)")
    data.add_argument("--limit", type=_positive_int, default=None, metavar="N", help="evaluate the first N images only")
    parser.add_argument("--tolerance", type=_non_negative_int, default=2, metavar="PX",
                        help="boundary F-score tolerance in pixels (default: 2)")
    parser.add_argument("--pictures", type=_non_negative_int, default=4, metavar="K",
                        help="comparison pictures of the first K images (default: 4; video: frames of the first "
                        "sequence)")
    parser.add_argument("--window-stride", type=_positive_int, default=None, metavar="F",
                        help="video models: a window of N frames every F frames, overlaps merged by vote "
                        "(default: N, no overlap, as the paper evaluates)")
    _add_inference_options(parser)
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    if args.checkpoint is None:
        if args.pred_dir is None or args.gt_dir is None:
            raise UserError("give a CHECKPOINT, or --pred-dir DIR --gt-dir DIR --num-classes C")
        if args.num_classes is None:
            raise UserError("--pred-dir needs --num-classes C")
        from .evaluate import score_folders

        with _user_errors():
            results = score_folders(args.pred_dir, args.gt_dir, args.num_classes, args.out, args.ignore_index,
                                    args.class_names and list(args.class_names), args.tolerance, args.overwrite,
                                    not args.no_progress)
    else:
        if args.pred_dir is not None or args.gt_dir is not None:
            raise UserError("--pred-dir/--gt-dir score existing predictions: leave out CHECKPOINT")
        from .evaluate import evaluate_checkpoint

        with _user_errors():
            results = evaluate_checkpoint(
                args.checkpoint, args.out, config=args.config, overrides=args.overrides, split=args.split,
                images=args.images, masks=args.masks, mask_suffix=args.mask_suffix,
                class_names=args.class_names and list(args.class_names), num_classes=args.num_classes,
                ignore_index=args.ignore_index, options=_inference_options(args), limit=args.limit,
                pictures=args.pictures, tolerance=args.tolerance, device=args.device, overwrite=args.overwrite,
                progress=not args.no_progress, window_stride=args.window_stride)
    semantic = results["semantic"]
    means = {agg: semantic[agg]["mean_without_background"] for agg in ("per_image", "pooled")}
    per_image, pooled = means["per_image"], means["pooled"]
    print(f"{results['num_images']} images, classes without background: mDice {format_score(per_image['dice'])}"
          f" / mIoU {format_score(per_image['iou'])} per image, {format_score(pooled['dice'])} /"
          f" {format_score(pooled['iou'])} pooled; report in {args.out}")
    if "temporal" in results:
        flips = results["temporal"]["pooled"]
        print(f"{results['num_videos']} videos: flip rate {format_score(flips['pred_flip_rate'])} predicted, "
              f"{format_score(flips['gt_flip_rate'])} in the ground truth")
    return 0


def _add_predict(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="label maps for images, folders and videos",
        description="Predict label PNGs (instance maps for panoptic models), overlays and optionally COCO RLE "
        "JSON for images, folders of images or frames, and videos (PyAV).",
    )
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="model file or run folder")
    parser.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="image, folder or video")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (written atomically)")
    parser.add_argument("--scale", type=float, default=1.0, help="resize images by this before patching (1)")
    parser.add_argument("--coco-json", action="store_true", help="also write predictions.json (COCO RLE)")
    parser.add_argument("--no-overlays", action="store_true", help="no overlay pictures")
    parser.add_argument("--window-stride", type=_positive_int, default=None, metavar="F",
                        help="video models: a window of N frames every F frames, overlaps merged per frame by vote "
                        "(default: N)")
    _add_inference_options(parser)
    parser.set_defaults(run=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from .api import load
    from .predict import predict_command, summary_line

    with _user_errors():
        if not args.scale > 0:
            raise UserError(f"--scale must be > 0, got {args.scale}")
        predictor = load(args.checkpoint, args.device, scale=args.scale, **_inference_options(args))
        summary = predict_command(predictor, args.inputs, args.out, coco_json=args.coco_json,
                                  overlays=not args.no_overlays, overwrite=args.overwrite,
                                  progress=not args.no_progress, window_stride=args.window_stride)
    print(summary_line(summary))
    return 0


# ----------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rleseg", description="Segmentation by language modelling of run-length-encoded masks.")
    parser.add_argument("--version", action="version", version=f"rleseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_tokenize, _add_stats, _add_examples, _add_train, _add_demo, _add_evaluate, _add_predict):
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status: 0, 2 for a user error, 1 when stdout closed early."""
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as done:  # --help and --version print and exit 0; keep main() returning
            return int(done.code or 0)
        return args.run(args)
    except (UserError, MaskError) as error:
        print(f"rleseg: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `rleseg tokenize x.png | head`: the reader left, nothing to report
        # As the Python docs advise: point stdout at devnull so the flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
