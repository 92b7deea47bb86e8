"""Grammar-constrained decoding for :class:`rleseg.tokens.panoptic.PanopticTokenizer`.

Same protocol as :mod:`rleseg.tokens.grammar`; the panoptic rules add per-sequence pixel ownership (so
groups stay disjoint) and the classes that have already closed a group (so each stuff class closes one).
"""

from __future__ import annotations

import numpy as np

from .grammar import finish, record_start, select_rows, slot_values
from .run_format import RunFormat
from .vocab import EOS, PAD


class PanopticGrammar:
    """Constraints of :class:`rleseg.tokens.PanopticTokenizer` for constrained decoding, vectorised over
    the batch: its runs are written in ``run_format``, ``is_thing`` (C,) says which classes are things.

    Follows the protocol of :mod:`rleseg.tokens.grammar`. Beyond token types: a run starts on a free
    pixel after the previous run of its group and never covers a pixel claimed by any earlier run (so
    groups are disjoint), a class token may close a group only after a whole run, a stuff class closes
    at most one group, a new group opens only if some class could still close it, EOS comes only between
    groups, and a run is started only if it, a class token and EOS fit in the budget. Every sequence it
    allows decodes with ``errors="strict"``. It does not impose the canonical group order of ``encode``.
    """

    row_state = ("done", "truncated", "budget_stops", "slot", "runs_in_group", "free", "start", "major", "claimed",
                 "closed")  # what select() indexes

    def __init__(self, run_format: RunFormat, is_thing: np.ndarray, batch_size: int):
        self.run_format, self.is_thing = run_format, is_thing
        num_pixels, num_classes = run_format.num_pixels, len(is_thing)
        self.done = np.zeros(batch_size, dtype=bool)
        self.truncated = np.zeros(batch_size, dtype=bool)
        self.budget_stops = np.zeros(batch_size, dtype=bool)  # a run could start but for the steps left
        self.slot = np.zeros(batch_size, dtype=np.int64)
        self.runs_in_group = np.zeros(batch_size, dtype=np.int64)
        self.free = np.zeros(batch_size, dtype=np.int64)  # first flat index the group's next run may start at
        self.start = np.zeros(batch_size, dtype=np.int64)
        self.major = np.zeros(batch_size, dtype=np.int64)
        self.claimed = np.zeros((batch_size, num_pixels), dtype=bool)  # (B, H*W) pixels of earlier runs
        self.closed = np.zeros((batch_size, num_classes), dtype=bool)  # classes that closed a group
        self._pixels = np.arange(num_pixels)
        self._classes = np.arange(1, num_classes)

    def allowed(self, steps_left: int) -> np.ndarray:
        fmt, vocab = self.run_format, self.run_format.vocab
        k, (n_major, n_minor), batch = fmt.tokens_per_run, fmt.grid, len(self.done)
        out = np.zeros((batch, vocab.size), dtype=bool)
        live = ~self.done
        out[:, PAD] = self.done
        boundary = live & (self.slot == 0)
        open_group = self.runs_in_group > 0
        out[:, EOS] = boundary & ~open_group
        # Which classes could close a group: things always, stuff only once.
        closable = self.is_thing[self._classes][None, :] | ~self.closed[:, 1:]  # (B, C-1)
        span = vocab["class"]
        out[:, span.first : span.stop] = (boundary & open_group)[:, None] & closable
        free_pixel = ~self.claimed & (self._pixels[None, :] >= self.free[:, None])  # (B, H*W)
        could_start = boundary & free_pixel.any(axis=1) & (open_group | closable.any(axis=1))
        can_start = could_start & (steps_left >= k + 2)
        self.budget_stops = could_start & ~can_start
        if fmt.starts == "1d":
            span = vocab["start"]
            out[:, span.first : span.stop] = can_start[:, None] & free_pixel
        else:
            span = vocab["coord"]
            free_grid = free_pixel.reshape(batch, n_major, n_minor)
            out[:, span.first : span.first + n_major] |= can_start[:, None] & free_grid.any(axis=2)
            second = live & (self.slot == 1)
            out[:, span.first : span.first + n_minor] |= second[:, None] & free_grid[np.arange(batch), self.major]
        # Length: up to max_run, the mask's end, and the next claimed pixel.
        ahead = self.claimed & (self._pixels[None, :] >= self.start[:, None])
        stop = np.where(ahead.any(axis=1), ahead.argmax(axis=1), fmt.num_pixels)
        room = np.minimum(fmt.max_run, stop - self.start)
        span = vocab["length"]
        lengths = np.arange(1, span.size + 1)
        out[:, span.first : span.stop] = (live & (self.slot == k - 1))[:, None] & (lengths[None, :] <= room[:, None])
        return out

    def advance(self, tokens: np.ndarray) -> None:
        vocab = self.run_format.vocab
        tokens, live = finish(self, tokens)
        closing = live & vocab["class"].contains(tokens)
        rows = np.flatnonzero(closing)
        self.closed[rows, vocab["class"].value(tokens[rows])] = True
        self.runs_in_group[closing] = 0
        self.free[closing] = 0
        run_token = live & ~closing
        for slot_name, rows, value in slot_values(self, tokens, run_token):
            if slot_name in ("start", "coord"):
                record_start(self, slot_name, rows, value)
            else:  # length: the run is complete
                end = self.start[rows] + value
                self.claimed[rows] |= (self._pixels[None, :] >= self.start[rows, None]) & (
                    self._pixels[None, :] < end[:, None]
                )
                self.free[rows] = end
                self.runs_in_group[rows] += 1
        self.slot = np.where(run_token, (self.slot + 1) % self.run_format.tokens_per_run, self.slot)

    def candidates(self) -> None:
        """None: groups put rows at different slots, so every token is scored."""
        return None

    def select(self, rows: np.ndarray) -> None:
        select_rows(self, rows)

    def openings(self) -> np.ndarray:
        """(B,) bool: the rows whose next token opens a group or ends the sequence."""
        return ~self.done & (self.slot == 0) & (self.runs_in_group == 0)
