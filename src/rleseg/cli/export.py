"""``rleseg export``: a trained model in a form to share (torch imported inside ``_run_export``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_command, user_errors

# The formats ``rleseg.export.FORMATS`` writes, named here so that --help needs no torch.
FORMATS = {"hf": "a model folder in Hugging Face's save_pretrained layout (weights, config.json, model card)"}


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
    """
    from ..export import export_model

    with user_errors():
        written = export_model(args.source, args.out, args.format, args.scores, args.overwrite)
    scores = ", ".join(s["what"] for s in written["scores"]) or "none recorded"
    print(f"exported {args.source} to {args.out} ({args.format}): {', '.join(written['files'])}; scores in the "
          f"model card: {scores}")
    return 0
