"""The image mask tokenizer: label map <-> run tokens, for every scheme of the paper."""

from __future__ import annotations

import numpy as np

from .runs import Runs, check_label_map, check_order, default_max_run, label_dtype, mask_to_runs, paint_runs
from .vocab import EOS, PAD, Vocab

SCHEMES = ("lac", "class", "binary")
START_MODES = ("1d", "2d", "relative")
# Per start mode, the slots of a run's start; their name is also the start tokens' range.
START_SLOTS = {"1d": ("start",), "2d": ("coord", "coord"), "relative": ("gap",)}
# Video and panoptic sequences write absolute starts only.
ABSOLUTE_START_MODES = ("1d", "2d")


def check_absolute_starts(starts: str, owner: str) -> None:
    """ValueError unless ``owner``, a tokenizer that writes absolute starts only, supports ``starts``."""
    if starts not in ABSOLUTE_START_MODES:
        hint = "; relative starts are for the image Tokenizer only" if starts == "relative" else ""
        raise ValueError(f"{owner} starts must be one of {ABSOLUTE_START_MODES}, got {starts!r}{hint}")


def parse_tokens(tokens) -> np.ndarray:
    """Any 1-D integer sequence (list, numpy array, CPU tensor) as an int64 array."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a 1-D sequence, got shape {tokens.shape}")
    if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}")
    return tokens.astype(np.int64, copy=False)


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


class Tokenizer:
    """Turns an (H, W) label map into run tokens and back.

    Args:
        mask_size: (H, W) of the (already subsampled) masks it encodes.
        num_classes: C, background 0 included.
        scheme: "lac" (length and class fused in one token), "class" (separate length and class
            tokens) or "binary" (C = 2; no class token).
        starts: "1d" (one token, the flat index) or "2d" (two tokens from one shared coordinate range:
            the major then the minor coordinate of the start in scan order, i.e. (row, col) for
            order "C" and (col, row) for order "F") or "relative" (one "gap" token: the start minus the
            end of the previous run in scan order, 0 for the first run; values 0 .. H*W-1).
        order: raster order of the flattening, "C" or "F".
        max_run: longest run L; default one row in scan order (W for "C", H for "F").
    """

    task = "semantic"

    def __init__(
        self,
        mask_size: tuple[int, int],
        num_classes: int,
        scheme: str = "lac",
        starts: str = "1d",
        order: str = "C",
        max_run: int | None = None,
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
        if starts not in START_MODES:
            raise ValueError(f"starts must be one of {START_MODES}, got {starts!r}")
        self.mask_size = (height, width)
        self.num_classes = int(num_classes)
        self.scheme, self.starts, self.order = scheme, starts, check_order(order)
        self.max_run = default_max_run(self.mask_size, order) if max_run is None else int(max_run)
        if self.max_run < 1:
            raise ValueError(f"max_run must be >= 1, got {max_run}")
        # Scan grid: the mask as seen in scan order, (major, minor) = (H, W) for "C", (W, H) for "F".
        self.grid = (height, width) if order == "C" else (width, height)
        self.num_pixels = height * width
        self.vocab = Vocab(self._layout())
        self.slots = self._slots()

    def _layout(self) -> list[tuple[str, int, int]]:
        foreground = self.num_classes - 1
        if self.scheme == "lac":
            value_ranges = [("lac", self.max_run * foreground, 1)]
        elif self.scheme == "class":
            value_ranges = [("class", foreground, 1), ("length", self.max_run, 1)]
        else:
            value_ranges = [("length", self.max_run, 1)]
        start_values = max(self.grid) if self.starts == "2d" else self.num_pixels
        return [*value_ranges, (START_SLOTS[self.starts][0], start_values, 0)]

    def _slots(self) -> tuple[str, ...]:
        body = {"lac": ("lac",), "class": ("length", "class"), "binary": ("length",)}[self.scheme]
        return START_SLOTS[self.starts] + body

    @property
    def tokens_per_run(self) -> int:
        return len(self.slots)

    @property
    def bos(self) -> int:
        return self.vocab.bos[self.task]

    # ----------------------------------------------------------------------------- encode
    def check_mask(self, mask: np.ndarray) -> np.ndarray:
        mask = check_label_map(mask)
        if mask.shape != self.mask_size:
            raise ValueError(f"mask has shape {mask.shape}, the tokenizer expects {self.mask_size}")
        if mask.size and int(mask.max()) >= self.num_classes:
            raise ValueError(f"mask holds label {int(mask.max())}, expected labels < num_classes={self.num_classes}")
        return mask

    def encode(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) label map -> int64 tokens: the runs' tokens followed by one EOS (no BOS, no padding)."""
        mask = self.check_mask(mask)
        return self.encode_runs(mask_to_runs(mask, self.order, self.max_run))

    def encode_runs(self, runs: Runs) -> np.ndarray:
        """Runs (flat starts in this tokenizer's order) -> tokens + EOS."""
        vocab = self.vocab
        if self.starts == "1d":
            columns = [vocab["start"].token(runs.starts)]
        elif self.starts == "relative":
            gaps = runs.starts - previous_ends(runs)
            if np.any(gaps < 0):
                raise ValueError("relative starts need runs sorted by start and disjoint")
            columns = [vocab["gap"].token(gaps)]
        else:
            major, minor = np.divmod(runs.starts, self.grid[1])
            columns = [vocab["coord"].token(major), vocab["coord"].token(minor)]
        if self.scheme == "lac":
            columns.append(vocab["lac"].token(self.max_run * (runs.classes - 1) + runs.lengths))
        else:
            columns.append(vocab["length"].token(runs.lengths))
            if self.scheme == "class":
                columns.append(vocab["class"].token(runs.classes))
        body = np.stack(columns, axis=1).reshape(-1)
        return np.append(body, EOS).astype(np.int64)

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
        if errors not in ("strict", "ignore"):
            raise ValueError(f"errors must be 'strict' or 'ignore', got {errors!r}")
        strict = errors == "strict"
        body = split_at_eos(parse_tokens(tokens), strict)
        run_tokens = self._strict_run_tokens(body) if strict else self._valid_run_tokens(body)
        runs = self._runs_from_tokens(run_tokens)
        in_grid = self._in_grid(run_tokens, runs)
        valid = in_grid & (runs.ends <= self.num_pixels)
        if strict:
            self._check_strict_runs(run_tokens, runs, in_grid, valid)
        elif not valid.all():
            runs = Runs(runs.starts[valid], runs.lengths[valid], runs.classes[valid])
        return runs

    def _slot_kinds(self) -> np.ndarray:
        return np.array([self.vocab.names.index(name) for name in self.slots])

    def _strict_run_tokens(self, body: np.ndarray) -> np.ndarray:
        k = self.tokens_per_run
        expected = self._slot_kinds()[np.arange(body.size) % k]
        wrong = np.flatnonzero(self.vocab.kind(body) != expected)
        if wrong.size:
            pos = int(wrong[0])
            slot = self.slots[pos % k]
            raise ValueError(
                f"token {body[pos]} at position {pos} is a {self.vocab.describe(body[pos])}, "
                f"expected a {slot} token (slot {pos % k} of run {pos // k})"
            )
        if body.size % k:
            raise ValueError(
                f"trailing partial run: {body.size % k} token(s) at position {body.size - body.size % k} "
                f"before EOS, a run takes {k} tokens"
            )
        return body.reshape(-1, k)

    def _valid_run_tokens(self, body: np.ndarray) -> np.ndarray:
        """Every window of k tokens whose types match the run pattern. Such windows never overlap,
        because the type of a run's last slot appears nowhere else in the pattern."""
        k = self.tokens_per_run
        if body.size < k:
            return np.zeros((0, k), dtype=np.int64)
        kinds = np.lib.stride_tricks.sliding_window_view(self.vocab.kind(body), k)
        match = np.all(kinds == self._slot_kinds(), axis=1)
        first = np.flatnonzero(match)
        return body[first[:, None] + np.arange(k)]

    def _in_grid(self, run_tokens: np.ndarray, runs: Runs) -> np.ndarray:
        """Which runs start inside the mask (1-D start tokens always do)."""
        if self.starts == "1d":
            return np.ones(len(run_tokens), dtype=bool)
        if self.starts == "relative":
            return runs.starts < self.num_pixels
        coord = self.vocab["coord"]
        return (coord.value(run_tokens[:, 0]) < self.grid[0]) & (coord.value(run_tokens[:, 1]) < self.grid[1])

    def _runs_from_tokens(self, run_tokens: np.ndarray) -> Runs:
        lengths, classes = self._lengths_and_classes(run_tokens)
        return Runs(self._starts_from_tokens(run_tokens, lengths), lengths, classes)

    def _starts_from_tokens(self, run_tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        vocab = self.vocab
        if self.starts == "1d":
            return vocab["start"].value(run_tokens[:, 0])
        if self.starts == "relative":
            # Each gap counts from the previous run's end, so a start is the sum of all earlier gaps and
            # lengths plus its own gap.
            return np.cumsum(vocab["gap"].value(run_tokens[:, 0])) + np.cumsum(lengths) - lengths
        major, minor = (vocab["coord"].value(run_tokens[:, i]) for i in (0, 1))
        return major * self.grid[1] + minor

    def _lengths_and_classes(self, run_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vocab = self.vocab
        if self.scheme == "lac":
            fused = vocab["lac"].value(run_tokens[:, -1]) - 1
            lengths, classes = fused % self.max_run + 1, fused // self.max_run + 1
        elif self.scheme == "class":
            lengths, classes = vocab["length"].value(run_tokens[:, -2]), vocab["class"].value(run_tokens[:, -1])
        else:
            lengths = vocab["length"].value(run_tokens[:, -1])
            classes = np.ones_like(lengths)
        return lengths, classes

    def _check_strict_runs(self, run_tokens: np.ndarray, runs: Runs, in_grid: np.ndarray, valid: np.ndarray) -> None:
        k = self.tokens_per_run
        if not in_grid.all():
            i = int(np.flatnonzero(~in_grid)[0])
            raise ValueError(self._outside_message(i, run_tokens[i, 0], runs))
        bad = np.flatnonzero(~valid)
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"run {i} (tokens at position {i * k}) with start {runs.starts[i]} and length "
                f"{runs.lengths[i]} ends past the mask of {self.num_pixels} pixels"
            )
        if len(runs) > 1:
            overlap = np.flatnonzero(runs.starts[1:] < runs.ends[:-1])
            if overlap.size:
                i = int(overlap[0]) + 1
                raise ValueError(
                    f"run {i} (tokens at position {i * k}) starts at {runs.starts[i]}, before the end "
                    f"{runs.ends[i - 1]} of the previous run; runs must be sorted and disjoint"
                )

    def _outside_message(self, i: int, token: int, runs: Runs) -> str:
        position = i * self.tokens_per_run
        if self.starts == "relative":
            free = int(previous_ends(runs)[i])
            return (
                f"gap token {token} at position {position} (gap {int(self.vocab['gap'].value(token))} after "
                f"pixel {free}, the end of the previous run) runs past the mask of {self.num_pixels} pixels"
            )
        return f"run {i} (tokens at position {position}) starts outside the {self.grid[0]}x{self.grid[1]} scan grid"

    # ----------------------------------------------------------------------------- misc
    def grammar(self, batch_size: int):
        """A batch of decoding states that yields the tokens allowed next (constrained decoding)."""
        from .grammar import ImageGrammar

        return ImageGrammar(self, batch_size)

    def to_dict(self) -> dict:
        return {
            "type": "image",
            "mask_size": list(self.mask_size),
            "num_classes": self.num_classes,
            "scheme": self.scheme,
            "starts": self.starts,
            "order": self.order,
            "max_run": self.max_run,
            "vocab": self.vocab.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Tokenizer:
        if data.get("type", "image") != "image":
            raise ValueError(f"not an image tokenizer: type {data.get('type')!r}")
        tokenizer = cls(
            tuple(data["mask_size"]), data["num_classes"], data["scheme"], data["starts"],
            data["order"], data["max_run"],
        )
        if "vocab" in data and data["vocab"] != tokenizer.vocab.to_dict():
            raise ValueError("the stored vocabulary layout differs from the one these arguments build")
        return tokenizer

    def __repr__(self) -> str:
        return (
            f"Tokenizer(mask_size={self.mask_size}, num_classes={self.num_classes}, scheme={self.scheme!r}, "
            f"starts={self.starts!r}, order={self.order!r}, max_run={self.max_run}, vocab_size={self.vocab.size})"
        )


def previous_ends(runs: Runs) -> np.ndarray:
    """For each run, the end of the run before it (0 for the first): where its relative start counts from."""
    return np.concatenate(([0], runs.ends))[:-1]
