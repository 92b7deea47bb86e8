"""Band sequences: a label map as one run sequence per band of scan lines, decoded in parallel.

The mask's scan lines (rows for order "C", columns for "F") are cut into ``bands`` blocks of consecutive
lines; band b's sequence holds the runs inside its block (a run that crosses into the next block is cut
there), written as the image :class:`Tokenizer` writes them (1-D starts, any scheme and extent), then EOS.
As with per-class sequences, the model reads which band it writes from its first input token, a *prompt*
per band that takes BOS's place, and decodes an image's bands as rows of one batch: sequences about
1/bands as long, so about bands times fewer decoding steps per image.

The flat form that ``encode`` returns and ``decode`` takes is the sequences concatenated in band order,
each ending in its EOS (:func:`split_sequences` cuts it). Layout: the image tokenizer's ranges, then the
prompts, so that a run's tokens are the image tokenizer's::

    0 PAD, 1 EOS, 2-4 BOS per task, then the image tokenizer's ranges, prompts of bands 0 .. bands-1
"""

from __future__ import annotations

import numpy as np

from .grammar import ImageGrammar
from .prompted import PromptedTokenizer, prompted_runs
from .run_format import RunFormat
from .runs import Runs, mask_to_runs
from .tokenizer import Tokenizer
from .vocab import MAX_VOCAB, Vocab, check_layout_size


class BandTokenizer(PromptedTokenizer):
    """Turns an (H, W) label map into one run sequence per band of scan lines, and back.

    Args:
        mask_size, num_classes, scheme, order, max_run, extent, max_vocab: as for :class:`Tokenizer`
            (1-D starts: a start is a cell of the whole mask).
        bands: how many blocks of consecutive scan lines; band b holds lines
            ``b * lines // bands`` .. ``(b + 1) * lines // bands - 1``.

    Attributes:
        vocab: the image tokenizer's layout plus a "prompt" range, bands 0 .. bands-1.
        prompts: (bands,) the decoder's first input token of each band's sequence, in band order.
        cells: (bands, 2) the first and the stop (last + 1) flat cell of each band in scan order.
        image: the :class:`Tokenizer` of one band's runs; its tokens are this one's.
    """

    KIND, ARGUMENTS = "bands", ("mask_size", "num_classes", "scheme", "order", "max_run", "extent", "bands")
    noun = "band"

    def __init__(
        self,
        mask_size: tuple[int, int],
        num_classes: int,
        scheme: str = "lac",
        order: str = "C",
        max_run: int | None = None,
        extent: str = "length",
        bands: int = 2,
        max_vocab: int = MAX_VOCAB,
    ):
        self.image = Tokenizer(mask_size, num_classes, scheme, "1d", order, max_run, extent, max_vocab=max_vocab)
        im = self.image
        lines = im.grid[0]
        if not 1 <= int(bands) <= lines:
            raise ValueError(f"bands must be in 1 .. {lines} (the mask's scan lines), got {bands}")
        self.mask_size, self.num_classes, self.scheme, self.order = im.mask_size, im.num_classes, scheme, im.order
        self.starts, self.extent, self.bands = "1d", extent, int(bands)
        self.max_run, self.grid, self.num_pixels = im.max_run, im.grid, im.num_pixels
        edges = np.arange(self.bands + 1) * lines // self.bands * im.grid[1]
        self.cells = np.stack([edges[:-1], edges[1:]], axis=1)
        layout = [*((r.name, r.size, r.offset) for r in im.vocab.ranges.values()), ("prompt", self.bands, 0)]
        owner = f"BandTokenizer(mask_size={self.mask_size}, num_classes={self.num_classes}, bands={self.bands})"
        check_layout_size(owner, layout, self.num_pixels, max_vocab)
        self.vocab = Vocab(layout)
        self.run_format = RunFormat(self.vocab, "1d", scheme, self.grid, self.max_run, extent)
        self.slots, self.tokens_per_run = self.run_format.slots, self.run_format.tokens_per_run
        self.row_tokenizer = im

    @property
    def prompts(self) -> tuple[int, ...]:
        return tuple(int(t) for t in self.vocab["prompt"].token(np.arange(self.bands)))

    def encode(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) label map -> the flat form: per band in order, its runs' tokens and one EOS."""
        flat = self.image.check_mask(mask).reshape(-1, order=self.order)
        sequences = []
        for first, stop in self.cells:
            band = np.zeros_like(flat)
            band[first:stop] = flat[first:stop]
            runs = mask_to_runs(band.reshape(self.mask_size, order=self.order), self.order, self.max_run)
            sequences.append(self.image.encode_runs(runs))
        return np.concatenate(sequences)

    def grammar(self, batch_size: int) -> ImageGrammar:
        """Decoding states of ``batch_size`` rows, the bands of each image adjacent (row r writes band
        r % bands) and its runs kept to that band's cells (prompts are never generated)."""
        if batch_size % self.bands:
            raise ValueError(f"{batch_size} rows are not whole images of {self.bands} band sequences")
        cells = np.tile(self.cells, (batch_size // self.bands, 1))
        return ImageGrammar(self.run_format, batch_size, first=cells[:, 0], stop=cells[:, 1])

    def _sequence_runs(self, band: int, seq: np.ndarray, offset: int, errors: str) -> tuple[Runs, np.ndarray]:
        """The runs of band ``band``'s sequence inside the band (strict: an error for one outside)."""
        runs, positions = prompted_runs(self.image, self.vocab["prompt"], seq, offset, errors, self.noun, band)
        first, stop = self.cells[band]
        outside = (runs.starts < first) | (runs.starts + runs.lengths > stop)
        if errors == "strict" and outside.any():
            i = int(np.flatnonzero(outside)[0])
            end = int(runs.starts[i] + runs.lengths[i] - 1)
            raise ValueError(f"sequence of band {band}: run {i} covers cells {runs.starts[i]} .. {end}, outside the "
                             f"band's cells {first} .. {stop - 1}")
        return runs[~outside], positions[~outside]
