"""The tokenizer interface, written down once, and ``from_dict`` to rebuild any tokenizer.

Code above ``rleseg.tokens`` (models, data, inference, training) relies on :class:`MaskTokenizer` and
nothing more; ``tokenizer.task`` says which maps ``encode`` takes and ``decode`` gives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from .bands import BandTokenizer
from .grammar import Grammar
from .panoptic import PanopticTokenizer
from .per_class import PerClassTokenizer
from .runs import Runs
from .tokenizer import Tokenizer
from .video import VideoTokenizer
from .vocab import Vocab


@runtime_checkable
class MaskTokenizer(Protocol):
    """Masks <-> token sequences; :class:`Tokenizer`, :class:`PerClassTokenizer`, :class:`BandTokenizer`,
    :class:`PanopticTokenizer` and :class:`VideoTokenizer` all are one.

    A sequence (``tokens``) is any 1-D integer sequence (list, numpy array, CPU tensor): the runs'
    tokens, then EOS, then only PAD; the model writes the task's BOS before it.

    Attributes:
        task: "semantic", "panoptic" or "video" (one of ``TASKS``): which maps ``encode`` takes and
            ``decode`` gives back.
        mask_size: (H, W) of the (already subsampled) maps; a video's frames are each (H, W).
        num_classes: C, background 0 included.
        vocab: the token layout; ``vocab.size`` rows of the model's embedding.
        bos: the task's BOS token (``vocab.bos[task]``).
        prompts: the decoder's first input token of each sequence a mask becomes, in order: ``(bos,)``, or
            per foreground class (:class:`PerClassTokenizer`) or per band of scan lines
            (:class:`BandTokenizer`) its prompt token; their flat form, which ``encode`` gives and ``decode``
            takes, is the sequences concatenated, each ending in its EOS.
        order: raster order of the flattening, "C" (row-major) or "F" (column-major); runs' flat starts
            count in it.
        grid: (major, minor) of the scan grid the flat starts index: (H, W) for order "C", (W, H) for "F";
            a volume video stacks its frames along the major axis.
        tokens_per_run: the tokens of one run (a panoptic group's closing class token is extra).
        encode: the maps of one sample -> (T,) int64 tokens, the runs' tokens then one EOS (no BOS, no
            padding; per-class and bands: one such sequence per class / band, concatenated). semantic: an (H, W)
            label map; panoptic: (H, W) classes and (H, W) instance ids; video: an (N, H, W) label volume.
            Its arguments depend on the task, hence ``Callable[...]``.
    """

    task: str
    mask_size: tuple[int, int]
    num_classes: int
    vocab: Vocab
    order: str
    grid: tuple[int, int]
    encode: Callable[..., np.ndarray]

    @property
    def bos(self) -> int: ...

    @property
    def prompts(self) -> tuple[int, ...]: ...

    @property
    def tokens_per_run(self) -> int: ...

    def decode(self, tokens, errors: str = "strict") -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Tokens -> the maps ``encode`` takes: an (H, W) label map, (semantic, instances) (H, W) each,
        or an (N, H, W) volume. errors="strict" raises ValueError naming the first malformed token;
        errors="ignore" never raises on a 1-D integer sequence and keeps the well-formed runs."""
        ...

    def decode_runs(self, tokens, errors: str = "strict") -> Runs:
        """Tokens -> every run the sequence stands for, in sequence order; ``errors`` as for ``decode``.
        Flat starts in ``order`` over the map the runs paint: the (H, W) mask, or for video the stacked
        volume or TAC map; a panoptic run's class is its group's."""
        ...

    def decode_runs_at(self, tokens, errors: str = "strict") -> tuple[Runs, np.ndarray]:
        """(``decode_runs``, (R, m) int64 positions in ``tokens`` of the tokens that say each run: its
        ``tokens_per_run`` tokens, and for panoptic its group's class token last)."""
        ...

    def count_runs(self, tokens, errors: str = "ignore") -> tuple[int, int]:
        """(runs a generated sequence stands for, runs ``decode(errors="ignore")`` keeps); the difference
        is what the lenient decoder dropped as malformed. ``errors="strict"``: the caller decoded the
        sequence strictly, so every run is kept and it is not decoded again."""
        ...

    def grammar(self, batch_size: int) -> Grammar:
        """Decoding states for a batch: the tokens allowed next (constrained decoding)."""
        ...

    def to_dict(self) -> dict:
        """The arguments and vocabulary layout as plain data (a checkpoint stores it); see ``from_dict``."""
        ...


def from_dict(data: dict) -> Tokenizer | PerClassTokenizer | BandTokenizer | PanopticTokenizer | VideoTokenizer:
    """Rebuild a tokenizer from its ``to_dict()``, whatever its type ("image", "per_class", "bands", "video"
    or "panoptic")."""
    kind = data.get("type", "image") if isinstance(data, dict) else None
    kinds = (Tokenizer, PerClassTokenizer, BandTokenizer, VideoTokenizer, PanopticTokenizer)
    classes = {cls.KIND: cls for cls in kinds}
    if kind not in classes:
        raise ValueError(f"unknown tokenizer type {kind!r}; expected one of {', '.join(map(repr, classes))}")
    return classes[kind].from_dict(data)
