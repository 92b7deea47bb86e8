"""``rleseg export-text``: a dataset as records for fine-tuning vision-language models (torch imported inside)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_command, add_overrides, positive_int, user_errors


def add_export_text(subparsers) -> None:
    parser = add_command(subparsers, _run_export_text)
    parser.add_argument("config", type=Path, metavar="CONFIG",
                        help="a config (YAML file or shipped name) naming the data")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (written atomically)")
    parser.add_argument("--format", choices=("jsonl", "llava"), default="jsonl",
                        help="jsonl: one record a line (image, prompt, text, meta); llava: one JSON list of "
                        "conversations (default: jsonl)")
    parser.add_argument("--split", choices=("train", "val"), default="train",
                        help="the config's training or validation split (default: train)")
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N", help="at most N records")
    parser.add_argument("--prompt", default=None, metavar="TEXT",
                        help="the instruction of every record; {classes} becomes the class words")
    parser.add_argument("--overwrite", action="store_true", help="replace --out")
    add_overrides(parser, "override a config key, e.g. data.patch.factor=8 (repeatable)")


def _run_export_text(args: argparse.Namespace) -> int:
    """Write a dataset's patches as (image, prompt, target text) records for fine-tuning vision-language models.

    Each patch of the config's data (its patch size and factor, no augmentation) becomes a PNG under images/
    and a record whose target is the mask's text form (rleseg.tokens.text: '<r START END-OR-LENGTH CLASS>' runs),
    with the fidelity of the factor on that patch in its metadata; text_form.json says how to read the texts
    back (tokenizer, class words, factor). rleseg.llm.MaskLogitsProcessor keeps a model's output to valid texts.
    """
    from ..export_text import export_text

    with user_errors():
        summary = export_text(args.config, args.out, args.split, args.format, args.limit, args.prompt,
                              args.overrides, args.overwrite)
    fidelity = summary["mean_fidelity_miou"]
    print(f"wrote {summary['records']} {args.format} records of the {args.split} split to {args.out} (masks "
          f"{'x'.join(map(str, summary['mask_size']))}, factor {summary['factor']}, mean fidelity mIoU "
          f"{'n/a' if fidelity is None else f'{fidelity:.3f}'})")
    return 0
