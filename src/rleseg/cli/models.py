"""``rleseg train``, ``demo``, ``evaluate`` and ``predict``: the commands that need torch (imported inside
each ``_run_*``, so that the tokenizer's commands start fast)."""

from __future__ import annotations

import argparse
import math
import signal
import sys
from pathlib import Path

from ..stats.report import format_score
from .common import (
    UserError,
    add_command,
    add_overrides,
    list_of,
    non_negative_float,
    non_negative_int,
    num_classes,
    positive_int,
    probability,
    share,
    user_errors,
)


# ----------------------------------------------------------------------------- train
def add_train(subparsers) -> None:
    parser = add_command(subparsers, _run_train)
    parser.add_argument("config", type=Path, nargs="?", metavar="CONFIG", help="experiment YAML")
    add_overrides(parser, help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR", help="run folder (default: output.dir)")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its newest complete checkpoint, with its saved config; "
                        "--set may change train.steps (a larger one extends a finished run), train.minutes, eval.* "
                        "and output.*")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a run folder that holds a run, deleting that run (once the new "
                        "config is built)")
    parser.add_argument("--seed", type=non_negative_int, default=None,
                        help="random seed of a new run (overrides train.seed; recorded in config.yaml)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: cuda when available, else cpu; under torchrun each "
                        "process takes cuda:LOCAL_RANK)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress display (on a terminal a bar, else a line every output.log_every steps)")


def _run_train(args: argparse.Namespace) -> int:
    """Train a model from a YAML config.

    Train from a YAML experiment config (see configs/). Under torchrun it trains with DDP.
    """
    from ..experiment import load_config
    from ..train import train
    from ..typed_yaml import load_yaml

    if args.resume is not None:
        if args.config is not None:
            raise UserError("give either CONFIG or --resume RUN_DIR (a resumed run uses its saved config)")
        if args.overwrite:
            raise UserError("--resume continues the run in RUN_DIR and --overwrite starts afresh: give one")
        if args.seed is not None:
            raise UserError("--seed is for a new run: a resumed run keeps the train.seed of its config.yaml")
        source, run_dir = args.resume / "config.yaml", args.resume
        if not source.is_file():
            raise UserError(f"{args.resume}: not a run folder (no config.yaml)")
        with user_errors():
            if not load_yaml(source, empty=True):  # an empty file would resume under the default config
                raise UserError(f"{source} is empty, so the run's settings are unknown: restore it, or start "
                                f"afresh with 'rleseg train CONFIG --out {args.resume} --overwrite'")
    elif args.config is None:
        raise UserError("give a CONFIG file (see configs/) or --resume RUN_DIR")
    else:
        source, run_dir = args.config, args.out
    with user_errors():
        seed = [] if args.seed is None else [f"train.seed={args.seed}"]
        # A run's own config.yaml: dense runs of older rleseg kept the token settings they ignored.
        config = load_config(source, [*args.overrides, *seed], keep_token_settings=args.resume is not None)
        result = train(config, run_dir, resume=args.resume is not None, overwrite=args.overwrite,
                       device=args.device, show_progress=not args.no_progress)
    return _exit_status(result)


# ----------------------------------------------------------------------------- demo
def add_demo(subparsers) -> None:
    parser = add_command(subparsers, _run_demo)
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget in minutes (default: 5)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR",
                        help="run folder (default: runs/demo); an earlier demo there is replaced")
    parser.add_argument("--overwrite", action="store_true",
                        help="also replace a run in --out that is not a finished demo (e.g. an interrupted one)")
    add_overrides(parser, help="override a value of the demo config (repeatable)")


def _run_demo(args: argparse.Namespace) -> int:
    """Train, evaluate and report a small model on generated data (the main job).

    Generate the synthetic dataset, train the tiny token model for a bounded time on the CPU, evaluate it
    and write a run folder with checkpoint, metrics, report and pictures.
    """
    from ..demo import run_demo

    if args.minutes <= 0:
        raise UserError(f"--minutes must be positive, got {args.minutes}")
    with user_errors():
        result = run_demo(args.minutes, args.out, args.overrides, args.overwrite)
    return _exit_status(result)


# ----------------------------------------------------------------------------- evaluate / predict
def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    """How full images are predicted (see rleseg.inference): mode, stride, sampling, batching, device."""
    parser.add_argument("--mode", choices=("patches", "whole"), default="patches",
                        help="patches: sliding windows of the model input, stitched at full resolution (the paper); "
                        "whole: the image scaled to the model input (default: patches)")
    parser.add_argument("--stride", type=positive_int, default=None, metavar="PX",
                        help="window step in pixels (default: the patch size, no overlap)")
    parser.add_argument("--panoptic-join", choices=("touch", "overlap", "none"), default="touch",
                        help="panoptic models: join the instances patch borders cut, across every border (touch: "
                        "by overlap where windows overlap, by contact where they abut), only where windows overlap "
                        "(overlap), or not at all (none) (default: touch)")
    parser.add_argument("--join-iou", type=probability, default=0.5, metavar="T",
                        help="panoptic instances of two patches join above this IoU where the windows overlap "
                        "(default: 0.5)")
    parser.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="patches per batch (32)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="autocast dtype of the model's forward passes (fp16: GPUs without bf16; default: fp32)")
    parser.add_argument("--temperature", type=non_negative_float, default=0.0, metavar="T",
                        help="sampling temperature, 0 = greedy (default: 0; the paper samples at 1 with top-p 0.4)")
    parser.add_argument("--top-p", type=probability, default=1.0, metavar="P", help="nucleus sampling mass (1 = off)")
    parser.add_argument("--unconstrained", action="store_true",
                        help="sample without the token grammar (malformed runs are dropped and counted)")
    parser.add_argument("--max-len", type=positive_int, default=None, metavar="N",
                        help="tokens generated at most per patch (default: the model's max_seq_len)")
    parser.add_argument("--decoding", choices=("stepwise", "draft"), default="draft",
                        help="greedy decoding: draft (verify the per-cell head's draft of the mask, several tokens "
                        "a decoder pass, where the model has that head; else step by step) or stepwise (a decoder "
                        "pass per token); the same tokens (default: draft)")
    parser.add_argument("--earliest-instance", type=share, default=None, metavar="SHARE",
                        help="panoptic models, greedy: open each instance at the earliest start whose probability is "
                        "at least SHARE of the likeliest token's; 0 is plain greedy (default: 0.5 for panoptic "
                        "models)")
    parser.add_argument("--token-only", action="store_true",
                        help="models with a refiner (model.refine_band > 0): the decoded mask upsampled nearest, "
                        "without the boundary refinement")
    parser.add_argument("--seed", type=non_negative_int, default=None,
                        help="random seed for sampling at temperature > 0")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _inference_options(args: argparse.Namespace) -> dict:
    """The flat options of ``InferenceOptions.from_fields``."""
    return {"mode": args.mode, "stride": args.stride, "batch_size": args.batch_size, "temperature": args.temperature,
            "top_p": args.top_p, "constrained": not args.unconstrained, "max_len": args.max_len, "seed": args.seed,
            "refine": not args.token_only, "method": args.decoding, "precision": args.precision,
            "panoptic_join": args.panoptic_join, "join_iou": args.join_iou, "earliest_instance": args.earliest_instance}


def add_evaluate(subparsers) -> None:
    parser = add_command(subparsers, _run_evaluate)
    parser.add_argument("checkpoint", type=Path, nargs="?", metavar="CHECKPOINT",
                        help="model file, run folder or model folder (rleseg export)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (written atomically)")
    data = parser.add_argument_group("data")
    data.add_argument("--config", type=Path, default=None, metavar="YAML",
                      help="experiment config whose dataset to use (default: config.yaml beside the checkpoint)")
    data.add_argument("--split", choices=("val", "train"), default="val", help="split of the config's dataset (val)")
    add_overrides(data, help="override a config value, e.g. --set data.root=/data (repeatable)")
    data.add_argument("--images", type=Path, default=None, metavar="DIR", help="folder of images (with --masks)")
    data.add_argument("--masks", type=Path, default=None, metavar="DIR", help="folder of label maps, paired by stem")
    data.add_argument("--mask-suffix", default="", help="masks are named <image stem><suffix>.png (default: none)")
    data.add_argument("--pred-dir", type=Path, default=None, metavar="DIR", help="predicted label maps (no checkpoint)")
    data.add_argument("--gt-dir", type=Path, default=None, metavar="DIR", help="ground-truth label maps")
    data.add_argument("--num-classes", type=num_classes, default=None, metavar="C",
                      help="classes, background included (required with --pred-dir; checked against a checkpoint)")
    data.add_argument("--class-names", type=list_of(str), default=None, metavar="LIST", help="comma-separated names")
    data.add_argument("--ignore-index", type=non_negative_int, default=None, metavar="LABEL",
                      help="ground-truth label left out of scoring (default: the config's, 255 for --images, "
                      "none for --pred-dir)")
    data.add_argument("--limit", type=positive_int, default=None, metavar="N", help="evaluate the first N images only")
    parser.add_argument("--tolerance", type=non_negative_int, default=2, metavar="PX",
                        help="boundary F-score tolerance in pixels (default: 2)")
    parser.add_argument("--pictures", type=non_negative_int, default=4, metavar="K",
                        help="comparison pictures of the first K images (default: 4; video: frames of the first "
                        "sequence)")
    parser.add_argument("--window-stride", type=positive_int, default=None, metavar="F",
                        help="video models: a window of N frames every F frames, overlaps merged by vote "
                        "(default: N, no overlap, as the paper evaluates)")
    _add_inference_options(parser)


def _run_evaluate(args: argparse.Namespace) -> int:
    """Score a checkpoint on a dataset, or prediction PNGs against ground-truth PNGs.

    With CHECKPOINT (a .safetensors file, a run folder or a model folder): predict every image of the data
    (--config / the folder's config.yaml, or --images/--masks) and score at full resolution. Without it: score
    --pred-dir label maps against --gt-dir label maps paired by file stem (no torch needed). Writes
    metrics.json, metrics.md, per_image.csv, confusion.png and pictures into --out.
    """
    if args.checkpoint is None:
        if args.pred_dir is None or args.gt_dir is None:
            raise UserError("give a CHECKPOINT, or --pred-dir DIR --gt-dir DIR --num-classes C")
        if args.num_classes is None:
            raise UserError("--pred-dir needs --num-classes C")
        from ..evaluate import score_folders

        with user_errors():
            results = score_folders(args.pred_dir, args.gt_dir, args.num_classes, args.out, args.ignore_index,
                                    args.class_names and list(args.class_names), args.tolerance, args.overwrite,
                                    not args.no_progress)
    else:
        if args.pred_dir is not None or args.gt_dir is not None:
            raise UserError("--pred-dir/--gt-dir score existing predictions: leave out CHECKPOINT")
        from ..evaluate import evaluate_checkpoint

        with user_errors():
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
    generation = results.get("generation", {})  # none when scoring --pred-dir or a dense model
    _warn_if_truncated(generation.get("truncated", 0), generation.get("patches", 0), args.max_len)
    if "refinement" in results:
        _say_what_the_refiner_did(results["refinement"])
    return 0


def _say_what_the_refiner_did(refinement: dict) -> None:
    """The share of the pixels the refiner changed, and a warning when that is (almost) none of them: a
    "refined" report must not hide a refiner that did nothing."""
    from ..metrics.refinement import IDLE_SHARE
    from ..report import refinement_line

    print(refinement_line(refinement))
    if refinement["changed_share"] < IDLE_SHARE:
        print(f"rleseg: warning: the refiner changed (almost) nothing (under {100 * IDLE_SHARE:g}% of the pixels): "
              "its model was trained too briefly for it to learn, or it has nothing to correct; --token-only "
              "gives the same masks without it", file=sys.stderr)


def add_predict(subparsers) -> None:
    parser = add_command(subparsers, _run_predict)
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                        help="model file, run folder or model folder (rleseg export)")
    parser.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="image, TIFF stack, folder or video")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (written atomically)")
    parser.add_argument("--scale", type=float, default=1.0, help="resize images by this before patching (1)")
    parser.add_argument("--coco-json", action="store_true", help="also write predictions.json (COCO RLE)")
    parser.add_argument("--no-overlays", action="store_true", help="no overlay pictures")
    parser.add_argument("--window-stride", type=positive_int, default=None, metavar="F",
                        help="video models: a window of N frames every F frames, overlaps merged per frame by vote "
                        "(default: N)")
    _add_inference_options(parser)


def _run_predict(args: argparse.Namespace) -> int:
    """Label maps for images, TIFF stacks, folders and videos.

    Predict label PNGs (instance maps for panoptic models), overlays and optionally COCO RLE JSON for
    images, TIFF stacks (frame by frame; one sequence for video models), folders of images or frames,
    and videos (PyAV). Images are normalised as in the model's training (its data.normalize).
    """
    from ..inference import load
    from ..predict import predict_command, summary_line

    with user_errors():
        if not 0 < args.scale < math.inf:
            raise UserError(f"--scale must be a finite number > 0, got {args.scale}")
        predictor = load(args.checkpoint, args.device, scale=args.scale, **_inference_options(args))
        summary = predict_command(predictor, args.inputs, args.out, coco_json=args.coco_json,
                                  overlays=not args.no_overlays, overwrite=args.overwrite,
                                  progress=not args.no_progress, window_stride=args.window_stride,
                                  checkpoint=args.checkpoint)
    print(summary_line(summary))
    _warn_if_truncated(summary.get("truncated", 0), summary["patches"], args.max_len)  # dense models: no tokens
    return 0


def _warn_if_truncated(truncated: int, sequences: int, max_len: int | None) -> None:
    """One line on stderr when more than 1% of the generated sequences were cut at the length limit
    (``max_len``: --max-len, None for the model's max_seq_len)."""
    if truncated <= 0.01 * sequences:
        return
    limit, remedy = ((f"--max-len {max_len}", "raise --max-len (up to model.max_seq_len)") if max_len else
                     ("the model's max_seq_len", "train with a larger model.max_seq_len"))
    print(f"rleseg: warning: {truncated} of {sequences} sequences ({100 * truncated / sequences:.1f}%) were cut at "
          f"{limit}, so their masks may lack runs; {remedy}", file=sys.stderr)


def _exit_status(result) -> int:
    """0 for a run that ended, 128 + the signal for one a signal stopped (130 SIGINT, 143 SIGTERM), as shells
    report."""
    return 128 + (result.signal or signal.SIGINT) if result.interrupted else 0
