"""Per-class sequences: a label map as one short binary run sequence per foreground class.

A C-class mask becomes C-1 sequences, one per foreground class c: the runs of ``mask == c`` written as a
binary :class:`Tokenizer` writes them (start, length; no class token), then EOS. The model reads the
class from its first input token, a *prompt* token per foreground class that takes BOS's place, and
decodes the C-1 sequences of an image in parallel as rows of one batch (the encoder's memory repeated),
each under the binary grammar. COCO stores one RLE per class the same way.

The flat form that ``encode`` returns and ``decode`` takes is the C-1 sequences concatenated in class
order, each ending in its EOS: one 1-D array, so samples, checkpoints and the inference output keep
the shape of every other tokenizer's; :func:`split_sequences` cuts it into the rows the model reads
(after each EOS), and the rows of one image, each cut after its EOS, concatenated, are the flat form
again. Layout: the binary tokenizer's ranges (length, start), then the prompts, so that a run's tokens
are the same as the binary tokenizer's::

    0 PAD, 1 EOS, 2-4 BOS per task, then lengths 1 .. L, starts, prompts of classes 1 .. C-1

Where the masks of two classes overlap (a model can write that; ground truth cannot), the later class
wins: the sequences are painted in class order, as the image tokenizer paints runs in sequence order.
"""

from __future__ import annotations

import numpy as np

from .grammar import ImageGrammar
from .run_format import RunFormat
from .runs import Runs, check_label_map, label_dtype, paint_runs
from .stored import StoredArguments
from .tokenizer import Tokenizer, parse_tokens
from .vocab import EOS, MAX_VOCAB, PAD, Vocab, check_layout_size


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


def prompted_runs(tokenizer: Tokenizer, prompts, seq: np.ndarray, offset: int, errors: str, owner: str
                  ) -> tuple[Runs, np.ndarray]:
    """The runs of one sequence ``seq`` of a flat form, where it starts at ``offset``, read by ``tokenizer``;
    positions count in the flat form. Strict mode refuses a token of the ``prompts`` range in it; errors
    name the sequence as ``owner`` ("class 2")."""
    prompt = np.flatnonzero(prompts.contains(seq))
    if errors == "strict" and prompt.size:
        token = int(seq[prompt[0]])
        raise ValueError(f"token {token} at position {offset + int(prompt[0])} is the prompt of "
                         f"{owner.split()[0]} {int(prompts.value(token))}; a prompt is the decoder's first input, "
                         "never part of a sequence")
    try:
        runs, positions = tokenizer.decode_runs_at(seq, errors)
    except ValueError as error:
        raise ValueError(f"sequence of {owner} (positions count from {offset}, where it starts): {error}") from None
    return runs, positions + offset


class PerClassTokenizer(StoredArguments):
    """Turns an (H, W) label map into C-1 binary run sequences, one per foreground class, and back.

    Args:
        mask_size, num_classes, starts, order, max_run, max_vocab: as for :class:`Tokenizer` (its
            "binary" scheme writes each class's runs).

    Attributes:
        vocab: the binary layout plus a "prompt" range, classes 1 .. C-1.
        prompts: (C-1,) the decoder's first input token of each class's sequence, in class order.
        binary: the binary :class:`Tokenizer` of one class's runs; its tokens are this one's.
    """

    task = "semantic"
    KIND, ARGUMENTS = "per_class", ("mask_size", "num_classes", "starts", "order", "max_run")

    def __init__(
        self,
        mask_size: tuple[int, int],
        num_classes: int,
        starts: str = "1d",
        order: str = "C",
        max_run: int | None = None,
        max_vocab: int = MAX_VOCAB,
    ):
        if num_classes < 2:
            raise ValueError(f"num_classes counts background and must be >= 2, got {num_classes}")
        self.binary = Tokenizer(mask_size, 2, "binary", starts, order, max_run, max_vocab=max_vocab)
        b = self.binary
        self.mask_size, self.num_classes, self.starts, self.order = b.mask_size, int(num_classes), starts, order
        self.max_run, self.grid, self.num_pixels = b.max_run, b.grid, b.num_pixels
        ranges = [(r.name, r.size, r.offset) for r in b.vocab.ranges.values()]
        layout = [*ranges, ("prompt", self.num_classes - 1, 1)]
        owner = (f"PerClassTokenizer(mask_size={self.mask_size}, num_classes={self.num_classes}, "
                 f"starts={starts!r}, max_run={self.max_run})")
        check_layout_size(owner, layout, self.num_pixels, max_vocab)
        self.vocab = Vocab(layout)
        self.run_format = RunFormat(self.vocab, starts, "binary", self.grid, self.max_run)
        self.slots, self.tokens_per_run = self.run_format.slots, self.run_format.tokens_per_run

    @property
    def bos(self) -> int:
        return self.vocab.bos[self.task]

    @property
    def prompts(self) -> tuple[int, ...]:
        return tuple(int(t) for t in self.vocab["prompt"].token(np.arange(1, self.num_classes)))

    def encode(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) label map -> the flat form: per foreground class in order, its runs' tokens and one EOS."""
        mask = check_label_map(mask, num_classes=self.num_classes)
        if mask.shape != self.mask_size:
            raise ValueError(f"mask has shape {mask.shape}, the tokenizer expects {self.mask_size}")
        return np.concatenate([self.binary.encode(mask == c) for c in range(1, self.num_classes)])

    def decode(self, tokens, errors: str = "strict") -> np.ndarray:
        """Flat form -> (H, W) label map, classes painted in order (a later class wins an overlap).

        errors="strict" raises ValueError on anything but C-1 well-formed binary sequences, each ending in
        EOS, followed by PAD only. errors="ignore" reads the first C-1 sequences (missing ones are empty)
        and keeps their well-formed runs.
        """
        flat = paint_runs(self.decode_runs(tokens, errors), self.num_pixels, label_dtype(self.num_classes))
        return flat.reshape(self.mask_size, order=self.order)

    def decode_runs(self, tokens, errors: str = "strict") -> Runs:
        """Flat form -> every class's runs, class by class, each run's class its sequence's."""
        return self.decode_runs_at(tokens, errors)[0]

    def decode_runs_at(self, tokens, errors: str = "strict") -> tuple[Runs, np.ndarray]:
        """(:meth:`decode_runs`, (R, tokens_per_run) positions in the flat form of each run's tokens)."""
        parts = [self._class_runs(c, seq, offset, errors) for c, seq, offset in self._sequences(tokens, errors)]
        if not parts:
            return Runs.empty(), np.zeros((0, self.tokens_per_run), np.int64)
        fields = ("starts", "lengths", "classes")
        runs = Runs(*(np.concatenate([getattr(r, name) for r, _ in parts]) for name in fields))
        return runs, np.concatenate([p for _, p in parts]).reshape(-1, self.tokens_per_run)

    def count_runs(self, tokens, errors: str = "ignore") -> tuple[int, int]:
        """(runs the C-1 sequences stand for, runs ``decode(errors="ignore")`` keeps), as for :class:`Tokenizer`."""
        counts = [self.binary.count_runs(seq, errors) for _, seq, _ in self._sequences(tokens, errors)]
        return tuple(int(sum(c[i] for c in counts)) for i in (0, 1))

    def grammar(self, batch_size: int) -> ImageGrammar:
        """Decoding states of ``batch_size`` rows, each one class's binary sequence (prompts are never
        generated)."""
        return ImageGrammar(self.run_format, batch_size)

    # ----------------------------------------------------------------------------- helpers
    def _sequences(self, tokens, errors: str) -> list[tuple[int, np.ndarray, int]]:
        """(class, its sequence, its offset in the flat form) of the C-1 classes (:func:`prompted_sequences`)."""
        return [(c + 1, seq, offset) for c, seq, offset in prompted_sequences(tokens, self.num_classes - 1, "class",
                                                                               errors)]

    def _class_runs(self, cls: int, seq: np.ndarray, offset: int, errors: str) -> tuple[Runs, np.ndarray]:
        """The runs of class ``cls``'s sequence ``seq``, which starts at ``offset`` in the flat form."""
        runs, positions = prompted_runs(self.binary, self.vocab["prompt"], seq, offset, errors, f"class {cls}")
        return Runs(runs.starts, runs.lengths, np.full_like(runs.classes, cls)), positions
