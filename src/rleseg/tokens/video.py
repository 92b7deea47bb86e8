"""Video mask tokenizer: a window of N frames as one token sequence, by volume or time-as-class (TAC).

Two temporal encodings, each combined with any image scheme ("lac", "class", "binary") and start mode:

- ``temporal="volume"``: the (N, H, W) label volume flattened frame-major and run-length encoded as one
  mask. This is exactly the image tokenizer on the frames stacked along the major scan axis: an
  (N*H, W) map for order "C", an (H, N*W) map for order "F". Runs may continue from one frame into the
  next. 1-D starts range over N*H*W values; 2-D starts are (frame * H + row, col) for "C" and
  (frame * W + col, row) for "F", i.e. the coordinates in the stacked map: still two tokens per start,
  from one range of max(N*H, W) (resp. max(N*W, H)) values.
- ``temporal="tac"``: each pixel's N labels become one id ``sum_t C**t * c_t`` (frame 0 least
  significant, a base-C number whose digit t is the class in frame t), and the single (H, W) map with
  C**N classes is encoded by the image tokenizer. Id 0 (background in every frame) is never encoded; a
  region that stays the same over the window costs one run instead of N. With ``scheme="lac"`` this is
  LTAC: one token value per (class tuple, length), ``L * (id - 1) + length``. ``scheme="binary"`` needs a
  two-class TAC map, i.e. only N = 1 with C = 2.

Windows are subsampled like images, with ``downsample_mask`` (it takes (N, H, W) stacks), before encoding.
The vocabulary a configuration needs is computed (in exact integers) before anything is built; above
``max_vocab`` the constructor raises ValueError with the size and the alternatives that would fit.

    >>> import numpy as np
    >>> tok = VideoTokenizer(frames=2, mask_size=(2, 3), num_classes=2, temporal="tac", scheme="lac")
    >>> video = np.array([[[0, 1, 1], [0, 0, 0]], [[0, 1, 1], [0, 0, 1]]])
    >>> # runs: start 1, LTAC 3*(3-1)+2 (id 3 = class 1 in both frames, length 2);
    >>> #       start 5, LTAC 3*(2-1)+1 (id 2 = class 1 in frame 1 only, length 1)
    >>> tok.encode(video).tolist()
    [15, 12, 19, 8, 1]
    >>> bool((tok.decode(tok.encode(video)) == video).all())
    True
"""

from __future__ import annotations

import math

import numpy as np

from .grammar import ImageGrammar
from .runs import Runs, check_label_map, check_order, default_max_run, label_dtype
from .stored import StoredArguments
from .tokenizer import SCHEMES, Tokenizer, check_starts
from .vocab import MAX_VOCAB, NUM_SPECIAL

TEMPORAL = ("volume", "tac")
DEFAULT_MAX_VOCAB = 262_144
_INT64_MAX = np.iinfo(np.int64).max


def _check_tac_base(frames: int, num_classes: int) -> int:
    # The logarithm first: num_classes ** frames itself takes seconds to compute for millions of frames.
    too_many = int(frames) * math.log2(max(int(num_classes), 1)) > 64
    classes = 0 if too_many else int(num_classes) ** int(frames)
    if too_many or classes - 1 > _INT64_MAX:
        raise ValueError(
            f"TAC ids of {frames} frames with {num_classes} classes reach {num_classes}**{frames} - 1, "
            f"beyond int64; use fewer frames or temporal='volume'"
        )
    return classes


def video_to_tac(video: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, ...) label maps -> int64 TAC ids of shape (...): ``sum_t num_classes**t * video[t]``.

    Frame 0 is the least significant digit. Raises ValueError if a label is >= num_classes or if
    num_classes**N does not fit in int64.
    """
    video = check_label_map(video, ndim=np.ndim(video), name="video", num_classes=num_classes)
    if video.ndim < 1 or video.shape[0] < 1:
        raise ValueError(f"video must have a leading frame axis of length >= 1, got shape {video.shape}")
    _check_tac_base(video.shape[0], num_classes)
    tac = np.zeros(video.shape[1:], dtype=np.int64)
    for frame in video[::-1]:  # Horner's rule over frames (N is small), most significant frame first
        tac = tac * num_classes + frame.astype(np.int64)
    return tac


def tac_to_video(tac: np.ndarray, frames: int, num_classes: int) -> np.ndarray:
    """TAC ids of shape (...) -> (frames, ...) labels, the inverse of :func:`video_to_tac`.

    The result has the smallest unsigned dtype that holds num_classes labels (uint8 up to 256).
    Raises ValueError on ids outside 0 .. num_classes**frames - 1.
    """
    total = _check_tac_base(frames, num_classes)
    tac = np.asarray(tac)
    if tac.size and not np.issubdtype(tac.dtype, np.integer):
        raise ValueError(f"TAC ids must be integers, got dtype {tac.dtype}")
    tac = tac.astype(np.int64)
    if tac.size and (int(tac.min()) < 0 or int(tac.max()) > total - 1):
        raise ValueError(f"TAC ids must lie in 0 .. {total - 1} ({num_classes}**{frames} - 1)")
    out = np.empty((frames, *tac.shape), dtype=label_dtype(num_classes))
    for t in range(frames):
        tac, out[t] = np.divmod(tac, num_classes)
    return out


def video_vocab_size(frames: int, mask_size: tuple[int, int], num_classes: int, temporal: str = "tac",
                     scheme: str = "lac", starts: str = "1d", order: str = "C", max_run: int | None = None) -> int:
    """The vocabulary size (special tokens included) a VideoTokenizer configuration needs, exactly.

    Computed with Python integers, so it is safe for configurations far too large to build.
    """
    height, width = (int(v) for v in mask_size)
    if temporal not in TEMPORAL:
        raise ValueError(f"temporal must be one of {TEMPORAL}, got {temporal!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    check_starts(starts, "video")
    frames = int(frames)
    run = default_max_run((height, width), order) if max_run is None else int(max_run)
    if temporal == "volume":
        classes = int(num_classes)
        grid = (frames * height, width) if order == "C" else (frames * width, height)
    else:
        classes = int(num_classes) ** frames
        grid = (height, width) if order == "C" else (width, height)
    # Mirrors Tokenizer._layout; a test checks the two agree on every buildable configuration.
    values = {"lac": run * (classes - 1), "class": (classes - 1) + run, "binary": run}[scheme]
    start_values = grid[0] * grid[1] if starts == "1d" else max(grid)
    return NUM_SPECIAL + values + start_values


class VideoTokenizer(StoredArguments):
    """Turns an (N, H, W) window of label maps into one token sequence and back.

    Args:
        frames: N, the frames per window.
        mask_size: (H, W) of each (already subsampled) frame.
        num_classes: C, background 0 included.
        temporal: "volume" or "tac" (see the module docstring).
        scheme: "lac", "class" or "binary", as for :class:`Tokenizer`; under TAC the classes are the
            C**N TAC ids.
        starts: "1d" or "2d" (for volume: coordinates in the stacked frames, see the module docstring).
        order: raster order inside each frame, "C" or "F"; frames always come one after the other.
        max_run: longest run L; default one row of a frame in scan order (W for "C", H for "F").
        max_vocab: refuse configurations whose vocabulary exceeds this many tokens (the embedding
            table grows with it).

    Attributes:
        image: the image :class:`Tokenizer` that encodes the stacked volume or the TAC map; ``vocab``,
            ``slots``, ``grid`` and ``tokens_per_run`` are its.
        vocab: the token layout, shared with ``image``; ``bos`` is its video BOS.
    """

    task = "video"
    KIND = "video"
    ARGUMENTS = ("frames", "mask_size", "num_classes", "temporal", "scheme", "starts", "order", "max_run", "max_vocab")

    def __init__(
        self,
        frames: int,
        mask_size: tuple[int, int],
        num_classes: int,
        temporal: str = "tac",
        scheme: str = "lac",
        starts: str = "1d",
        order: str = "C",
        max_run: int | None = None,
        max_vocab: int = DEFAULT_MAX_VOCAB,
    ):
        if int(frames) != frames or frames < 1:
            raise ValueError(f"frames must be a positive integer, got {frames!r}")
        height, width = (int(v) for v in mask_size)
        if height < 1 or width < 1:
            raise ValueError(f"mask_size must be two positive integers, got {tuple(mask_size)}")
        if num_classes < 2:
            raise ValueError(f"num_classes counts background and must be >= 2, got {num_classes}")
        check_order(order)
        self.frames, self.mask_size, self.num_classes = int(frames), (height, width), int(num_classes)
        self.temporal, self.scheme, self.starts, self.order = temporal, scheme, starts, order
        self.max_run = default_max_run(self.mask_size, order) if max_run is None else int(max_run)
        if self.max_run < 1:
            raise ValueError(f"max_run must be >= 1, got {max_run}")
        self.max_vocab = int(max_vocab)
        if temporal == "tac":
            _check_tac_base(self.frames, self.num_classes)
        size = self._vocab_size(temporal=temporal, scheme=scheme, starts=starts)
        if temporal == "tac" and scheme == "binary" and self.num_classes**self.frames != 2:
            raise ValueError(
                f"scheme 'binary' under temporal='tac' needs a two-class TAC map (frames=1, num_classes=2); "
                f"{self.frames} frames of {self.num_classes} classes give {self.num_classes**self.frames} "
                f"TAC classes: use scheme='class' or 'lac', or temporal='volume'"
            )
        if size > self.max_vocab:
            raise ValueError(self._infeasible_message(size))
        # The vocabulary is checked above; the image tokenizer's own ceiling still bounds the mask's cells.
        ceiling = max(self.max_vocab, MAX_VOCAB)
        if temporal == "volume":
            stacked = (self.frames * height, width) if order == "C" else (height, self.frames * width)
            self.image = Tokenizer(stacked, self.num_classes, scheme, starts, order, self.max_run, max_vocab=ceiling)
        else:
            classes = self.num_classes**self.frames
            self.image = Tokenizer(self.mask_size, classes, scheme, starts, order, self.max_run, max_vocab=ceiling)
        assert self.image.vocab.size == size, "video_vocab_size disagrees with the image tokenizer layout"
        self.vocab = self.image.vocab

    # ----------------------------------------------------------------------------- vocabulary check
    def _vocab_size(self, **changes) -> int:
        args = {"temporal": self.temporal, "scheme": self.scheme, "starts": self.starts, "frames": self.frames}
        args.update(changes)
        return video_vocab_size(
            args["frames"], self.mask_size, self.num_classes, args["temporal"], args["scheme"], args["starts"],
            self.order, self.max_run,
        )

    def _most_frames(self) -> int:
        """The most frames below ``frames`` whose vocabulary fits ``max_vocab`` (0: none); the vocabulary grows
        with the frames, so a bisection finds it (TAC ids stop fitting int64 after 64 frames anyway)."""
        low, high = 0, min(self.frames - 1, 64) if self.temporal == "tac" else self.frames - 1
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if self._vocab_size(frames=middle) <= self.max_vocab else (low, middle - 1)
        return low

    def _infeasible_message(self, size: int) -> str:
        alternatives = []
        fewer = self._most_frames()
        if fewer:
            alternatives.append(f"frames={fewer} (vocab {self._vocab_size(frames=fewer):,})")
        for name, value in (("scheme", "class"), ("starts", "2d"), ("temporal", "volume")):
            if getattr(self, name) != value:
                changed = self._vocab_size(**{name: value})
                if changed <= self.max_vocab:
                    alternatives.append(f"{name}={value!r} (vocab {changed:,})")
        hint = "; workable alternatives: " + ", ".join(alternatives) if alternatives else (
            "; no single change fits: combine scheme='class', starts='2d' and fewer frames"
        )
        what = "LTAC" if (self.temporal, self.scheme) == ("tac", "lac") else f"{self.temporal}/{self.scheme}"
        return (
            f"VideoTokenizer({what}, frames={self.frames}, num_classes={self.num_classes}, mask_size="
            f"{self.mask_size}, max_run={self.max_run}, starts={self.starts!r}) needs a vocabulary of {size:,} "
            f"tokens, above max_vocab={self.max_vocab:,}{hint}"
        )

    # ----------------------------------------------------------------------------- image tokenizer view
    @property
    def bos(self) -> int:
        return self.vocab.bos[self.task]

    @property
    def slots(self) -> tuple[str, ...]:
        return self.image.slots

    @property
    def tokens_per_run(self) -> int:
        return self.image.tokens_per_run

    @property
    def grid(self) -> tuple[int, int]:
        return self.image.grid

    # ----------------------------------------------------------------------------- encode / decode
    def check_video(self, video: np.ndarray) -> np.ndarray:
        video = check_label_map(video, ndim=3, name="video", num_classes=self.num_classes)
        expected = (self.frames, *self.mask_size)
        if video.shape != expected:
            raise ValueError(f"video has shape {video.shape}, the tokenizer expects (frames, H, W) = {expected}")
        return video

    def image_map(self, video: np.ndarray) -> np.ndarray:
        """The 2-D map the image tokenizer encodes: the stacked frames (volume) or the TAC ids (tac)."""
        video = self.check_video(video)
        if self.temporal == "tac":
            return video_to_tac(video, self.num_classes)
        if self.order == "C":
            return video.reshape(self.frames * self.mask_size[0], self.mask_size[1])  # (N*H, W)
        # (H, N*W): frames side by side, so the column-major flattening is frame-major
        return video.transpose(1, 0, 2).reshape(self.mask_size[0], self.frames * self.mask_size[1])

    def encode(self, video: np.ndarray) -> np.ndarray:
        """(N, H, W) label volume -> int64 tokens: the runs' tokens followed by one EOS (no BOS)."""
        return self.image.encode(self.image_map(video))

    def decode(self, tokens, errors: str = "strict") -> np.ndarray:
        """Tokens -> (N, H, W) labels (uint8 up to 256 classes). ``errors`` as for :meth:`Tokenizer.decode`."""
        flat = self.image.decode(tokens, errors)
        height, width = self.mask_size
        if self.temporal == "tac":
            return tac_to_video(flat, self.frames, self.num_classes)
        if self.order == "C":
            return flat.reshape(self.frames, height, width)
        return flat.reshape(height, self.frames, width).transpose(1, 0, 2)

    def decode_runs(self, tokens, errors: str = "strict") -> Runs:
        """Tokens -> the runs of the map the image tokenizer encodes (the stacked volume, flat starts
        frame-major; or the TAC map, classes the TAC ids). ``errors`` as for :meth:`Tokenizer.decode`."""
        return self.image.decode_runs(tokens, errors)

    def decode_runs_at(self, tokens, errors: str = "strict") -> tuple[Runs, np.ndarray]:
        """(:meth:`decode_runs`, the positions of each run's tokens), as :meth:`Tokenizer.decode_runs_at`."""
        return self.image.decode_runs_at(tokens, errors)

    def count_runs(self, tokens, errors: str = "ignore") -> tuple[int, int]:
        """As :meth:`Tokenizer.count_runs`: a video sequence is its image tokenizer's."""
        return self.image.count_runs(tokens, errors)

    # ----------------------------------------------------------------------------- misc
    def grammar(self, batch_size: int) -> ImageGrammar:
        """Constrained decoding: the image grammar of the stacked volume or TAC map."""
        return ImageGrammar(self.image.run_format, batch_size)
