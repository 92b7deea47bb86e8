"""Grammar-constrained decoding: which tokens may come next, for a batch of partial sequences.

Every tokenizer offers ``grammar(batch_size)`` returning an object with this protocol:

- ``allowed(steps_left) -> (B, V) bool``: the tokens allowed at the next position of each sequence,
  given that at most ``steps_left`` more tokens (this one included) may be generated. A finished
  sequence allows only PAD.
- ``advance(tokens)``: feed the (B,) tokens chosen at this position (they must have been allowed).
- ``candidates()``: the tokens that cover every sequence's allowed ones at the next position, so that a
  model scores only those: ``(spans, ids)``, spans ``(first, stop)`` of the vocabulary shared by all rows
  and (B, K) more token ids per row or None; PAD and EOS always among them. None: all tokens.
- ``select(rows)``: keep the sequences that the (R,) int array ``rows`` indexes, in its order, repeats
  allowed (beam search copies and reorders its hypotheses); the batch size becomes R.
- ``done``: (B,) bool, True once a sequence has emitted EOS.
- ``truncated``: (B,) bool, True for the sequences whose EOS the length budget forced: when it came,
  pixels were left where a run could start, but the steps left could not hold that run and EOS.

A sequence generated under these rules always decodes with ``errors="strict"``: each slot gets a token
of its type, starts come strictly after the previous run's end in raster order, runs stay inside the
mask and under ``max_run``, EOS comes only at a run boundary, and EOS is forced when the budget left
cannot hold another whole run plus EOS.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from .run_format import RunFormat
from .vocab import EOS, PAD


class Grammar(Protocol):
    done: np.ndarray
    truncated: np.ndarray

    def allowed(self, steps_left: int) -> np.ndarray: ...

    def advance(self, tokens: np.ndarray) -> None: ...

    def candidates(self) -> tuple[list[tuple[int, int]], np.ndarray | None] | None: ...

    def select(self, rows: np.ndarray) -> None: ...


class ImageGrammar:
    """Constraints of :class:`rleseg.tokens.Tokenizer` (runs written in ``run_format``), vectorised over
    the batch."""

    row_state = ("done", "truncated", "budget_stops", "slot", "free", "stop", "start", "major")  # what select() indexes

    def __init__(self, run_format: RunFormat, batch_size: int, first: np.ndarray | None = None,
                 stop: np.ndarray | None = None):
        """``first`` / ``stop``: (B,) the cells [first, stop) each row's runs must lie in (default the mask:
        band sequences, tokens/bands.py, keep to their band)."""
        self.run_format = run_format
        self.done = np.zeros(batch_size, dtype=bool)
        self.truncated = np.zeros(batch_size, dtype=bool)
        self.budget_stops = np.zeros(batch_size, dtype=bool)  # a run could start but for the steps left
        self.slot = np.zeros(batch_size, dtype=np.int64)
        # first flat index the next run may start at; every run ends before ``stop``
        self.free = np.zeros(batch_size, dtype=np.int64) if first is None else np.array(first, dtype=np.int64)
        self.stop = np.full(batch_size, run_format.num_pixels, np.int64) if stop is None else np.array(stop, np.int64)
        self.start = np.zeros(batch_size, dtype=np.int64)  # start of the run being written
        self.major = np.zeros(batch_size, dtype=np.int64)  # 2-D starts: major coordinate just chosen
        self._values = {name: np.arange(r.size) + r.offset for name, r in run_format.vocab.ranges.items()}
        self._after_end = {name: values % run_format.num_pixels + 1 for name, values in self._values.items()}

    def allowed(self, steps_left: int) -> np.ndarray:
        fmt, vocab = self.run_format, self.run_format.vocab
        out = np.zeros((len(self.done), vocab.size), dtype=bool)
        out[:, PAD] = self.done
        out[:, EOS] = (self.slot == 0) & ~self.done
        can_start = self.check_budget(steps_left)
        for slot, name in enumerate(fmt.slots):  # each row is at one slot: only its range is computed
            rows = np.flatnonzero(can_start if slot == 0 else (self.slot == slot) & ~self.done)
            if rows.size:
                span = vocab[name]
                out[rows, span.first : span.stop] = self._slot_allowed(slot, name, rows)
        return out

    def _slot_allowed(self, slot: int, name: str, rows: np.ndarray) -> np.ndarray:
        """(len(rows), size of the slot's range) bool: the values of slot ``slot`` (named ``name``) that the
        rows ``rows`` (int indices, all at that slot) may write."""
        fmt, (n_major, n_minor) = self.run_format, self.run_format.grid
        free, start = self.free[rows, None], self.start[rows, None]
        room = np.minimum(fmt.max_run, self.stop[rows, None] - start)  # longest run allowed
        values = self._values[name][None, :]
        if name == "start":
            return (values >= free) & (values < self.stop[rows, None])
        if name == "coord" and slot == 0:
            return (values >= free // n_minor) & (values < n_major)
        if name == "coord":
            first_row = self.major[rows, None] == free // n_minor
            return (values >= np.where(first_row, free % n_minor, 0)) & (values < n_minor)
        if name == "length":
            return values <= room
        if name == "lac":
            return (values - 1) % fmt.max_run + 1 <= room
        if name in ("end", "end_class"):  # the run's last cell: from its start, at most ``room`` cells
            after = self._after_end[name][None, :]  # the cell after each value's end
            return (after > start) & (after <= start + room)
        return np.ones((len(rows), values.shape[1]), dtype=bool)  # class: every foreground class

    def check_budget(self, steps_left: int | np.ndarray) -> np.ndarray:
        """(B,) bool, the rows that may start a run with ``steps_left`` tokens of budget (this one included);
        notes in ``budget_stops`` the rows that could but for the budget (their EOS then is a truncation).
        :meth:`allowed` calls it; draft verification (models/draft.py) calls it alone where it needs no
        allowed tokens."""
        could_start = (self.slot == 0) & ~self.done & (self.free < self.stop)
        can_start = could_start & (steps_left >= self.run_format.tokens_per_run + 1)
        self.budget_stops = could_start & ~can_start
        return can_start

    def candidates(self) -> tuple[list[tuple[int, int]], np.ndarray | None] | None:
        """See the module docstring. Each live row writes one slot of a run (EOS comes only between runs):
        that slot's range, or for a run's end the ``max_run`` cells from the row's start (per class with
        "end_class"), a fraction of the range. Rows in different slots (draft verification, rows set by
        select()) get the ranges of all their slots, and the end cells of the rows writing an end."""
        fmt = self.run_format
        slots = np.unique(self.slot[~self.done]) if (~self.done).any() else np.zeros(1, np.int64)
        spans, ids = [(PAD, EOS + 1)], None
        for slot in slots:
            name = fmt.slots[int(slot)]
            span = fmt.vocab[name]
            if name not in ("end", "end_class"):
                spans.append((span.first, span.stop))
                continue
            cells = fmt.num_pixels
            window = np.minimum(self.start[:, None] + np.arange(fmt.max_run), cells - 1)  # (B, L) possible ends
            blocks = np.arange(span.size // cells)[None, :, None] * cells  # (1, kinds, 1)
            ids = span.first + (blocks + window[:, None]).reshape(len(window), -1)
            ids[self.slot != slot] = EOS  # rows writing another slot: their ranges are among the spans
        return spans, ids

    def advance(self, tokens: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Feed ``tokens`` (B,); with ``rows`` (B,) bool, only those rows take theirs and the others keep
        their state (draft verification, models/draft.py, feeds proposals of different lengths)."""
        tokens, live = finish(self, tokens, rows)
        for slot_name, rows, value in slot_values(self, tokens, live):
            if slot_name in ("start", "coord"):
                record_start(self, slot_name, rows, value)
            elif slot_name == "length":
                self.free[rows] = self.start[rows] + value
            elif slot_name == "lac":
                self.free[rows] = self.start[rows] + (value - 1) % self.run_format.max_run + 1
            elif slot_name in ("end", "end_class"):
                self.free[rows] = value % self.run_format.num_pixels + 1
        self.slot = np.where(live, (self.slot + 1) % self.run_format.tokens_per_run, self.slot)

    def select(self, rows: np.ndarray) -> None:
        select_rows(self, rows)


# The helpers below serve ImageGrammar and PanopticGrammar alike: ``state`` is either, with the (B,)
# arrays ``done``, ``slot`` (the slot of a run the next token fills), ``start`` and ``major``.
def select_rows(state, rows: np.ndarray) -> None:
    """Index every per-sequence array of ``state`` (the names in its ``row_state``) by ``rows`` (R,)."""
    for name in state.row_state:
        setattr(state, name, getattr(state, name)[rows])


def finish(state, tokens: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mark the sequences whose token is EOS done (and truncated where the last ``allowed`` call found
    the budget too short for another run); (tokens as int64, (B,) rows whose token continues a
    sequence). ``rows``: (B,) bool, the rows that take a token (default all)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    live = ~state.done if rows is None else ~state.done & rows
    ends = live & (tokens == EOS)
    state.truncated = state.truncated | (ends & state.budget_stops)
    state.done = state.done | ends
    return tokens, live & ~state.done


def slot_values(state, tokens: np.ndarray, rows: np.ndarray) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Per slot name that ``rows`` of the batch fill: (name, (B,) rows filling it, the value of each one's
    token)."""
    slots = state.run_format.slots
    name = np.array(slots)[state.slot]
    for slot_name in set(slots):
        here = rows & (name == slot_name)
        if here.any():
            yield slot_name, here, state.run_format.vocab[slot_name].value(tokens[here])


def record_start(state, slot_name: str, rows: np.ndarray, value: np.ndarray) -> None:
    """Advance the start of the run being written: a 1-D start token, or the major then the minor
    coordinate of a 2-D start. ``rows`` is the (B,) mask of the sequences whose token ``value`` (one per
    selected row) fills this slot."""
    if slot_name == "start":
        state.start[rows] = value
        return
    first, second = rows & (state.slot == 0), rows & (state.slot == 1)
    state.major[first] = value[first[rows]]
    state.start[second] = state.major[second] * state.run_format.grid[1] + value[second[rows]]
