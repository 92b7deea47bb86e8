"""``rleseg init``: a complete config for a folder of images and label maps (``rleseg.init``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .. import atomic
from .common import UserError, add_command, non_negative_float, user_errors


def add_init(subparsers) -> None:
    parser = add_command(subparsers, _run_init)
    parser.add_argument("data", type=Path, metavar="DATA_FOLDER",
                        help="images/ + masks/ paired by file name, or train/ and val/ holding them")
    parser.add_argument("--out", type=Path, default=None, metavar="YAML",
                        help="where to write the config (default: <DATA_FOLDER name>.yaml here)")
    parser.add_argument("--task", choices=("semantic", "panoptic"), default="semantic",
                        help="semantic: one class map; panoptic: each object apart (instance label maps only)")
    parser.add_argument("--architecture", choices=("token", "dense"), default="token",
                        help="token: the token model (default); dense: the dense head's baseline on the same data")
    parser.add_argument("--labels", choices=("classes", "instances"), default=None,
                        help="what the label maps hold (default: read from them, and said)")
    parser.add_argument("--minutes", type=non_negative_float, default=10.0, metavar="M",
                        help="training budget the steps are measured for (default: 10)")
    parser.add_argument("--run-dir", default=None, metavar="DIR", help="output.dir (default: runs/<DATA_FOLDER name>)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")


def _run_init(args: argparse.Namespace) -> int:
    """Read a data folder and write a complete, commented config for it.

    Reads the layout, whether the labels are classes or instance ids, image sizes and bit depth, object
    widths and what each mask factor loses; builds the datasets to measure tokens per training patch; times
    a few training steps here. Writes the shipped CPU settings around those figures, a comment on every
    choice. Then: rleseg train THE.yaml.
    """
    from ..init import choose, render, survey

    out = args.out or Path(f"{args.data.resolve().name}.yaml")
    if out.exists() and not args.force:
        raise UserError(f"{out}: exists; give another --out, or --force to replace it")
    if args.minutes <= 0:
        raise UserError(f"--minutes: expected a number > 0, got {args.minutes:g}")
    with user_errors():
        found = survey(args.data, args.labels)
        print(f"init: {args.data}: {found.frames} training images, labels {found.evidence}; "
              f"objects {found.object_width:.0f} px wide (median)", file=sys.stderr)
        settings = choose(found, args.task, args.minutes, args.run_dir, args.architecture, show_progress=True)
    asked = [("--task", args.task, "semantic"), ("--architecture", args.architecture, "token"),
             ("--labels", args.labels, None), ("--minutes", args.minutes, 10.0)]
    command = shlex.join(["rleseg", "init", str(args.data)] + [f"{flag}={value:g}" if isinstance(value, float) else
                          f"{flag}={value}" for flag, value, default in asked if value != default])
    try:
        atomic.write_text(out, render(found, settings, command))
    except OSError as error:
        raise UserError(f"{out}: cannot write ({error.strerror or error})") from None
    print(f"init: wrote {out}; next: rleseg train {out}")
    return 0
