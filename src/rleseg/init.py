"""``rleseg init``: read a folder of images and label maps, and write a complete config for it.

:func:`survey` reads what the choices need: the layout, whether the labels are classes or instance ids,
image sizes and bit depth, how wide objects are, and what each mask factor loses. :func:`choose` fills in
the shipped CPU settings (stardist-tiny's: the pointer start head, run ends, the boundary refiner, mode
downsampling, lr 1e-3, bf16) around the patch, factor, sequence length and step count measured for this
data and this machine. :func:`render` writes them as YAML with a comment on every choice.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .data.folder import files_by_stem
from .imageio import IMAGE_SUFFIXES, MASK_SUFFIXES, frames_shape, read_label_frames, stored_frames
from .stats import StatsOptions, image_stats

PATCH_SIZES = (128, 160, 192, 224, 256)  # multiples of 32 (the backbone's stride); 128 is the shipped CPU size
WIDTHS_PER_PATCH = 5  # a patch side holds the median object width this many times: whole objects with context
FACTORS = (8, 4, 2)  # coarsest first: the first whose fidelity is enough is taken
MAX_MASK_SIDE = 64  # cells a mask side at most: sequences grow with the grid
MIN_FIDELITY = 0.8  # foreground IoU that subsampling alone may cap every score at
MAX_MASKS = 200  # label maps read for the survey, spread over the files: enough for medians and percentiles
SEQUENCE_MARGIN = 1.15  # max_seq_len over the p99 of the training patches' sequences
MASK_NAME_SUFFIXES = ("", "_mask", "_masks", "_label", "_labels", "_seg", "_cp_masks")
IGNORE = 255


@dataclass
class Layout:
    root: Path
    splits: bool  # train/ and val/ folders; otherwise one folder with a share held out
    mask_suffix: str  # masks are named <image stem><mask_suffix>.<ext>
    pairs: list[tuple[Path, Path]]  # (image, mask) of the training split


@dataclass
class Survey:
    layout: Layout
    frames: int  # training images, every frame of a stack counted
    sides: tuple[int, int]  # the shortest and longest image side
    dtype: str  # as stored (what data.normalize starts from)
    channels: int
    instances: bool  # labels are object ids, not classes
    evidence: str  # why the labels were read as they were
    num_classes: int  # as the config has them: background included
    ignore: bool  # class maps hold IGNORE pixels
    object_width: float  # pixels: the median run of one label along the rows
    fidelity: dict[int, float]  # factor -> foreground IoU that subsampling alone leaves


def find_layout(root: str | Path) -> Layout:
    """``root/images`` + ``root/masks``, or ``root/train`` and ``root/val`` holding them; masks named like
    the images, with or without one of the usual suffixes (``_mask``, ``_cp_masks``, ...)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder; expected images/ and masks/ in it (or train/ and val/ holding them)")
    splits = (root / "train").is_dir()
    if splits and not (root / "val").is_dir():
        raise ValueError(f"{root}: has train/ but no val/; expected both (each with images/ and masks/)")
    base = root / "train" if splits else root
    for name in ("images", "masks"):
        if not (base / name).is_dir():
            raise ValueError(f"{base / name}: no such folder; expected images/ and masks/ paired by file name")
    images = files_by_stem(base / "images", IMAGE_SUFFIXES)
    best: tuple[str, dict[str, Path]] = ("", {})
    for suffix in MASK_NAME_SUFFIXES:
        try:
            masks = files_by_stem(base / "masks", MASK_SUFFIXES, suffix)
        except ValueError:  # no mask has this suffix
            continue
        if len(images.keys() & masks.keys()) > len(images.keys() & best[1].keys()):
            best = (suffix, masks)
    suffix, masks = best
    missing = sorted(images.keys() - masks.keys())
    if missing:
        raise ValueError(f"{images[missing[0]]}: no mask in {base / 'masks'} ({len(missing)} of {len(images)} images "
                         f"lack one); expected a label map named {missing[0]}<suffix>.png or .tif, suffix one of "
                         f"{', '.join(repr(s) for s in MASK_NAME_SUFFIXES)}")
    return Layout(root, splits, suffix, [(images[stem], masks[stem]) for stem in sorted(images)])


def survey(root: str | Path, labels: str | None = None) -> Survey:
    """What a config for the folder ``root`` needs to know; ``labels`` "classes" or "instances" overrides
    what the label maps look like."""
    layout = find_layout(root)
    headers = np.array([frames_shape(image, image=True) for image, _ in layout.pairs])  # (files, 3)
    first = stored_frames(layout.pairs[0][0])
    ids, fills, widths, top, top_class = [], [], [], 0, 0
    for mask in _label_maps(layout):
        present, fill, width = label_shapes(mask)
        ids.append(len(present))
        fills.append(fill)
        widths.append(width)
        top = max(top, int(present.max(initial=0)))
        top_class = max(top_class, int(present[present != IGNORE].max(initial=0)))
    fills, widths = np.concatenate(fills), np.concatenate(widths)
    instances, evidence = _read_as_instances(np.array(ids), fills, top)
    if labels is not None:
        instances, evidence = labels == "instances", f"read as {labels}, as asked"
    ignore = not instances and top == IGNORE
    classes = 2 if instances else max(2, top_class + 1)
    fidelity = _fidelity(layout, instances, classes, ignore)
    return Survey(layout, int(headers[:, 0].sum()), (int(headers[:, 1:].min()), int(headers[:, 1:].max())),
                  str(first.dtype), 1 if first.ndim == 3 else int(first.shape[-1]), instances, evidence, classes,
                  ignore, float(np.median(widths)) if widths.size else 0.0, fidelity)


def _label_maps(layout: Layout) -> Iterator[np.ndarray]:
    """Up to MAX_MASKS label maps (frames of stacks count), from files spread evenly over the split."""
    picks = np.unique(np.linspace(0, len(layout.pairs) - 1, min(len(layout.pairs), MAX_MASKS)).round().astype(int))
    per_file = max(1, MAX_MASKS // len(picks))
    for pick in picks:
        frames = read_label_frames(layout.pairs[pick][1])
        yield from frames[np.unique(np.linspace(0, len(frames) - 1, min(len(frames), per_file)).round().astype(int))]


def label_shapes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-zero labels of a (H, W) label map, how much of its bounding box each fills, and the lengths
    of the runs of one non-zero label along the rows."""
    flat = np.pad(mask, ((0, 0), (1, 1))).ravel()  # a zero column each side: no run crosses a row
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    widths = np.diff(edges)[flat[edges[:-1]] > 0]
    rows, cols = np.nonzero(mask)
    if not rows.size:
        return np.zeros(0, mask.dtype), np.zeros(0), widths
    present, inverse, counts = np.unique(mask[rows, cols], return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    spans = [np.maximum.reduceat(v[order], starts) - np.minimum.reduceat(v[order], starts) + 1 for v in (rows, cols)]
    return present, counts / (spans[0] * spans[1]), widths


def _read_as_instances(ids: np.ndarray, fills: np.ndarray, top: int) -> tuple[bool, str]:
    """Object ids or classes, from the labels a map holds and their shapes: an object id is one compact
    blob, a class is usually spread over the image."""
    many, compact = float(np.median(ids)), float(np.median(fills)) if fills.size else 0.0
    if top > IGNORE:
        return True, f"labels up to {top}: more than 8 bits, object ids"
    if many >= 3 and compact >= 0.35 and top >= 3:
        return True, (f"{many:g} labels a map (median), each a compact blob (it fills {compact:.0%} of its bounding "
                      "box): object ids")
    return False, f"{many:g} labels a map (median), labels up to {top}: classes"


def _fidelity(layout: Layout, instances: bool, classes: int, ignore: bool) -> dict[int, float]:
    """Foreground IoU of every factor's subsampling alone (``rleseg stats``' fidelity) over the survey's maps."""
    maps = ((f"{i}", (m > 0).astype(np.uint8) if instances else m) for i, m in enumerate(_label_maps(layout)))
    options = StatsOptions(factors=FACTORS, schemes=("lac",), starts=("1d",), downsample_method="mode",
                           num_classes=classes, ignore_index=IGNORE if ignore else None)
    result = image_stats(maps, options)
    return {factor: float(result.subsampling[factor].miou or 0.0) for factor in FACTORS}


# ----------------------------------------------------------------------------- the choices
@dataclass
class Setting:
    key: str  # dotted
    value: object
    why: str = ""


def choose(found: Survey, task: str = "semantic", minutes: float = 10.0, run_dir: str | None = None,
           architecture: str = "token", show_progress: bool = False) -> list[Setting]:
    """The config for ``found`` as settings with their reasons: the shipped CPU settings, and the patch,
    factor, sequence length and steps measured here (the last two build the datasets and time a few
    training steps of the model on this machine). ``architecture`` "dense": the dense head's baseline."""
    if task == "panoptic" and architecture == "dense":
        raise ValueError("the dense head writes class maps: task panoptic needs the token model")
    if task == "panoptic" and not found.instances:
        raise ValueError(f"{found.layout.root}: task panoptic needs instance label maps; its labels were read as "
                         f"classes ({found.evidence}); pass --labels instances if they are object ids")
    patch = _patch_size(found)
    factor, fidelity_why = _factor(found, patch)
    settings = _shipped(found, task, patch, factor, fidelity_why, minutes, run_dir)
    if architecture == "dense":
        settings = _dense(settings)
    from .patch_stats import patch_lengths  # torch from here on

    config = config_of(settings)
    lengths = patch_lengths(config, epochs=2, show_progress=show_progress)
    if architecture == "token":
        longest = max(64, 32 * math.ceil(lengths.p99 * SEQUENCE_MARGIN / 32))
        _set(settings, "model.max_seq_len", longest, f"p99 of the training patches' sequences: {lengths.p99} tokens "
             f"(max {lengths.max}; {lengths.patches} patches, 2 epochs; `rleseg stats --config`) + "
             f"{SEQUENCE_MARGIN - 1:.0%}, in 32s")
    per_epoch = lengths.patches // lengths.epochs
    if per_epoch < 16:  # a smaller batch than the shipped 16, or the run refuses to start
        _set(settings, "train.batch_size", 2 ** int(math.log2(max(per_epoch, 1))),
             f"the training images give {per_epoch} patches an epoch: fewer than the shipped 16")
    config = config_of(settings)
    batch = _setting(settings, "train.batch_size").value
    seconds = seconds_per_step(config)
    fit = max(50, int(minutes * 60 * 0.9 / seconds))  # a tenth of the budget for evaluation and checkpoints
    _set(settings, "train.steps", 2 * fit, f"about {fit} steps of {batch} patches fit {minutes:g} minutes here "
         f"({seconds:.2f} s a step, timed by rleseg init); twice that, so that a quicker machine is not cut short: "
         "the budget below ends the run, and the learning rate follows the clock")
    _set(settings, "train.warmup_steps", max(10, min(50, fit // 10)), "a tenth of the steps that fit, at most the "
         "shipped 50: the learning rate peaks early in a short run")
    return settings


def _patch_size(found: Survey) -> int:
    wanted = WIDTHS_PER_PATCH * found.object_width
    size = next((p for p in PATCH_SIZES if p >= wanted), PATCH_SIZES[-1])
    return min(size, max(32, found.sides[0] // 32 * 32))


def _factor(found: Survey, patch: int) -> tuple[int, str]:
    allowed = [f for f in FACTORS if patch // f <= MAX_MASK_SIDE]
    good = [f for f in allowed if found.fidelity[f] >= MIN_FIDELITY]
    factor = good[0] if good else allowed[-1]
    scores = ", ".join(f"{f}: {found.fidelity[f]:.2f}" for f in FACTORS)
    verdict = (f"the coarsest keeping foreground IoU >= {MIN_FIDELITY} after subsampling" if good else
               f"none keeps foreground IoU {MIN_FIDELITY}: the finest with masks of at most {MAX_MASK_SIDE} cells")
    return factor, f"{verdict} ({scores}), which caps every score"


def _shipped(found: Survey, task: str, patch: int, factor: int, fidelity_why: str, minutes: float,
             run_dir: str | None) -> list[Setting]:
    """Every setting but the measured ones, from the shipped CPU configs (stardist-tiny, stardist-panoptic)."""
    semantic = task == "semantic"
    names = ["background", "object"] if found.instances else ["background"] + [
        f"class_{c}" for c in range(1, found.num_classes)]
    options: dict = {} if found.layout.splits else {"val_fraction": 0.2}
    if found.layout.mask_suffix:
        options["mask_suffix"] = found.layout.mask_suffix
    if found.instances:
        options["labels"] = "instances"
    settings = [
        Setting("model.preset", "tiny", "the shipped CPU model (resnet10t encoder, 2 + 2 transformer layers); "
                "small or paper on a GPU"),
        Setting("model.max_seq_len", 256, ""),
        Setting("tokenizer.task", task, "instances: one group of runs per object" if not semantic else
                "one sequence of class runs a patch" + (" (objects as one class: --task panoptic keeps them apart)"
                                                        if found.instances else "")),
        Setting("tokenizer.starts", "1d", "a start is one cell index, chosen from the image by the pointer head"),
        Setting("data.dataset", "folder", ""),
        Setting("data.root", str(found.layout.root), "train/ and val/" if found.layout.splits else
                "one images/ + masks/ folder: a seeded fifth of the images is held out for validation"),
        Setting("data.num_classes", found.num_classes, "background included; " + found.evidence),
        Setting("data.class_names", names, "rename at will"),
        Setting("data.patch", {"patch_size": patch, "factor": factor, "stride_range": [patch // 2, patch],
                               "flip": True, "rot90": True, "downsample": "mode" if semantic else "nearest"},
                f"holds the median object ({found.object_width:.0f} px) {patch / max(found.object_width, 1):.0f} "
                f"times a side; factor {factor}: {fidelity_why}"),
        Setting("data.options", options, "labels: instances reads each id as an object" if found.instances else ""),
        Setting("train.steps", 1, ""),
        Setting("train.minutes", minutes, "wall-clock budget: the schedule ends within it"),
        Setting("train.batch_size", 16, ""),
        Setting("train.lr", 0.001 if semantic else 0.0005, "the shipped configs' rate"),
        Setting("train.warmup_steps", 50, ""),
        Setting("train.precision", "bf16", "faster than fp32 on a CPU"),
        Setting("eval.max_samples", None, "every validation patch at the end of the run"),
        Setting("output.dir", run_dir or f"runs/{found.layout.root.name}", ""),
        Setting("output.save_every", 200, ""),
    ]
    if semantic:
        settings[4:4] = [Setting("tokenizer.extent", "end", "a run's end chosen from the image like its start")]
        settings[2:2] = [Setting("model.refine_band", 1, "redraws the decoded mask at full resolution within 1 "
                                 "cell of its boundaries (--token-only: the tokens alone)"),
                         Setting("model.refine_batch", 4, "the refiner trains on 4 images a batch")]
    else:
        settings[4:4] = [Setting("tokenizer.thing_classes", [1], "the objects are instances")]
        settings.append(Setting("eval.best_metric", "panoptic.all.pq", ""))
    scaling = ("divided by 255" if found.dtype == "uint8" else
               f"{found.dtype}: stretched from their 1st to 99.8th percentile")
    settings.append(Setting("data.normalize", {"mode": "auto"}, f"{scaling} (stored in checkpoints: predict does the "
                            "same)"))
    return settings


def _dense(settings: list[Setting]) -> list[Setting]:
    """The token settings less what only the token model reads, for the dense head of the same preset."""
    token_only = ("model.max_seq_len", "model.refine_band", "model.refine_batch", "tokenizer.starts",
                  "tokenizer.extent")
    kept = [s for s in settings if s.key not in token_only]
    _set(kept, "tokenizer.task", "semantic", "a class map (the dense head writes no tokens)")
    kept.insert(1, Setting("model.architecture", "dense", "the baseline: per-pixel logits from the same backbone"))
    return kept


def _setting(settings: list[Setting], key: str) -> Setting:
    return next(s for s in settings if s.key == key)


def _set(settings: list[Setting], key: str, value: object, why: str) -> None:
    setting = _setting(settings, key)
    setting.value, setting.why = value, why


def as_mapping(settings: list[Setting]) -> dict:
    """The nested config mapping of dotted settings."""
    data: dict = {}
    for s in settings:
        *sections, key = s.key.split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = s.value
    return data


def config_of(settings: list[Setting]):
    """The checked :class:`~rleseg.experiment.ExperimentConfig` of ``settings``."""
    from .experiment import ExperimentConfig, validate_config
    from .typed_yaml import from_dict

    config = from_dict(ExperimentConfig, as_mapping(settings))
    validate_config(config)
    return config


def seconds_per_step(config, steps: int = 3) -> float:
    """Seconds an optimizer step of ``config``'s model takes here: the quickest of ``steps`` after one warm-up
    (the quickest, as other work on the machine only ever slows a step)."""
    import torch

    from .data import Collate
    from .engine import LossOf, build_optimizer, train_step
    from .experiment import build_datasets, build_model, build_tokenizer

    tokenizer = build_tokenizer(config)
    model = build_model(config, tokenizer)
    train_set, _ = build_datasets(config, tokenizer)
    tc = config.train
    size = min(tc.batch_size, len(train_set))
    batch = Collate(model.max_seq_len)([train_set[i] for i in range(size)])
    optimizer, loss_of, device = build_optimizer(model, tc), LossOf(model), torch.device("cpu")
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        train_step(loss_of, [batch], optimizer, tc, device, model.target_keys)
        times.append(time.perf_counter() - started)
    return min(times[1:]) * tc.batch_size / size


def render(found: Survey, settings: list[Setting], command: str) -> str:
    """The YAML of ``settings`` with each reason as a comment, under a header of what was read."""
    sides = f"{found.sides[0]}" if found.sides[0] == found.sides[1] else f"{found.sides[0]}-{found.sides[1]}"
    lines = [f"# Written by `{command}`: {len(found.layout.pairs)} training files, {found.frames} images "
             f"({found.dtype}, {found.channels} channel(s), sides {sides} px).",
             "# Every key of the config, with its default, is in docs/config.md; `rleseg config THIS.yaml` prints "
             "them all."]
    sections = list(dict.fromkeys(s.key.split(".")[0] for s in settings))
    section = None
    for s in sorted(settings, key=lambda s: sections.index(s.key.split(".")[0])):
        name, key = s.key.split(".", 1)
        if name != section:
            lines.append(f"{name}:")
            section = name
        value = yaml.safe_dump(s.value, default_flow_style=True, sort_keys=False, width=10_000)
        value = value.removesuffix("\n...\n").strip()
        lines.append(f"  {key}: {value}" + (f"  # {s.why}" if s.why else ""))
    return "\n".join(lines) + "\n"
