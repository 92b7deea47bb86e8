"""The tokenizers whose mask becomes several run sequences, each after its own prompt token (per-class
sequences, per_class.py; band sequences, bands.py): their flat form and its decoding, written once.

The flat form is the sequences concatenated in prompt order, each ending in its EOS; the model reads
sequence i after ``prompts[i]``, and an image's sequences are adjacent rows of a batch.
"""

from __future__ import annotations

import numpy as np

from .runs import Runs, label_dtype, paint_runs
from .stored import StoredArguments
from .tokenizer import Tokenizer, parse_tokens
from .vocab import EOS, PAD


def split_sequences(tokens: np.ndarray) -> list[np.ndarray]:
    """A flat form -> its sequences, each up to and including its EOS (a sequence without EOS: one row)."""
    cuts = np.flatnonzero(np.asarray(tokens) == EOS)[:-1] + 1
    return np.split(np.asarray(tokens), cuts)


def prompted_sequences(tokens, wanted: int, noun: str, errors: str) -> list[tuple[int, np.ndarray, int]]:
    """A flat form of ``wanted`` sequences (one per ``noun``) -> (index, its sequence up to and including its
    EOS, its offset in the flat form) of each one present; strict mode checks the count and that only PAD
    follows the last."""
    if errors not in ("strict", "ignore"):
        raise ValueError(f"errors must be 'strict' or 'ignore', got {errors!r}")
    flat = parse_tokens(tokens, errors == "strict")
    eos = np.flatnonzero(flat == EOS)
    if errors == "strict" and eos.size < wanted:
        raise ValueError(f"{eos.size} EOS token(s) in a sequence of {flat.size} tokens; these sequences need one "
                         f"per {noun}, {wanted}")
    ends = np.append(eos[:wanted] + 1, flat.size)[:wanted]
    if errors == "strict" and np.any(flat[ends[-1]:] != PAD):
        bad = ends[-1] + int(np.flatnonzero(flat[ends[-1]:] != PAD)[0])
        raise ValueError(f"token {flat[bad]} at position {bad} follows the EOS of the last {noun}'s sequence "
                         f"({wanted}); only PAD ({PAD}) may follow it")
    starts = np.concatenate(([0], ends[:-1]))
    return [(i, flat[a:b], int(a)) for i, (a, b) in enumerate(zip(starts, ends, strict=True)) if a < b]


def prompted_runs(tokenizer: Tokenizer, prompts, seq: np.ndarray, offset: int, errors: str, noun: str, number: int
                  ) -> tuple[Runs, np.ndarray]:
    """The runs of one sequence ``seq`` of a flat form, where it starts at ``offset``, read by ``tokenizer``;
    positions count in the flat form. Strict mode refuses a token of the ``prompts`` range in it; errors
    name the sequence as ``noun`` ``number`` ("class 2")."""
    prompt = np.flatnonzero(prompts.contains(seq))
    if errors == "strict" and prompt.size:
        token = int(seq[prompt[0]])
        raise ValueError(f"token {token} at position {offset + int(prompt[0])} is the prompt of "
                         f"{noun} {int(prompts.value(token))}; a prompt is the decoder's first input, "
                         "never part of a sequence")
    try:
        runs, positions = tokenizer.decode_runs_at(seq, errors)
    except ValueError as error:
        raise ValueError(f"sequence of {noun} {number} (positions count from {offset}, where it starts): "
                         f"{error}") from None
    return runs, positions + offset


class PromptedTokenizer(StoredArguments):
    """What :class:`PerClassTokenizer` and :class:`BandTokenizer` share: a subclass sets ``vocab`` (with a
    "prompt" range), ``prompts``, ``row_tokenizer`` (the :class:`Tokenizer` one sequence's runs are
    written with), ``noun`` (what a sequence is of: "class", "band") and :meth:`_sequence_runs`."""

    task = "semantic"
    noun = "sequence"
    row_tokenizer: Tokenizer

    @property
    def bos(self) -> int:
        return self.vocab.bos[self.task]

    def decode(self, tokens, errors: str = "strict") -> np.ndarray:
        """Flat form -> (H, W) label map, the sequences painted in order (a later one wins an overlap).

        errors="strict" raises ValueError on anything but one well-formed sequence per prompt, each ending
        in EOS, followed by PAD only. errors="ignore" reads the first sequences up to the prompts' count
        (missing ones are empty) and keeps their well-formed runs.
        """
        flat = paint_runs(self.decode_runs(tokens, errors), self.num_pixels, label_dtype(self.num_classes))
        return flat.reshape(self.mask_size, order=self.order)

    def decode_runs(self, tokens, errors: str = "strict") -> Runs:
        """Flat form -> every sequence's runs, sequence by sequence."""
        return self.decode_runs_at(tokens, errors)[0]

    def decode_runs_at(self, tokens, errors: str = "strict") -> tuple[Runs, np.ndarray]:
        """(:meth:`decode_runs`, (R, tokens_per_run) positions in the flat form of each run's tokens)."""
        parts = [self._sequence_runs(i, seq, offset, errors) for i, seq, offset in self._sequences(tokens, errors)]
        if not parts:
            return Runs.empty(), np.zeros((0, self.tokens_per_run), np.int64)
        fields = ("starts", "lengths", "classes")
        runs = Runs(*(np.concatenate([getattr(r, name) for r, _ in parts]) for name in fields))
        return runs, np.concatenate([p for _, p in parts]).reshape(-1, self.tokens_per_run)

    def count_runs(self, tokens, errors: str = "ignore") -> tuple[int, int]:
        """(runs the sequences stand for, runs ``decode(errors="ignore")`` keeps), as for :class:`Tokenizer`."""
        written = sum(self.row_tokenizer.count_runs(seq, errors)[0] for _, seq, _ in self._sequences(tokens, errors))
        return written, written if errors == "strict" else len(self.decode_runs(tokens, errors="ignore"))

    def _sequences(self, tokens, errors: str) -> list[tuple[int, np.ndarray, int]]:
        return prompted_sequences(tokens, len(self.prompts), self.noun, errors)

    def _sequence_runs(self, index: int, seq: np.ndarray, offset: int, errors: str) -> tuple[Runs, np.ndarray]:
        """The runs of sequence ``index`` ``seq``, at ``offset`` in the flat form (positions count there)."""
        raise NotImplementedError
