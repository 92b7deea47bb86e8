"""What every ``rleseg`` command shares: the one-line user error, argparse option types, JSON output."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .. import atomic

EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error the user can fix; :func:`rleseg.cli.main` prints its message on one line and exits with status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # argparse would print the usage block and exit; one line that points to --help is clearer.
        raise UserError(f"{message} (see '{self.prog} --help')")


def add_command(subparsers, run: Callable[[argparse.Namespace], int]) -> Parser:
    """The subcommand that ``run`` runs, named after it (``_run_<name>``, "_" read as "-"); ``run``'s docstring
    is the command's help (its first line) and ``--help`` description (the rest)."""
    summary, _, details = (run.__doc__ or "").strip().partition("\n\n")
    summary = summary.rstrip(".")
    name = run.__name__.removeprefix("_run_").replace("_", "-")
    parser = subparsers.add_parser(name, help=summary[:1].lower() + summary[1:],
                                   description=" ".join(details.split()) or summary)
    parser.set_defaults(run=run)
    return parser


def add_overrides(group, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``."""
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


# ----------------------------------------------------------------------------- option types
def number_type(kind: type, accept, expected: str):
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


positive_int = number_type(int, lambda v: v >= 1, "a positive integer")
non_negative_int = number_type(int, lambda v: v >= 0, "an integer >= 0")
probability = number_type(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
share = number_type(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
non_negative_float = number_type(float, lambda v: v >= 0, "a number >= 0")


def num_classes(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected at least 2 classes (background included), got {text!r}")
    return value


def list_of(parse: Callable[[str], object], choices: Sequence[str] | None = None):
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


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Commands that build models and read data: their ValueError/OSError name the value or file at
    fault, so print one line instead of a traceback (RLESEG_DEBUG=1 shows the traceback)."""
    try:
        yield
    except (ValueError, OSError) as error:
        if os.environ.get("RLESEG_DEBUG"):
            raise
        raise UserError(str(error)) from None




def write_json(path: Path, data: dict) -> None:
    try:
        atomic.write_json(path, data)
    except OSError as error:
        raise UserError(f"{path}: cannot write ({error.strerror or error})") from None
