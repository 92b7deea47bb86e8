"""What every statistics mode shares: options, result records, fidelity scores and the accumulator.

A mode (``image.py``, ``video.py``, ``panoptic.py``) runs its pipeline on each mask (or video) and feeds an
:class:`Accumulator`: ``begin_mask`` checks the labels, ``add_subsampling`` records the fidelity of
subsampling alone, ``add`` records one configuration's sequence length and fidelity (``add_text_length`` its
text form's length in a language model's tokens), and ``result``
summarises everything into a :class:`DatasetStats`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rleseg import metrics
from rleseg.progress import progress
from rleseg.tokens import upsample_mask
from rleseg.tokens.text import MaskText
from rleseg.tokens.tokenizer import SCHEMES, START_MODES

from ..imageio import MaskError

PERCENTILES = (50, 95, 99)
RECOMMENDATION = "choose max_seq_len >= p99: it fits at least 99% of the masks (tokens counted with EOS, not BOS)"


# ----------------------------------------------------------------------------- options and results
@dataclass(frozen=True)
class StatsOptions:
    """What ``rleseg stats`` measures; every field has the command line's default."""

    factors: tuple[int, ...] = (1, 2, 4, 8)
    schemes: tuple[str, ...] = SCHEMES
    starts: tuple[str, ...] = START_MODES
    order: str = "C"
    # None: one row of the subsampled mask in scan order, as the tokenizer defaults.
    max_run: int | None = None
    downsample_method: str = "nearest"
    # None: inferred as the largest label + 1 over all masks (at least 2).
    num_classes: int | None = None
    # Pixels with this label are background to the tokenizer and left out of the fidelity scores.
    ignore_index: int | None = None
    # Boundary F-score tolerance in full-resolution pixels.
    tolerance: int = 2
    # None: sequences are never cut. Otherwise the first max_seq_len tokens are kept, as a model of that
    # length would emit them, and fidelity is scored on what decodes from them.
    max_seq_len: int | None = None
    # A language model's tokenizer (a tokenizer.json, or a folder holding one): each mask's text form
    # (rleseg.tokens.text, class words class1 ..) is also counted in its tokens, uncut.
    text_tokenizer: str | None = None

    def __post_init__(self) -> None:
        if not self.factors or any(int(f) != f or f < 1 for f in self.factors):
            raise ValueError(f"subsampling factors must be positive integers, got {self.factors}")
        for name, values, valid in (("scheme", self.schemes, SCHEMES), ("starts", self.starts, START_MODES)):
            bad = [v for v in values if v not in valid]
            if bad or not values:
                raise ValueError(f"{name} must be among {valid}, got {values}")
        if self.order not in ("C", "F"):
            raise ValueError(f"order must be 'C' or 'F', got {self.order!r}")
        if self.downsample_method not in ("nearest", "mode"):
            raise ValueError(f"downsample method must be 'nearest' or 'mode', got {self.downsample_method!r}")
        if self.max_run is not None and self.max_run < 1:
            raise ValueError(f"max_run must be >= 1, got {self.max_run}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"num_classes counts background and must be >= 2, got {self.num_classes}")
        if int(self.tolerance) != self.tolerance or self.tolerance < 0:
            raise ValueError(f"boundary tolerance must be a whole number of pixels >= 0, got {self.tolerance}")
        if self.max_seq_len is not None and self.max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {self.max_seq_len}")


@dataclass
class Fidelity:
    """Per-class scores (index = class; None where the class was in no image) and their foreground means."""

    miou: float | None
    mbf: float | None
    iou: list[float | None]
    bf: list[float | None]
    images: list[int]  # per class: the images where it was present in ground truth or reconstruction


@dataclass
class StatsRow:
    """One configuration: its token-length distribution, vocabulary and fidelity."""

    scheme: str
    starts: str
    factor: int
    mask_size: tuple[int, int]  # the largest subsampled mask
    vocab_size: int  # for the largest subsampled mask
    mean: float
    p50: int
    p95: int
    p99: int
    max: int
    truncated: float | None  # fraction of masks longer than max_seq_len; None when not cut
    fidelity: Fidelity
    text_mean: float | None = None  # the text form's length in the language model's tokens (text_tokenizer)
    text_p99: int | None = None


def result_dict(result) -> dict:
    """A statistics result dataclass (its ``options`` and per-factor ``subsampling`` fidelity included) as
    JSON-ready data, led by the max_seq_len recommendation."""
    data = {"recommendation": RECOMMENDATION, **asdict(result)}
    data["options"] = asdict(result.options)
    data["subsampling"] = {str(k): asdict(v) for k, v in result.subsampling.items()}
    return data


def encode_cut_decode(tokenizer, small: np.ndarray, max_seq_len: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(the tokens of ``small``, what decodes from them once cut after ``max_seq_len``, as a model of that
    length would cut them)."""
    tokens = tokenizer.encode(small)
    cut = tokens if max_seq_len is None else tokens[:max_seq_len]
    return tokens, tokenizer.decode(cut, errors="ignore")


@dataclass
class DatasetStats:
    num_images: int
    num_classes: int
    num_classes_inferred: bool
    mask_sizes: dict[str, int]  # "HxW" -> number of masks
    options: StatsOptions
    rows: list[StatsRow]
    # Fidelity of subsampling alone, per factor: the loss every scheme shares when nothing is cut.
    subsampling: dict[int, Fidelity]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return result_dict(self)


# ----------------------------------------------------------------------------- fidelity
def fidelity_scores(
    truth: np.ndarray, pred: np.ndarray, num_classes: int, tolerance: int, ignore_index: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class IoU and boundary F-score of one image, (C,) float64 each, NaN where a class is in neither.

    Pixels where ``truth == ignore_index`` are not scored.
    """
    iou = metrics.per_class_iou(pred, truth, num_classes, ignore_index)
    bf = metrics.boundary_f_score(pred, truth, num_classes, tolerance, ignore_index)
    return iou, bf


class _FidelitySum:
    """Sums per-class scores over images, skipping classes absent from both masks of an image."""

    def __init__(self) -> None:
        self.iou = np.zeros(0)
        self.bf = np.zeros(0)
        self.count = np.zeros(0, dtype=np.int64)

    def add(self, iou: np.ndarray, bf: np.ndarray) -> None:
        if iou.size > self.iou.size:
            grow = iou.size - self.iou.size
            self.iou, self.bf = np.pad(self.iou, (0, grow)), np.pad(self.bf, (0, grow))
            self.count = np.pad(self.count, (0, grow))
        present = ~np.isnan(iou)
        n = iou.size
        self.iou[:n] += np.where(present, iou, 0.0)
        self.bf[:n] += np.where(present, np.nan_to_num(bf, nan=0.0), 0.0)
        self.count[:n] += present

    def result(self, num_classes: int) -> Fidelity:
        count = np.pad(self.count, (0, max(0, num_classes - self.count.size)))[:num_classes]
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.pad(self.iou, (0, max(0, num_classes - self.iou.size)))[:num_classes] / count
            bf = np.pad(self.bf, (0, max(0, num_classes - self.bf.size)))[:num_classes] / count
        seen = count > 0
        fg = seen.copy()
        fg[0] = False

        def listed(values: np.ndarray) -> list[float | None]:
            return [float(v) if s else None for v, s in zip(values, seen, strict=True)]

        return Fidelity(
            miou=float(iou[fg].mean()) if fg.any() else None,
            mbf=float(bf[fg].mean()) if fg.any() else None,
            iou=listed(iou),
            bf=listed(bf),
            images=count.tolist(),
        )


# ----------------------------------------------------------------------------- accumulation
def load_text_tokenizer(path: str):
    """A language model's tokenizer (``tokenizers``, no torch) from a tokenizer.json or a folder holding one."""
    try:
        from tokenizers import Tokenizer as TextTokenizer
    except ImportError:
        raise MaskError("--text-tokenizer needs the tokenizers package: pip install 'rleseg[text]'") from None
    file = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
    try:
        return TextTokenizer.from_file(str(file))
    except Exception as error:  # tokenizers raises its own Exception for a missing or malformed file
        raise MaskError(f"{file}: not a tokenizer.json a Hugging Face tokenizer reads ({error})") from None


@dataclass
class _Config:
    lengths: list[int] = field(default_factory=list)
    text_lengths: list[int] = field(default_factory=list)
    fidelity: _FidelitySum = field(default_factory=_FidelitySum)
    sizes: set[tuple[int, int]] = field(default_factory=set)


# (scheme, starts, mask size, num_classes) -> vocabulary size
VocabSize = Callable[[str, str, tuple[int, int], int], int]


class Accumulator:
    """Collects per-mask token counts and fidelity per (scheme, starts, factor); modes feed it."""

    def __init__(self, options: StatsOptions):
        self.options = options
        self.configs: dict[tuple[str, str, int], _Config] = {}
        self.subsampling: dict[int, _FidelitySum] = {}
        self.max_label = 0
        self.num_images = 0
        self.mask_sizes: dict[str, int] = {}
        self.text_tokenizer = None if options.text_tokenizer is None else load_text_tokenizer(options.text_tokenizer)
        self._texts: dict[tuple, MaskText] = {}

    def begin_mask(self, name: str, mask: np.ndarray) -> tuple[np.ndarray, int]:
        """Check and count one mask (..., H, W).

        Returns the mask as the tokenizer sees it (ignored pixels set to background 0) and the number of
        classes to tokenize it with: ``options.num_classes``, or its own largest label + 1 (at least 2)
        while the dataset's count is still being inferred.

        Raises:
            MaskError: the mask holds a label >= ``options.num_classes``.
        """
        opts = self.options
        if opts.ignore_index is not None:
            mask = np.where(mask == opts.ignore_index, 0, mask).astype(mask.dtype)
        max_label = int(mask.max()) if mask.size else 0
        if opts.num_classes is not None and max_label >= opts.num_classes:
            raise MaskError(
                f"{name}: holds label {max_label}, expected labels < --num-classes {opts.num_classes} "
                f"(0..{opts.num_classes - 1})"
            )
        self.max_label = max(self.max_label, max_label)
        self.num_images += 1
        size = "x".join(str(v) for v in mask.shape)
        self.mask_sizes[size] = self.mask_sizes.get(size, 0) + 1
        return mask, opts.num_classes or max(2, max_label + 1)

    def score(
        self, truth: np.ndarray, small: np.ndarray, factor: int, num_classes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fidelity of a subsampled (H', W') reconstruction against the full-resolution (H, W) ``truth``."""
        restored = upsample_mask(small, factor, truth.shape)
        return fidelity_scores(truth, restored, num_classes, self.options.tolerance, self.options.ignore_index)

    def add_subsampling(self, factor: int, scores: tuple[np.ndarray, np.ndarray]) -> None:
        self.subsampling.setdefault(factor, _FidelitySum()).add(*scores)

    def add(self, scheme: str, starts: str, factor: int, length: int, size: tuple[int, int],
            scores: tuple[np.ndarray, np.ndarray]) -> None:
        """One mask encoded in one configuration: its sequence length, encoded size and fidelity."""
        config = self.configs.setdefault((scheme, starts, factor), _Config())
        config.lengths.append(int(length))
        config.sizes.add(tuple(int(v) for v in size))
        config.fidelity.add(*scores)

    def add_text_length(self, scheme: str, starts: str, factor: int, tokenizer, tokens: np.ndarray) -> None:
        """With a text tokenizer: the length of ``tokens``' text form in its tokens."""
        if self.text_tokenizer is None:
            return
        key = (tokenizer.mask_size, tokenizer.num_classes, scheme, starts)
        text = self._texts.get(key) or self._texts.setdefault(key, MaskText(tokenizer))
        length = len(self.text_tokenizer.encode(text.to_text(tokens), add_special_tokens=False).ids)
        self.configs[(scheme, starts, factor)].text_lengths.append(length)

    @property
    def num_classes(self) -> int:
        return self.options.num_classes or max(2, self.max_label + 1)

    def result(self, vocab_size: VocabSize, exclude: Iterable[str] = (), notes: Iterable[str] = ()) -> DatasetStats:
        """Summarise; rows of the schemes in ``exclude`` are dropped."""
        if self.num_images == 0:
            raise MaskError("no masks given")
        num_classes = self.num_classes
        exclude = set(exclude)
        rows = [
            self._row(key, config, num_classes, vocab_size)
            for key, config in self.configs.items() if key[0] not in exclude
        ]
        return DatasetStats(
            num_images=self.num_images,
            num_classes=num_classes,
            num_classes_inferred=self.options.num_classes is None,
            mask_sizes=self.mask_sizes,
            options=self.options,
            rows=rows,
            subsampling={f: s.result(num_classes) for f, s in self.subsampling.items()},
            notes=list(notes),
        )

    def _row(self, key: tuple[str, str, int], config: _Config, num_classes: int, vocab_size: VocabSize) -> StatsRow:
        scheme, starts, factor = key
        max_seq_len = self.options.max_seq_len
        lengths = np.asarray(config.lengths)
        p50, p95, p99 = (int(v) for v in np.percentile(lengths, PERCENTILES, method="inverted_cdf"))
        return StatsRow(
            scheme=scheme,
            starts=starts,
            factor=factor,
            mask_size=max(config.sizes, key=lambda s: (int(np.prod(s)), s)),
            vocab_size=max(vocab_size(scheme, starts, size, num_classes) for size in config.sizes),
            mean=float(lengths.mean()),
            p50=p50,
            p95=p95,
            p99=p99,
            max=int(lengths.max()),
            truncated=None if max_seq_len is None else float(np.mean(lengths > max_seq_len)),
            fidelity=config.fidelity.result(num_classes),
            text_mean=float(np.mean(texts)) if (texts := config.text_lengths) else None,
            text_p99=int(np.percentile(texts, 99, method="inverted_cdf")) if texts else None,
        )


# Below this many masks a progress bar is noise.
_PROGRESS_MIN = 20


def progress_bar(items: Iterable, enabled: bool, total: int | None) -> Iterable:
    """``items`` wrapped in a progress bar on stderr when enabled, there are enough of them and stderr is
    a terminal (no bar in logs, pipes, tests)."""
    if not enabled or (total is not None and total < _PROGRESS_MIN):
        return items
    return progress(items, desc="masks", unit="mask", total=total, terminal_only=True, leave=False)
