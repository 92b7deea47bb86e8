"""The one progress bar of rleseg's commands (tqdm on stderr)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def progress(items: Iterable | None = None, *, desc: str, unit: str, enabled: bool = True, total: int | None = None,
             initial: int = 0, terminal_only: bool = False, leave: bool = True) -> Any:
    """``items`` wrapped in a tqdm bar (or, without items, a bar to ``update`` by hand).

    ``enabled=False`` gives a silent bar that still iterates; ``terminal_only`` also silences it when stderr
    is not a terminal (logs, pipes).
    """
    from tqdm import tqdm

    disable = None if enabled and terminal_only else not enabled
    return tqdm(items, total=total, initial=initial, desc=desc, unit=unit, disable=disable, leave=leave,
                dynamic_ncols=True)
