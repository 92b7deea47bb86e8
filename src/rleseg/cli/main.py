"""The ``rleseg`` command line: the parser of every command, and the exit statuses.

Each command is an ``add_<name>(subparsers)`` function (``masks.py``: tokenize, stats, examples, which never
import torch; ``models.py``: train, demo, evaluate, predict, which import it inside their ``_run_*``) that
declares its options and sets ``run=_run_<name>``; :func:`build_parser` lists them.

User errors (a missing or unreadable file, a label out of range, a bad option value) print one line,
``rleseg: error: ...``, and exit with status 2. They are recognised by type, never by catching every
ValueError: :class:`UserError` (``common.py``), :class:`rleseg.imageio.MaskError` raised while reading images
and masks, and argparse's own errors. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..imageio import MaskError
from .common import EXIT_USER_ERROR, Parser, UserError
from .config import add_config
from .masks import add_examples, add_stats, add_tokenize
from .models import add_demo, add_evaluate, add_predict, add_train


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rleseg", description="Segmentation by language modelling of run-length-encoded masks.")
    parser.add_argument("--version", action="version", version=f"rleseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (add_tokenize, add_stats, add_examples, add_train, add_demo, add_evaluate, add_predict, add_config):
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

