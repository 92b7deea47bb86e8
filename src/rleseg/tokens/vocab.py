"""Token vocabulary: special tokens, then contiguous ranges laid out from the tokenizer's arguments."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

PAD = 0
EOS = 1
# One BOS ("task") token per task, so that one model can serve several tasks.
TASKS = ("semantic", "panoptic", "video")
NUM_SPECIAL = 2 + len(TASKS)
# The most tokens an image or panoptic tokenizer lays out, and the most cells its masks have, unless its
# ``max_vocab`` says otherwise: grammars allocate arrays of the vocabulary's size per sequence and decoding
# one label per cell, so a typo (num_classes=100000000, max_run=1000000000, a 100000x100000 mask) is refused
# when the tokenizer is built, naming the size, instead of in an allocator. What a model's embedding table of
# a vocabulary below this would take is the config's check (rleseg.experiment.validate_config).
MAX_VOCAB = 2**28


def check_layout_size(owner: str, layout: list[tuple[str, int, int]], cells: int, max_vocab: int) -> None:
    """ValueError naming ``owner`` (the tokenizer's arguments) and the sizes when the vocabulary of ``layout``
    ((name, size, offset) ranges, as :class:`Vocab` takes them) or the mask's ``cells`` exceed ``max_vocab``."""
    size = NUM_SPECIAL + sum(int(n) for _, n, _ in layout)
    if size > max_vocab:
        ranges = ", ".join(f"{name} {int(n):,}" for name, n, _ in sorted(layout, key=lambda r: -r[1]))
        raise ValueError(f"{owner} needs a vocabulary of {size:,} tokens ({ranges}), above max_vocab={max_vocab:,}")
    if cells > max_vocab:
        raise ValueError(f"{owner} decodes masks of {cells:,} cells, above max_vocab={max_vocab:,}")


@dataclass(frozen=True)
class TokenRange:
    """Tokens ``first .. first + size - 1`` stand for the values ``offset .. offset + size - 1``."""

    name: str
    first: int
    size: int
    offset: int = 0

    @property
    def stop(self) -> int:
        return self.first + self.size

    def contains(self, tokens: np.ndarray) -> np.ndarray:
        return (tokens >= self.first) & (tokens < self.stop)

    def token(self, values: np.ndarray | int) -> np.ndarray:
        return np.asarray(values, dtype=np.int64) - self.offset + self.first

    def value(self, tokens: np.ndarray | int) -> np.ndarray:
        return np.asarray(tokens, dtype=np.int64) - self.first + self.offset


class Vocab:
    """PAD = 0, EOS = 1, one BOS per task, then the named ranges in the given order, without gaps.

    Attributes:
        pad, eos: the special tokens.
        bos: task name -> BOS token.
        ranges: range name -> TokenRange.
        size: number of tokens (the model's embedding rows).
    """

    pad = PAD
    eos = EOS
    bos: ClassVar[dict[str, int]] = {task: 2 + i for i, task in enumerate(TASKS)}

    def __init__(self, ranges: list[tuple[str, int, int]]):
        """``ranges``: (name, number of values, value of the first token) in layout order."""
        self.ranges: dict[str, TokenRange] = {}
        first = NUM_SPECIAL
        for name, size, offset in ranges:
            if size < 1:
                raise ValueError(f"token range {name!r} must hold at least one value, got {size}")
            if name in self.ranges:
                raise ValueError(f"token range {name!r} appears twice")
            self.ranges[name] = TokenRange(name, first, int(size), int(offset))
            first += int(size)
        self.size = first
        bounds = sorted((r.first, r.stop) for r in self.ranges.values())
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(bounds)), "ranges overlap"
        assert not bounds or bounds[0][0] >= NUM_SPECIAL, "a range overlaps the special tokens"
        # Stops of the ranges in layout order: searchsorted over them finds a token's range.
        self._bounds = np.array([NUM_SPECIAL] + [r.stop for r in self.ranges.values()], dtype=np.int64)
        self._names = list(self.ranges)

    def __getitem__(self, name: str) -> TokenRange:
        return self.ranges[name]

    def kind(self, tokens: np.ndarray) -> np.ndarray:
        """Index into ``self.names`` of each token's range; -1 for special and out-of-vocab tokens."""
        tokens = np.asarray(tokens, dtype=np.int64)
        index = np.searchsorted(self._bounds, tokens, side="right") - 1
        inside = (tokens >= NUM_SPECIAL) & (tokens < self.size)
        return np.where(inside, index, -1)

    @property
    def names(self) -> list[str]:
        return self._names

    def describe(self, token: int) -> str:
        """A short human description of one token, for error messages."""
        token = int(token)
        if token == PAD:
            return "PAD"
        if token == EOS:
            return "EOS"
        for task, bos in self.bos.items():
            if token == bos:
                return f"BOS({task})"
        for r in self.ranges.values():
            if r.first <= token < r.stop:
                return f"{r.name} token (value {int(r.value(token))})"
        return f"out-of-vocabulary token (vocab size {self.size})"

    def to_dict(self) -> dict:
        return {
            "size": self.size,
            "pad": PAD,
            "eos": EOS,
            "bos": dict(self.bos),
            "ranges": {r.name: {"first": r.first, "size": r.size, "offset": r.offset} for r in self.ranges.values()},
        }

    def __repr__(self) -> str:
        parts = ", ".join(f"{r.name}=[{r.first}, {r.stop})" for r in self.ranges.values())
        return f"Vocab(size={self.size}, pad={PAD}, eos={EOS}, bos={self.bos}, {parts})"

