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
from .prompted import PromptedTokenizer, prompted_runs
from .run_format import RunFormat
from .runs import Runs, check_label_map
from .tokenizer import Tokenizer
from .vocab import MAX_VOCAB, Vocab, check_layout_size


class PerClassTokenizer(PromptedTokenizer):
    """Turns an (H, W) label map into C-1 binary run sequences, one per foreground class, and back.

    Args:
        mask_size, num_classes, starts, order, max_run, max_vocab: as for :class:`Tokenizer` (its
            "binary" scheme writes each class's runs).

    Attributes:
        vocab: the binary layout plus a "prompt" range, classes 1 .. C-1.
        prompts: (C-1,) the decoder's first input token of each class's sequence, in class order.
        binary: the binary :class:`Tokenizer` of one class's runs; its tokens are this one's.
    """

    KIND, ARGUMENTS = "per_class", ("mask_size", "num_classes", "starts", "order", "max_run")
    noun = "class"

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
        self.row_tokenizer = b

    @property
    def prompts(self) -> tuple[int, ...]:
        return tuple(int(t) for t in self.vocab["prompt"].token(np.arange(1, self.num_classes)))

    def encode(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) label map -> the flat form: per foreground class in order, its runs' tokens and one EOS."""
        mask = check_label_map(mask, num_classes=self.num_classes)
        if mask.shape != self.mask_size:
            raise ValueError(f"mask has shape {mask.shape}, the tokenizer expects {self.mask_size}")
        return np.concatenate([self.binary.encode(mask == c) for c in range(1, self.num_classes)])

    def grammar(self, batch_size: int) -> ImageGrammar:
        """Decoding states of ``batch_size`` rows, each one class's binary sequence (prompts are never
        generated)."""
        return ImageGrammar(self.run_format, batch_size)

    # ----------------------------------------------------------------------------- helpers
    def _sequence_runs(self, index: int, seq: np.ndarray, offset: int, errors: str) -> tuple[Runs, np.ndarray]:
        """The runs of class ``index + 1``'s sequence, each run's class that class."""
        cls = index + 1
        runs, positions = prompted_runs(self.binary, self.vocab["prompt"], seq, offset, errors, self.noun, cls)
        return Runs(runs.starts, runs.lengths, np.full_like(runs.classes, cls)), positions
