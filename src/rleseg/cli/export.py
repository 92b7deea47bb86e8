"""``rleseg export``: a trained model in a form to share (torch imported inside ``_run_export``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_command, user_errors

# The formats ``rleseg.export.FORMATS`` writes, named here so that --help needs no torch.
FORMATS = {"hf": "a model folder in Hugging Face's save_pretrained layout (weights, config.json, model card)",
           "onnx": "ONNX files of the model's parts and rleseg-onnx.json describing them, for onnxruntime"}


def add_export(subparsers) -> None:
    parser = add_command(subparsers, _run_export)
    parser.add_argument("source", type=Path, metavar="MODEL", help="run folder, .safetensors file or model folder")
    parser.add_argument("--format", choices=tuple(FORMATS), default="hf",
                        help="; ".join(f"{name}: {what}" for name, what in FORMATS.items()) + " (default: hf)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (written atomically)")
    parser.add_argument("--scores", type=Path, action="append", default=[], metavar="EVAL_DIR",
                        help="an rleseg evaluate output folder (or its metrics.json) of this model, for the model "
                        "card (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")


def _run_export(args: argparse.Namespace) -> int:
    """Write a trained model in a form to share.

    --format hf writes a model folder in Hugging Face's save_pretrained layout: model.safetensors (the
    checkpoint), config.json, a README.md model card naming the classes, the data, the training config and
    the scores (the run's in-training validation, and rleseg evaluate outputs given with --scores), and the
    run's config.yaml. rleseg.load, rleseg predict and rleseg evaluate take the folder;
    rleseg.models.SharedModel.from_pretrained loads it and push_to_hub uploads it.

    --format onnx (pip install 'rleseg[onnx]') writes the model's parts as ONNX files (dense.onnx; or
    encoder.onnx, decoder.onnx with its key-value cache as input and output, and refiner.onnx) and
    rleseg-onnx.json describing their inputs and outputs, the tokenizer and the image normalisation, so that
    a program runs the model with onnxruntime alone (rleseg.onnx_runtime.load does, numpy only).
    """
    from ..export import export_model

    with user_errors():
        written = export_model(args.source, args.out, args.format, args.scores, args.overwrite)
    scores = ", ".join(s["what"] for s in written["scores"]) or "none recorded"
    card = f"; scores in the model card: {scores}" if args.format == "hf" else ""
    print(f"exported {args.source} to {args.out} ({args.format}): {', '.join(written['files'])}{card}")
    return 0
