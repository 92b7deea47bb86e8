"""Sizes rleseg refuses before allocating: one clear line instead of an allocator traceback (GB to TB) for a
mistyped number (``data.num_classes=100000000``, ``model.max_seq_len=1e10``, ``predict --scale 1000``).

The limit is ``RLESEG_MEMORY_LIMIT_GB`` gigabytes (default 64: more than any one step of the shipped configs
needs by orders of magnitude, less than what a typo asks for); raise it for a larger machine.
"""

from __future__ import annotations

import os

DEFAULT_MEMORY_LIMIT_GB = 64.0


def memory_limit() -> float:
    """The limit in bytes (``RLESEG_MEMORY_LIMIT_GB``, default 64 GB)."""
    text = os.environ.get("RLESEG_MEMORY_LIMIT_GB", str(DEFAULT_MEMORY_LIMIT_GB))
    try:
        limit = float(text)
    except ValueError:
        raise ValueError(f"RLESEG_MEMORY_LIMIT_GB must be a number of gigabytes, got {text!r}") from None
    if not limit > 0:
        raise ValueError(f"RLESEG_MEMORY_LIMIT_GB must be > 0, got {text!r}")
    return limit * 1e9


def check_memory(what: str, nbytes: float) -> None:
    """Raise ValueError when ``what`` (a phrase naming the value at fault) would take more than the limit."""
    nbytes = min(nbytes, 10**300)  # a mistyped number of hundreds of digits: beyond floats, still refused
    if nbytes > memory_limit():
        raise ValueError(f"{what} would take about {_size(nbytes)}, above the limit of {_size(memory_limit())} "
                         "(set RLESEG_MEMORY_LIMIT_GB to allow more)")


def _size(nbytes: float) -> str:
    if nbytes >= 1e21:  # a million PB and more (a mistyped scale of 1e300): the exponent is what matters
        return f"{nbytes:.1e} B"
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if nbytes < 1000 or unit == "PB":
            return f"{nbytes:,.0f} {unit}" if unit == "B" else f"{nbytes:,.1f} {unit}"
        nbytes /= 1000
    raise AssertionError("unreachable")
