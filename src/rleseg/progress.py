"""The one progress display of rleseg's commands, on stderr: a tqdm bar on a terminal, plain lines elsewhere.

Carriage-return frames make unreadable logs under SLURM, nohup or a pipe, so when stderr is not a
terminal the display is :class:`ProgressLines`: one line every ``every`` updates (none without it) and
one at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any


def progress(items: Iterable | None = None, *, desc: str, unit: str, enabled: bool = True, total: int | None = None,
             initial: int = 0, terminal_only: bool = False, leave: bool = True, every: int | None = None) -> Any:
    """``items`` wrapped in a progress display (or, without items, one to ``update`` by hand).

    On a terminal: a tqdm bar. Elsewhere: :class:`ProgressLines`, a line every ``every`` updates and one
    when it closes. ``enabled=False`` gives a silent display that still iterates; ``terminal_only``
    also silences it when stderr is not a terminal (the displays of quick inner loops).
    """
    on_terminal = sys.stderr.isatty()
    if enabled and not on_terminal:
        return ProgressLines(items, desc=desc, unit=unit, total=total, initial=initial,
                             every=every, enabled=not terminal_only)
    from tqdm import tqdm

    return tqdm(items, total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, leave=leave,
                dynamic_ncols=True)


class ProgressLines:
    """tqdm's interface (iterate, ``update``, ``total``, ``set_postfix``, ``write``, ``close``) as plain lines:
    ``desc: n/total unit (p%), postfix, rate unit/s, elapsed m:ss``."""

    def __init__(self, items: Iterable | None = None, *, desc: str, unit: str, total: int | None = None,
                 initial: int = 0, every: int | None = None, enabled: bool = True):
        self.items, self.desc, self.unit, self.every, self.enabled = items, desc, unit, every, enabled
        if total is None and hasattr(items, "__len__"):
            total = len(items)
        self.total, self.n, self.initial = total, initial, initial
        self.postfix: dict[str, Any] = {}
        self.started = time.perf_counter()
        self.closed = False
        self.last_line_at = initial

    def __iter__(self) -> Iterator:
        for item in self.items:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.every and self.n // self.every > self.last_line_at // self.every:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def write(self, message: str, file=None) -> None:
        print(message, file=file or sys.stderr, flush=True)

    def close(self) -> None:
        if not self.closed and self.n > self.last_line_at:
            self._line()
        self.closed = True

    def line(self) -> str:
        """What the display shows now, as one line."""
        elapsed = time.perf_counter() - self.started
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        if self.total:
            done += f" ({100 * self.n / self.total:.0f}%)"
        parts = [f"{self.desc}: {done} {self.unit}", *(f"{key} {value}" for key, value in self.postfix.items())]
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        minutes, seconds = divmod(int(elapsed), 60)
        parts += [f"{rate:.2f} {self.unit}/s", f"elapsed {minutes}:{seconds:02d}"]
        return ", ".join(parts)

    def _line(self) -> None:
        self.last_line_at = self.n
        if self.enabled:
            print(self.line(), file=sys.stderr, flush=True)
