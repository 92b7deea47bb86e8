"""One run as tokens: the slot layout that the image and panoptic tokenizers and their grammars share.

A run is ``tokens_per_run`` tokens, one per *slot*; a slot's name is the vocabulary range its token
comes from. The start slots come first, then the body::

    starts     start slots        scheme   body slots (extent "length")   body slots (extent "end")
    1d         start              lac      lac                          end_class
    2d         coord coord        class    length class                 end class
                                  binary   length                       end

Extent "end" writes a run's last cell (a flat index, like a 1-D start) instead of its length, so that a
model can point at both ends of a run; "end_class" fuses it with the class: ``S * (class - 1) + end``.

The panoptic tokenizer writes binary runs (start, length); the class token that closes one of its
groups belongs to no run. The type of a run's last slot appears nowhere else in the run, so the windows
that lenient decoding finds by type never overlap.
"""

from __future__ import annotations

import numpy as np

from .runs import Runs
from .vocab import Vocab

# Per start mode, the slots of a run's start; their name is also the start tokens' range.
START_SLOTS = {"1d": ("start",), "2d": ("coord", "coord")}
BODY_SLOTS = {
    "length": {"lac": ("lac",), "class": ("length", "class"), "binary": ("length",)},
    "end": {"lac": ("end_class",), "class": ("end", "class"), "binary": ("end",)},
}
EXTENTS = tuple(BODY_SLOTS)


class RunFormat:
    """Runs <-> (R, tokens_per_run) token arrays, for one vocabulary, start mode, scheme and scan grid.

    Args:
        vocab: the layout the slots' ranges come from.
        starts: "1d" or "2d" (see :class:`rleseg.tokens.Tokenizer`).
        scheme: "lac", "class" or "binary": the body slots.
        grid: (major, minor) scan grid, (H, W) for order "C" and (W, H) for "F"; starts are flat
            indices into it.
        max_run: L, the longest run ("lac" fuses ``L * (class - 1) + length``).
        extent: "length" (a run's length) or "end" (its last cell; needs 1-D starts).

    Attributes:
        slots: range name of each token of a run, e.g. ("coord", "coord", "length").
        kinds: (tokens_per_run,) the ``vocab.kind`` each slot expects.
        num_pixels: major * minor.
    """

    def __init__(self, vocab: Vocab, starts: str, scheme: str, grid: tuple[int, int], max_run: int,
                 extent: str = "length"):
        self.vocab, self.starts, self.scheme, self.extent = vocab, starts, scheme, extent
        self.grid, self.max_run = grid, max_run
        self.num_pixels = grid[0] * grid[1]
        self.slots = START_SLOTS[starts] + BODY_SLOTS[extent][scheme]
        self.kinds = np.array([vocab.names.index(name) for name in self.slots])

    @property
    def tokens_per_run(self) -> int:
        return len(self.slots)

    # ----------------------------------------------------------------------------- runs -> tokens
    def encode(self, runs: Runs) -> np.ndarray:
        """Runs (flat starts in scan order, sorted and disjoint) -> (R, tokens_per_run) int64 tokens."""
        vocab = self.vocab
        if self.starts == "1d":
            columns = [vocab["start"].token(runs.starts)]
        else:
            major, minor = np.divmod(runs.starts, self.grid[1])
            columns = [vocab["coord"].token(major), vocab["coord"].token(minor)]
        if self.extent == "end":
            last = runs.ends - 1
            if self.scheme == "lac":
                columns.append(vocab["end_class"].token(self.num_pixels * (runs.classes - 1) + last))
            else:
                columns.append(vocab["end"].token(last))
                if self.scheme == "class":
                    columns.append(vocab["class"].token(runs.classes))
        elif self.scheme == "lac":
            columns.append(vocab["lac"].token(self.max_run * (runs.classes - 1) + runs.lengths))
        else:
            columns.append(vocab["length"].token(runs.lengths))
            if self.scheme == "class":
                columns.append(vocab["class"].token(runs.classes))
        return np.stack(columns, axis=1).astype(np.int64).reshape(len(runs), self.tokens_per_run)

    # ----------------------------------------------------------------------------- tokens -> runs
    def windows(self, kinds: np.ndarray) -> np.ndarray:
        """Lenient decoding: the position of every window of ``tokens_per_run`` tokens whose types
        (``vocab.kind`` of a body, ``kinds``) match a run, in order."""
        k = self.tokens_per_run
        if kinds.size < k:
            return np.zeros(0, dtype=np.int64)
        windows = np.lib.stride_tricks.sliding_window_view(kinds, k)
        return np.flatnonzero(np.all(windows == self.kinds, axis=1))

    def decode(self, run_tokens: np.ndarray) -> tuple[Runs, np.ndarray]:
        """(R, tokens_per_run) well-typed tokens -> (the runs they say, (R,) which runs start inside the
        scan grid). Binary runs get class 1.
        """
        vocab = self.vocab
        if self.extent == "end":
            return self._decode_ends(run_tokens)
        if self.scheme == "lac":
            fused = vocab["lac"].value(run_tokens[:, -1]) - 1
            lengths, classes = fused % self.max_run + 1, fused // self.max_run + 1
        elif self.scheme == "class":
            lengths, classes = vocab["length"].value(run_tokens[:, -2]), vocab["class"].value(run_tokens[:, -1])
        else:
            lengths = vocab["length"].value(run_tokens[:, -1])
            classes = np.ones_like(lengths)
        if self.starts == "1d":
            starts = vocab["start"].value(run_tokens[:, 0])
            in_grid = np.ones(len(run_tokens), dtype=bool)
        else:
            major, minor = (vocab["coord"].value(run_tokens[:, i]) for i in (0, 1))
            starts = major * self.grid[1] + minor
            in_grid = (major < self.grid[0]) & (minor < self.grid[1])
        return Runs(starts, lengths, classes), in_grid

    def _decode_ends(self, run_tokens: np.ndarray) -> tuple[Runs, np.ndarray]:
        vocab, cells = self.vocab, self.num_pixels
        starts = vocab["start"].value(run_tokens[:, 0])
        if self.scheme == "lac":
            classes, last = np.divmod(vocab["end_class"].value(run_tokens[:, -1]), cells)
            classes = classes + 1
        else:
            last = vocab["end"].value(run_tokens[:, 1])
            classes = vocab["class"].value(run_tokens[:, 2]) if self.scheme == "class" else np.ones_like(last)
        return Runs(starts, last + 1 - starts, classes), np.ones(len(run_tokens), dtype=bool)

    def in_mask(self, runs: Runs, in_grid: np.ndarray) -> np.ndarray:
        """(R,) which runs lie in the mask: they start in the scan grid, end by ``num_pixels`` and (extent
        "end", where a run can end before it starts) are 1 .. ``max_run`` cells long."""
        return in_grid & (runs.ends <= self.num_pixels) & (runs.lengths >= 1) & (runs.lengths <= self.max_run)

    # ----------------------------------------------------------------------------- strict decoding
    def misplaced(self, token: int, position: int, slot: int, run: str) -> str:
        """The error for a token of the wrong type where ``slot`` of ``run`` (e.g. "run 3") is due."""
        article = "an" if self.slots[slot][0] in "aeiou" else "a"
        return (
            f"token {token} at position {position} is a {self.vocab.describe(token)}, "
            f"expected {article} {self.slots[slot]} token (slot {slot} of {run})"
        )

    def check(self, runs: Runs, in_grid: np.ndarray, positions: np.ndarray, groups: np.ndarray | None = None) -> None:
        """Strict decoding: raise ValueError on the first run outside the mask, then on the first run that
        starts before the end of the previous one.

        Args:
            runs, in_grid: what :meth:`decode` returned.
            positions: (R,) the token position of each run's first token, for the messages.
            groups: (R,) panoptic group of each run: only runs of one group must be sorted and disjoint.
        """
        outside = np.flatnonzero(~self.in_mask(runs, in_grid))
        if outside.size:
            i = int(outside[0])
            raise ValueError(self._outside_message(runs, i, int(positions[i]), bool(in_grid[i])))
        overlap = runs.starts[1:] < runs.ends[:-1]
        if groups is not None:
            overlap &= groups[1:] == groups[:-1]
        if overlap.any():
            i = int(np.flatnonzero(overlap)[0]) + 1
            scope = ("", "runs") if groups is None else (" of its group", "runs of a group")
            raise ValueError(
                f"run {i} (tokens at position {positions[i]}) starts at {runs.starts[i]}, before the end "
                f"{runs.ends[i - 1]} of the previous run{scope[0]}; {scope[1]} must be sorted and disjoint"
            )

    def _outside_message(self, runs: Runs, i: int, position: int, in_grid: bool) -> str:
        start = int(runs.starts[i])
        if not in_grid:
            return f"run {i} (tokens at position {position}) starts outside the {self.grid[0]}x{self.grid[1]} scan grid"
        if runs.lengths[i] < 1:
            return f"run {i} (tokens at position {position}) ends at cell {runs.ends[i] - 1}, before its start {start}"
        if runs.lengths[i] > self.max_run:
            return (f"run {i} (tokens at position {position}) from cell {start} to {runs.ends[i] - 1} is "
                    f"{runs.lengths[i]} cells long, above max_run {self.max_run}")
        return (
            f"run {i} (tokens at position {position}) with start {start} and length {runs.lengths[i]} ends past "
            f"the mask of {self.num_pixels} pixels"
        )
