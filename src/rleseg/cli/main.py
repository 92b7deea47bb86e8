"""The ``rleseg`` command line: the parser of every command, and the exit statuses.

Each command is an ``add_<name>(subparsers)`` function (``masks.py``: tokenize, stats, examples, which never
import torch; ``models.py``: train, demo, evaluate, predict, and ``export.py``: export, which import it
inside their ``_run_*``) that declares its options and sets ``run=_run_<name>``; :func:`build_parser` lists
them.

User errors (a missing or unreadable file, a label out of range, a bad option value) print one line,
``rleseg: error: ...``, and exit with status 2. They are recognised by type, never by catching every
ValueError: :class:`UserError` (``common.py``), :class:`rleseg.imageio.MaskError` raised while reading images
and masks, and argparse's own errors. Any other exception is a bug and keeps its traceback.

SIGINT (Ctrl-C) and SIGTERM stop a command with one line, ``rleseg: interrupted by SIGINT``, and exit
status 128 + the signal's number (130, 143), as shells report a process killed by it. The signal raises
:class:`Interrupted` (a KeyboardInterrupt) wherever the command is, so what it was writing is removed on
the way out (``rleseg.atomic``). ``rleseg train`` installs its own handlers while it trains: it finishes
the step, writes a checkpoint and returns its status itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from .. import __version__
from ..imageio import MaskError
from .common import EXIT_USER_ERROR, Parser, UserError
from .config import add_config
from .export import add_export
from .export_text import add_export_text
from .init import add_init
from .masks import add_examples, add_stats, add_tokenize
from .models import add_demo, add_evaluate, add_predict, add_train


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rleseg", description="Segmentation by language modelling of run-length-encoded masks.")
    parser.add_argument("--version", action="version", version=f"rleseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = (add_init, add_tokenize, add_stats, add_examples, add_train, add_demo, add_evaluate, add_predict,
                add_export, add_export_text, add_config)
    for add in commands:
        add(subparsers)
    return parser


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived (``signum``); a KeyboardInterrupt, so that no ``except Exception`` stops it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the block (the handlers before it come back after).
    A signal the process was started ignoring (``nohup``, background jobs) stays ignored; handlers can only
    be set in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, _raise_interrupted)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status: 0, 2 for a user error, 1 when stdout closed early,
    130 / 143 when SIGINT / SIGTERM stopped it."""
    try:
        with _signals_interrupt():
            try:
                args = build_parser().parse_args(argv)
            except SystemExit as done:  # --help and --version print and exit 0; keep main() returning
                return int(done.code or 0)
            return args.run(args)
    except KeyboardInterrupt as stop:  # a Ctrl-C before the handlers were in place is a SIGINT too
        signum = getattr(stop, "signum", signal.SIGINT)
        print(f"rleseg: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    except (UserError, MaskError) as error:
        print(f"rleseg: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `rleseg tokenize x.png | head`: the reader left, nothing to report
        # As the Python docs advise: point stdout at devnull so the flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1

