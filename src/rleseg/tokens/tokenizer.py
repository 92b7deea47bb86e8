"""The image mask tokenizer: label map <-> run tokens, for every scheme of the paper."""

from __future__ import annotations

import numbers

import numpy as np

from .grammar import ImageGrammar
from .run_format import EXTENTS, START_SLOTS, RunFormat
from .runs import Runs, check_label_map, check_order, default_max_run, label_dtype, mask_to_runs, paint_runs
from .stored import StoredArguments
from .vocab import EOS, MAX_VOCAB, PAD, Vocab, check_layout_size

SCHEMES = ("lac", "class", "binary")
START_MODES = ("1d", "2d")
# Start modes that were measured, found no help and removed: the commit that still has each.
RETIRED_START_MODES = {"relative": "a540f6c"}
_INT64 = np.iinfo(np.int64)


def check_starts(starts: str, owner: str = "") -> None:
    """ValueError unless ``starts`` is one of ``START_MODES``; ``owner`` ("video", "panoptic") prefixes
    the message. A retired mode (a stored tokenizer's, say) is named as such."""
    prefix = f"{owner} " if owner else ""
    if isinstance(starts, str) and starts in RETIRED_START_MODES:
        choices = " or ".join(map(repr, START_MODES))
        raise ValueError(f"{prefix}starts {starts!r} was retired (measured no help, docs/results.md); rleseg at "
                         f"commit {RETIRED_START_MODES[starts]} still has it; choose {choices}")
    if starts not in START_MODES:
        raise ValueError(f"{prefix}starts must be one of {START_MODES}, got {starts!r}")


def parse_tokens(tokens, strict: bool = True) -> np.ndarray:
    """Any 1-D integer sequence (list, numpy array, CPU tensor) as an int64 array.

    An integer outside int64 (a big Python int, a uint64 above 2**63 - 1) is no token of any vocabulary:
    strict decoding names the first one with its value, lenient decoding reads it as -1, an
    out-of-vocabulary token that it drops like any other.
    """
    array = np.asarray(tokens)
    if array.dtype.kind in "fO" and not hasattr(tokens, "dtype"):
        array = np.asarray(tokens, dtype=object)  # Python ints past int64 would become floats or objects
    if array.ndim != 1:
        raise ValueError(f"tokens must be a 1-D sequence, got shape {array.shape}")
    if array.dtype.kind == "O":
        wrong = next((i for i, v in enumerate(array) if not isinstance(v, numbers.Integral)), None)
        if wrong is not None:
            raise ValueError(f"tokens must be integers, got {type(array[wrong]).__name__} {array[wrong]!r} at "
                             f"position {wrong}")
        outside = np.array([not _INT64.min <= int(v) <= _INT64.max for v in array], dtype=bool)
        values = np.array([-1 if out else int(v) for v, out in zip(array, outside, strict=True)], dtype=np.int64)
    elif array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {array.dtype}")
    else:
        outside = array > _INT64.max if array.dtype == np.uint64 else np.zeros(array.shape, dtype=bool)
        values = np.where(outside, -1, array.astype(np.int64, copy=False))
    if strict and outside.any():
        pos = int(np.flatnonzero(outside)[0])
        raise ValueError(f"token {int(array[pos])} at position {pos} is an out-of-vocabulary token (outside int64)")
    return values


def split_at_eos(tokens: np.ndarray, strict: bool) -> np.ndarray:
    """The body before the first EOS; strict mode also demands an EOS followed by padding only."""
    eos = np.flatnonzero(tokens == EOS)
    if not strict:
        return tokens[: eos[0]] if eos.size else tokens
    if eos.size == 0:
        raise ValueError(f"no EOS token ({EOS}) in a sequence of {tokens.size} tokens")
    tail = tokens[eos[0] + 1 :]
    if np.any(tail != PAD):
        bad = eos[0] + 1 + int(np.flatnonzero(tail != PAD)[0])
        raise ValueError(f"token {tokens[bad]} at position {bad} follows EOS; only PAD ({PAD}) may follow it")
    return tokens[: eos[0]]


def read_body(tokens, errors: str) -> tuple[np.ndarray, bool]:
    """(the tokens before EOS, whether decoding is strict) of a sequence decoded with ``errors``."""
    if errors not in ("strict", "ignore"):
        raise ValueError(f"errors must be 'strict' or 'ignore', got {errors!r}")
    strict = errors == "strict"
    return split_at_eos(parse_tokens(tokens, strict), strict), strict


class Tokenizer(StoredArguments):
    """Turns an (H, W) label map into run tokens and back.

    Args:
        mask_size: (H, W) of the (already subsampled) masks it encodes.
        num_classes: C, background 0 included.
        scheme: "lac" (length and class fused in one token), "class" (separate length and class
            tokens) or "binary" (C = 2; no class token).
        starts: "1d" (one token, the flat index) or "2d" (two tokens from one shared coordinate range:
            the major then the minor coordinate of the start in scan order, i.e. (row, col) for
            order "C" and (col, row) for order "F").
        order: raster order of the flattening, "C" or "F".
        max_run: longest run L; default one row in scan order (W for "C", H for "F").
        extent: how a run's extent is written: "length" (the paper's) or "end", its last cell as a flat
            index (needs 1-D starts), so that a pointer head can choose it from the image like the start;
            with "lac" the end and the class are fused into one "end_class" token of H*W*(C-1) values.
        max_vocab: refuse layouts of more tokens, or masks of more cells, than this (``vocab.MAX_VOCAB``);
            not stored with the tokenizer: a stored one is rebuilt under the default.

    Attributes:
        vocab: the token layout; ``bos`` is its semantic BOS.
        run_format: how one run is written as tokens; ``slots`` and ``tokens_per_run`` are its.
        grid: the (major, minor) scan grid, (H, W) for order "C" and (W, H) for "F".
    """

    task = "semantic"
    KIND, ARGUMENTS = "image", ("mask_size", "num_classes", "scheme", "starts", "order", "max_run", "extent")

    def __init__(
        self,
        mask_size: tuple[int, int],
        num_classes: int,
        scheme: str = "lac",
        starts: str = "1d",
        order: str = "C",
        max_run: int | None = None,
        extent: str = "length",
        max_vocab: int = MAX_VOCAB,
    ):
        height, width = (int(v) for v in mask_size)
        if height < 1 or width < 1:
            raise ValueError(f"mask_size must be two positive integers, got {tuple(mask_size)}")
        if num_classes < 2:
            raise ValueError(f"num_classes counts background and must be >= 2, got {num_classes}")
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        if scheme == "binary" and num_classes != 2:
            raise ValueError(f"scheme 'binary' needs num_classes == 2, got {num_classes}; use 'lac' or 'class'")
        check_starts(starts)
        if extent not in EXTENTS:
            raise ValueError(f"extent must be one of {EXTENTS}, got {extent!r}")
        if extent == "end" and starts != "1d":
            raise ValueError(f"extent 'end' writes a run's last cell like a 1-D start: it needs starts '1d', "
                             f"got {starts!r}")
        self.mask_size = (height, width)
        self.num_classes = int(num_classes)
        self.scheme, self.starts, self.order, self.extent = scheme, starts, check_order(order), extent
        self.max_run = default_max_run(self.mask_size, order) if max_run is None else int(max_run)
        if self.max_run < 1:
            raise ValueError(f"max_run must be >= 1, got {max_run}")
        # Scan grid: the mask as seen in scan order, (major, minor) = (H, W) for "C", (W, H) for "F".
        self.grid = (height, width) if order == "C" else (width, height)
        self.num_pixels = height * width
        layout = self._layout()
        owner = (f"Tokenizer(mask_size={self.mask_size}, num_classes={self.num_classes}, scheme={scheme!r}, "
                 f"starts={starts!r}, max_run={self.max_run}{'' if extent == 'length' else f', extent={extent!r}'})")
        check_layout_size(owner, layout, self.num_pixels, max_vocab)
        self.vocab = Vocab(layout)
        self.run_format = RunFormat(self.vocab, starts, scheme, self.grid, self.max_run, extent)
        self.slots, self.tokens_per_run = self.run_format.slots, self.run_format.tokens_per_run

    def _layout(self) -> list[tuple[str, int, int]]:
        foreground = self.num_classes - 1
        if self.extent == "end":  # the end range right before the start range: the pointer rows are contiguous
            if self.scheme == "lac":
                value_ranges = [("end_class", self.num_pixels * foreground, 0)]
            else:
                value_ranges = [("class", foreground, 1)] * (self.scheme == "class") + [("end", self.num_pixels, 0)]
        elif self.scheme == "lac":
            value_ranges = [("lac", self.max_run * foreground, 1)]
        elif self.scheme == "class":
            value_ranges = [("class", foreground, 1), ("length", self.max_run, 1)]
        else:
            value_ranges = [("length", self.max_run, 1)]
        start_values = max(self.grid) if self.starts == "2d" else self.num_pixels
        return [*value_ranges, (START_SLOTS[self.starts][0], start_values, 0)]

    @property
    def bos(self) -> int:
        return self.vocab.bos[self.task]

    # ----------------------------------------------------------------------------- encode
    def check_mask(self, mask: np.ndarray) -> np.ndarray:
        mask = check_label_map(mask, num_classes=self.num_classes)
        if mask.shape != self.mask_size:
            raise ValueError(f"mask has shape {mask.shape}, the tokenizer expects {self.mask_size}")
        return mask

    def encode(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) label map -> int64 tokens: the runs' tokens followed by one EOS (no BOS, no padding)."""
        mask = self.check_mask(mask)
        return self.encode_runs(mask_to_runs(mask, self.order, self.max_run))

    def encode_runs(self, runs: Runs) -> np.ndarray:
        """Runs (flat starts in this tokenizer's order) -> tokens + EOS."""
        return np.append(self.run_format.encode(runs).reshape(-1), EOS).astype(np.int64)

    # ----------------------------------------------------------------------------- decode
    def decode(self, tokens, errors: str = "strict") -> np.ndarray:
        """Tokens -> (H, W) label map (uint8, or uint16 beyond 256 classes).

        errors="strict" raises ValueError naming the first malformed token and why. errors="ignore"
        never raises on a 1-D integer sequence: it reads up to the first EOS, keeps every run whose
        tokens have the right types in the right slots and whose values are in range, and drops the
        rest (stray tokens, trailing partial runs, runs past the mask). Kept runs are painted in
        sequence order, so where they overlap the later run wins.
        """
        runs = self.decode_runs(tokens, errors)
        flat = paint_runs(runs, self.num_pixels, label_dtype(self.num_classes))
        return flat.reshape(self.mask_size, order=self.order)

    def decode_runs(self, tokens, errors: str = "strict") -> Runs:
        """Tokens -> the runs they stand for, in sequence order (flat starts in this tokenizer's order).
        ``errors`` as for :meth:`decode`: "ignore" keeps the runs that decode paints."""
        return self.decode_runs_at(tokens, errors)[0]

    def decode_runs_at(self, tokens, errors: str = "strict") -> tuple[Runs, np.ndarray]:
        """(:meth:`decode_runs`, (R, tokens_per_run) the positions in ``tokens`` of each run's tokens):
        where per-run scores read the generation's log-probabilities."""
        body, strict = read_body(tokens, errors)
        k, run_format = self.tokens_per_run, self.run_format
        if strict:
            run_tokens = self._strict_run_tokens(body)
            first = np.arange(len(run_tokens)) * k
        else:
            first = run_format.windows(self.vocab.kind(body))
            run_tokens = body[first[:, None] + np.arange(k)]
        runs, in_grid = run_format.decode(run_tokens)
        if strict:
            run_format.check(runs, in_grid, first)
            return runs, first[:, None] + np.arange(k)
        keep = run_format.in_mask(runs, in_grid)
        return runs[keep], first[keep][:, None] + np.arange(k)

    def count_runs(self, tokens, errors: str = "ignore") -> tuple[int, int]:
        """(runs a generated sequence stands for, runs ``decode(errors="ignore")`` keeps).

        n tokens before the first EOS stand for ceil(n / tokens_per_run) runs; the difference is what the
        lenient decoder dropped as malformed. ``errors="strict"`` is for a sequence the caller has decoded
        strictly (a grammar-constrained one): every run is kept, and nothing is decoded again.
        """
        body, strict = read_body(tokens, errors)
        written = -(-body.size // self.tokens_per_run)
        return written, written if strict else len(self.decode_runs(tokens, errors="ignore"))

    def _strict_run_tokens(self, body: np.ndarray) -> np.ndarray:
        k = self.tokens_per_run
        wrong = np.flatnonzero(self.vocab.kind(body) != self.run_format.kinds[np.arange(body.size) % k])
        if wrong.size:
            pos = int(wrong[0])
            raise ValueError(self.run_format.misplaced(body[pos], pos, pos % k, f"run {pos // k}"))
        if body.size % k:
            raise ValueError(
                f"trailing partial run: {body.size % k} token(s) at position {body.size - body.size % k} "
                f"before EOS, a run takes {k} tokens"
            )
        return body.reshape(-1, k)

    # ----------------------------------------------------------------------------- misc
    def grammar(self, batch_size: int) -> ImageGrammar:
        """A batch of decoding states that yields the tokens allowed next (constrained decoding)."""
        return ImageGrammar(self.run_format, batch_size)
