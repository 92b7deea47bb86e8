"""rleseg.tokens: segmentation masks as run-length-encoded token sequences (numpy only, no torch).

Token layout (``Tokenizer.vocab``), laid out contiguously from the arguments::

    0                  PAD
    1                  EOS (distinct from PAD)
    2, 3, 4            BOS per task: semantic, panoptic, video
    then, by scheme    lac:    LAC values 1 .. L*(C-1)          (lac = L*(class-1) + length)
                       class:  classes 1 .. C-1, lengths 1 .. L
                       binary: lengths 1 .. L
    last               starts: flat indices 0 .. H*W-1 ("1d") or coordinates 0 .. max(H, W)-1 ("2d")

Tokens per run::

    scheme   1d starts               2d starts
    binary   start length            major minor length
    class    start length class      major minor length class
    lac      start lac               major minor lac

A sequence is the runs' tokens, sorted by start, followed by one EOS. Background (0) is never encoded;
runs longer than L = max_run (default one row) are split. Example::

    >>> import numpy as np
    >>> from rleseg.tokens import Tokenizer
    >>> tok = Tokenizer(mask_size=(2, 3), num_classes=3, scheme="lac")
    >>> mask = np.array([[0, 1, 1], [2, 2, 0]])
    >>> tok.encode(mask).tolist()        # start 1, lac 2 (class 1, length 2); start 3, lac 5 (class 2, length 2)
    [12, 6, 14, 9, 1]
    >>> bool((tok.decode(tok.encode(mask)) == mask).all())
    True

Tokenizer, PerClassTokenizer (one binary sequence per foreground class, per_class.py), BandTokenizer
(one sequence per band of scan lines, bands.py), PanopticTokenizer and
VideoTokenizer each are a ``MaskTokenizer`` (protocol.py), the one
interface code above this package relies on (``tokenizer.task`` says which maps it encodes);
``from_dict`` rebuilds any of them from its ``to_dict()``.
"""

from .bands import BandTokenizer
from .grammar import Grammar, ImageGrammar
from .panoptic import PanopticGroup, PanopticTokenizer
from .panoptic_grammar import PanopticGrammar
from .per_class import PerClassTokenizer
from .prompted import split_sequences
from .protocol import MaskTokenizer, from_dict
from .runs import Runs, downsample_mask, mask_to_runs, runs_to_mask, upsample_mask
from .tokenizer import Tokenizer
from .video import VideoTokenizer, tac_to_video, video_to_tac, video_vocab_size
from .vocab import EOS, PAD, TASKS, TokenRange, Vocab

__all__ = [
    "EOS",
    "PAD",
    "TASKS",
    "BandTokenizer",
    "Grammar",
    "ImageGrammar",
    "MaskTokenizer",
    "PanopticGrammar",
    "PanopticGroup",
    "PanopticTokenizer",
    "PerClassTokenizer",
    "Runs",
    "TokenRange",
    "Tokenizer",
    "VideoTokenizer",
    "Vocab",
    "downsample_mask",
    "from_dict",
    "mask_to_runs",
    "runs_to_mask",
    "split_sequences",
    "tac_to_video",
    "upsample_mask",
    "video_to_tac",
    "video_vocab_size",
]
