"""``rleseg evaluate``: score a model on a dataset, or prediction PNGs against ground-truth PNGs.

Both write one folder (atomically: built under a temporary name beside it, renamed at the end, so an
error leaves nothing behind):

    metrics.json    SegmentationMeter.compute() (both aggregations, per class), class names, panoptic
                    PQ / SQ / RQ for panoptic models, generation counts (invalid runs, truncated sequences)
    metrics.md      the same as markdown tables
    per_image.csv   one row per image: size, pixel accuracy, Dice / IoU per class, generation counts
    confusion.png   the confusion matrix, rows normalised (ground truth -> predicted)
    pictures/       image | ground truth | prediction panels of the first images (model evaluation)
    tokens_<name>.png  the first patch of the first image as runs: ground-truth and generated tokens

Video checkpoints (tokenizer task "video") are scored per whole sequence: every sequence of the data
(the config's video dataset, or ``--images DIR --masks DIR`` laid out as ``VideoFolderDataset`` expects:
one frame folder or TIFF stack per sequence) is predicted with ``Predictor.run_video`` (windows every
``window_stride`` frames, default N as in the paper) and scored with ``VideoMeter``: metrics.json gains
``num_videos`` and ``temporal`` (flip rates), and the table is ``per_frame.csv``.

Scoring folders (``score_folders``) imports no torch: it reads PNG/TIFF label maps paired by file stem.
Model evaluation (``evaluate_checkpoint``) predicts full images with :class:`rleseg.api.Predictor`
(the paper's patch -> predict -> stitch pipeline, or whole images) and scores at full resolution.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .metrics import PanopticMeter, SegmentationMeter
from .stats import find_masks, read_label_mask
from .visualize import comparison_panel, draw_runs

PICTURE_SIDE = 384  # longest side of the images in the comparison panels


@contextlib.contextmanager
def atomic_output(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out``; on success it replaces ``out``, on error it is removed."""
    out = Path(out)
    if out.exists() and not overwrite and not (out.is_dir() and not any(out.iterdir())):
        raise ValueError(f"{out}: already exists and is not empty; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def class_names_for(num_classes: int, names: list[str] | None) -> list[str]:
    if names is None:
        return [f"class {c}" for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names given for {num_classes} classes")
    return list(names)


class Scorer:
    """Semantic (and optionally panoptic) meters plus one table row per image."""

    def __init__(self, class_names: list[str], ignore_index: int | None, tolerance: int | None,
                 things: tuple[list[int], list[int]] | None = None):
        self.class_names = class_names
        self.semantic = SegmentationMeter(len(class_names), ignore_index, 0, tolerance)
        self._panoptic_args = None if things is None else (len(class_names), *things, ignore_index)
        self.panoptic = None if things is None else PanopticMeter(*self._panoptic_args)
        self.rows: list[dict[str, Any]] = []

    def add(self, name: str, pred: np.ndarray, gt: np.ndarray, pred_instances=None, gt_instances=None,
            **extra: Any) -> None:
        if pred.shape != gt.shape:
            raise ValueError(f"{name}: prediction is {pred.shape[0]}x{pred.shape[1]}, ground truth "
                             f"{gt.shape[0]}x{gt.shape[1]}; expected equal sizes")
        try:
            scores = self.semantic.update(pred, gt)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        row: dict[str, Any] = {"name": name, "height": gt.shape[0], "width": gt.shape[1],
                               "pixel_accuracy": _number(scores["pixel_accuracy"][0])}
        for score in ("dice", "iou"):
            present = scores[score][0][~np.isnan(scores[score][0])]
            row[f"mean_{score}"] = _number(present.mean()) if present.size else None
        if self.panoptic is not None and gt_instances is not None:
            image = PanopticMeter(*self._panoptic_args)
            image.update(pred, pred_instances, gt, gt_instances)
            row["pq"] = image.compute()["all"]["pq"]
            self.panoptic.merge(image)
        row.update(extra)
        for score in ("dice", "iou"):
            row.update({f"{score}_{c}": _number(v) for c, v in enumerate(scores[score][0])})
        self.rows.append(row)

    def results(self) -> dict[str, Any]:
        out = {"class_names": self.class_names, "num_images": len(self.rows), "semantic": self.semantic.compute()}
        if self.panoptic is not None and any("pq" in row for row in self.rows):
            out["panoptic"] = self.panoptic.compute()
        return out


def _number(value: float) -> float | None:
    return None if value is None or np.isnan(value) else round(float(value), 6)


# ----------------------------------------------------------------------------- prediction folders
def score_folders(pred_dir: str | Path, gt_dir: str | Path, num_classes: int, out: str | Path,
                  ignore_index: int | None = None, class_names: list[str] | None = None, tolerance: int | None = 2,
                  overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Score label maps in ``pred_dir`` against those in ``gt_dir`` (paired by stem); write the report."""
    scorer = Scorer(class_names_for(num_classes, class_names), ignore_index, tolerance)
    pairs = pair_by_stem(Path(pred_dir), Path(gt_dir))
    with atomic_output(out, overwrite) as tmp:
        for stem, pred_path, gt_path in _progress(pairs, progress, "evaluate"):
            pred, gt = read_label_mask(pred_path), read_label_mask(gt_path)
            if pred.shape != gt.shape:
                raise ValueError(f"{pred_path}: prediction is {pred.shape[0]}x{pred.shape[1]}, {gt_path} is "
                                 f"{gt.shape[0]}x{gt.shape[1]}; expected equal sizes")
            scorer.add(stem, pred, gt)
        results = {"source": {"pred_dir": str(pred_dir), "gt_dir": str(gt_dir)}, **scorer.results()}
        write_report(tmp, results, scorer.rows)
    return results


def pair_by_stem(pred_dir: Path, gt_dir: Path) -> list[tuple[str, Path, Path]]:
    """(stem, prediction, ground truth) for every stem; a file without its partner is an error."""
    found = []
    for folder in (pred_dir, gt_dir):
        files = {}
        for path in find_masks(folder):
            if path.stem in files:
                raise ValueError(f"{path}: two files for stem {path.stem!r} ({files[path.stem].name}); expected one")
            files[path.stem] = path
        found.append(files)
    preds, gts = found
    for missing, have, where in ((set(gts) - set(preds), gts, pred_dir), (set(preds) - set(gts), preds, gt_dir)):
        if missing:
            first = sorted(missing)[0]
            raise ValueError(f"{have[first]} has no partner with stem {first!r} in {where} "
                             f"({len(missing)} unpaired file(s)); predictions and ground truth pair by file stem")
    return [(stem, preds[stem], gts[stem]) for stem in sorted(gts)]


def _progress(items, enabled: bool, desc: str, total: int | None = None):
    from tqdm import tqdm

    return tqdm(items, total=total, disable=not enabled, desc=desc, unit="image", dynamic_ncols=True)


# ----------------------------------------------------------------------------- report files
def write_report(folder: Path, results: dict[str, Any], rows: list[dict[str, Any]], table: str = "per_image.csv"
                 ) -> None:
    (folder / "metrics.json").write_text(json.dumps(results, indent=1) + "\n")
    (folder / "metrics.md").write_text(markdown(results))
    with (folder / table).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["name"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{k: "" if v is None else v for k, v in row.items()} for row in rows])
    confusion_picture(np.array(results["semantic"]["confusion"]), results["class_names"]).save(folder / "confusion.png")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows)]


def markdown(results: dict[str, Any]) -> str:
    sem, names = results["semantic"], results["class_names"]
    scores = list(sem["pooled"]["mean"])
    lines = [f"# Evaluation: {results['num_images']} images", "",
             "Per image: each score averaged over the images where the class is in the prediction or the ground "
             "truth (the paper). Pooled: pixel counts summed over the dataset first (MMSegmentation).", ""]
    means = [[agg, group, *(sem[agg][group][s] for s in scores), sem[agg]["pixel_accuracy"]]
             for agg in ("per_image", "pooled") for group in ("mean", "mean_without_background")]
    lines += [*_table(["aggregation", "classes", *scores, "pixel accuracy"], means), ""]
    per_class = [[c, names[c], *(sem["per_image"]["per_class"][s][c] for s in scores),
                  *(sem["pooled"]["per_class"][s][c] for s in scores), sem["pooled"]["gt_pixels"][c]]
                 for c in range(len(names))]
    lines += ["## Per class", ""]
    header = ["class", "name", *(f"{s} (image)" for s in scores), *(f"{s} (pooled)" for s in scores), "gt pixels"]
    lines += [*_table(header, per_class), ""]
    if "panoptic" in results:
        pq = results["panoptic"]
        lines += ["## Panoptic quality", ""]
        lines += _table(["group", "PQ", "SQ", "RQ", "classes"],
                        [[g, pq[g]["pq"], pq[g]["sq"], pq[g]["rq"], pq[g]["n"]] for g in ("all", "things", "stuff")])
        lines += [""]
    if "temporal" in results:
        temporal = results["temporal"]
        lines += [f"## Temporal consistency ({results['num_videos']} videos)", "",
                  "Flip rate: share of pixels whose label changes between consecutive frames.", ""]
        keys = ("pred_flip_rate", "gt_flip_rate", "ratio", "difference")
        lines += [*_table(["aggregation", *keys], [[agg, *(temporal[agg][k] for k in keys)]
                                                   for agg in ("per_video", "pooled")]), ""]
    if "generation" in results:
        gen = results["generation"]
        lines += ["## Generation", ""]
        lines += [*_table(list(gen), [list(gen.values())]), ""]
    return "\n".join(lines)


def confusion_picture(confusion: np.ndarray, class_names: list[str]) -> Image.Image:
    """Rows ground truth, columns prediction, each row normalised to 1 (white 0 .. dark blue 1)."""
    c = len(class_names)
    cell = int(np.clip(480 // max(c, 1), 4, 40))
    rows = confusion.sum(1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    font = ImageFont.load_default()
    labels = [f"{k} {name}"[:18] for k, name in enumerate(class_names)]
    left, top = 8 + 6 * max(len(s) for s in labels) if cell >= 10 else 8, 34
    image = Image.new("RGB", (max(left + c * cell + 10, 380), top + c * cell + 30), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((4, 2), "confusion: rows ground truth, columns prediction (row share)", fill=(0, 0, 0), font=font)
    colours = (255 - share[..., None] * np.array([215, 160, 90])).astype(np.uint8)  # white -> dark blue
    grid = np.repeat(np.repeat(colours, cell, 0), cell, 1)
    image.paste(Image.fromarray(grid), (left, top))
    for k in range(c):
        if cell >= 10:
            draw.text((4, top + k * cell + (cell - 10) // 2), labels[k], fill=(0, 0, 0), font=font)
            draw.text((left + k * cell + 1, top - 12), str(k), fill=(0, 0, 0), font=font)
        if cell >= 28:
            for j in range(c):
                colour = (255, 255, 255) if share[k, j] > 0.5 else (0, 0, 0)
                draw.text((left + j * cell + 2, top + k * cell + cell // 2 - 5), f"{share[k, j]:.2f}", fill=colour,
                          font=font)
    draw.text((left, top + c * cell + 8), "prediction ->", fill=(0, 0, 0), font=font)
    return image


def thumbnail(array: np.ndarray, side: int = PICTURE_SIDE) -> np.ndarray:
    """Every n-th pixel (nearest), so that the longer side is at most ``side``."""
    step = max(1, -(-max(array.shape[:2]) // side))
    return array[::step, ::step]


def tokens_picture(tokenizer, panels: list[tuple[str, np.ndarray]]) -> Image.Image:
    """Token sequences side by side, each drawn as its runs on the mask grid, with a caption."""
    from .tokens import Runs

    scale = max(2, 320 // max(tokenizer.mask_size))
    font = ImageFont.load_default()
    drawn = []
    for caption, tokens in panels:
        if getattr(tokenizer, "task", None) == "panoptic":
            groups = tokenizer.decode_groups(tokens, errors="ignore")
            runs = Runs(*(np.concatenate([getattr(g.runs, f) for g in groups] or [np.zeros(0, np.int64)])
                          for f in ("starts", "lengths", "classes")))
        else:
            runs = tokenizer.decode_runs(tokens, errors="ignore")
        picture = draw_runs(runs, tokenizer.mask_size, tokenizer.num_classes, tokenizer.order, scale)
        drawn.append((f"{caption}: {len(runs)} runs, {len(tokens)} tokens", picture))
    width = sum(p.width for _, p in drawn) + 8 * (len(drawn) - 1)
    sheet = Image.new("RGB", (max(width, 200), max(p.height for _, p in drawn) + 16), (255, 255, 255))
    draw, x = ImageDraw.Draw(sheet), 0
    for caption, picture in drawn:
        draw.text((x + 2, 2), caption, fill=(0, 0, 0), font=font)
        sheet.paste(picture, (x, 16))
        x += picture.width + 8
    return sheet


# ----------------------------------------------------------------------------- model evaluation
def evaluate_checkpoint(checkpoint: str | Path, out: str | Path, *, config: str | Path | None = None,
                        overrides: list[str] = (), split: str = "val", images: str | Path | None = None,
                        masks: str | Path | None = None, mask_suffix: str = "", class_names: list[str] | None = None,
                        num_classes: int | None = None, ignore_index: int | None = None, options: dict | None = None,
                        limit: int | None = None, pictures: int = 4, tolerance: int | None = 2, device=None,
                        overwrite: bool = False, progress: bool = True, window_stride: int | None = None
                        ) -> dict[str, Any]:
    """Predict every image of a dataset with the model of ``checkpoint`` and write the report to ``out``.

    Data: ``images`` + ``masks`` folders (paired by stem), or the dataset of a run config (``config``,
    default the run folder's config.yaml) at ``split``. ``options``: :class:`rleseg.api.InferenceOptions`
    fields. Video checkpoints: see the module doc (``limit`` counts sequences, ``pictures`` frames of
    the first sequence, ``window_stride`` in frames).
    """
    from .api import InferenceOptions, Predictor, resolve_checkpoint, resolve_device
    from .models import load_checkpoint

    path = resolve_checkpoint(checkpoint)
    model = load_checkpoint(path, resolve_device(device))
    tokenizer = model.tokenizer
    if num_classes is not None and num_classes != tokenizer.num_classes:
        raise ValueError(f"--num-classes {num_classes} does not match the checkpoint's {tokenizer.num_classes} "
                         f"classes ({path})")
    options = dict(options or {})
    if getattr(tokenizer, "task", None) == "video":
        return _evaluate_video(path, model, out, config=config, overrides=overrides, split=split, images=images,
                               masks=masks, class_names=class_names, ignore_index=ignore_index, options=options,
                               limit=limit, pictures=pictures, tolerance=tolerance, overwrite=overwrite,
                               progress=progress, window_stride=window_stride)
    if window_stride is not None:
        raise ValueError("--window-stride is for video checkpoints; this one is an image model")
    dataset, names, ignore, source = _dataset(path, model, config, overrides, split, images, masks, mask_suffix,
                                              class_names, ignore_index, options)
    predictor = Predictor(model, InferenceOptions(**options))
    panoptic = getattr(tokenizer, "task", None) == "panoptic"
    things = (list(tokenizer.thing_classes), list(tokenizer.stuff_classes)) if panoptic else None
    scorer = Scorer(names, ignore, tolerance, things)
    count = dataset.num_images() if limit is None else min(limit, dataset.num_images())
    totals = dict.fromkeys(("patches", "tokens", "generated_runs", "invalid_runs", "truncated"), 0)

    def samples():
        for index in range(count):
            data = dataset.read(index)
            dataset.check_read(data, index)
            yield data["image"], data

    with atomic_output(out, overwrite) as tmp:
        stream = predictor.run_with(samples())
        for index, (pred, data) in enumerate(_progress(stream, progress, "evaluate", count)):
            name = str(data.get("name", index))
            counts = {"patches": len(pred.boxes), "tokens": pred.num_tokens, "generated_runs": pred.generated_runs,
                      "invalid_runs": pred.invalid_runs, "truncated": pred.truncated}
            for key, value in counts.items():
                totals[key] += value
            scorer.add(name, pred.labels, np.asarray(data["mask"]), pred.instances, data.get("instances"), **counts)
            if index < pictures:
                (tmp / "pictures").mkdir(exist_ok=True)
                panel = comparison_panel(thumbnail(data["image"]), thumbnail(np.asarray(data["mask"])),
                                         thumbnail(pred.labels), names, title=name)
                panel.save(tmp / "pictures" / f"{index:04d}_{_safe(name)}.png")
            if index == 0:
                _first_tokens_picture(tmp, name, data, pred, predictor, ignore)
        o = predictor.options
        settings = {"mode": o.mode, "stride": o.stride or predictor.patch_size, "patch_size": predictor.patch_size,
                    "factor": predictor.factor, "scale": o.scale, "temperature": o.temperature, "top_p": o.top_p,
                    "max_len": o.max_len or model.config.max_seq_len, "ignore_index": ignore,
                    "boundary_tolerance": tolerance}
        results = {"source": {"checkpoint": str(path), **source}, **scorer.results(),
                   "generation": {**totals, "constrained": o.constrained}, "settings": settings}
        write_report(tmp, results, scorer.rows)
    return results


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:80]


def _dataset(path: Path, model, config, overrides, split, images, masks, mask_suffix, class_names, ignore_index,
             options: dict):
    """(dataset, class names, ignore_index, source description); fills scale/stride defaults in ``options``."""
    from .data import FolderDataset, PatchConfig

    tokenizer = model.tokenizer
    factor = model.config.image_size // tokenizer.mask_size[0]
    if images is not None or masks is not None:
        if images is None or masks is None:
            raise ValueError("give both --images DIR and --masks DIR")
        ignore = 255 if ignore_index is None else ignore_index
        patch = PatchConfig(patch_size=model.config.image_size, factor=factor)
        dataset = FolderDataset(".", tokenizer, patch=patch, images=str(images), masks=str(masks),
                                mask_suffix=mask_suffix, ignore_index=ignore)
        return dataset, class_names_for(tokenizer.num_classes, class_names), ignore, {"images": str(images),
                                                                                      "masks": str(masks)}
    from .experiment import build_datasets, load_config

    config = Path(config) if config is not None else path.parent / "config.yaml"
    if not config.is_file():
        raise ValueError(f"no data to evaluate on: {config} does not exist; give --config RUN/config.yaml, "
                         "--images DIR --masks DIR, or --pred-dir/--gt-dir")
    experiment = load_config(config, list(overrides))
    if experiment.data.num_classes != tokenizer.num_classes:
        raise ValueError(f"{config}: data.num_classes is {experiment.data.num_classes}, the checkpoint {path} has "
                         f"{tokenizer.num_classes} classes")
    train, val = build_datasets(experiment, tokenizer)
    dataset = val if split == "val" else train
    if hasattr(dataset, "frames") != (getattr(tokenizer, "task", None) == "video"):
        kind = "a video" if hasattr(dataset, "frames") else "an image"
        raise ValueError(f"{config}: {kind} dataset ({experiment.data.dataset}), but the checkpoint {path} is "
                         f"{'not ' if kind == 'a video' else ''}a video model")
    options.setdefault("scale", experiment.data.patch.scale)
    if options.get("stride") is None:
        options["stride"] = experiment.data.patch.stride
    ignore = experiment.data.ignore_index if ignore_index is None else ignore_index
    names = class_names_for(tokenizer.num_classes, class_names or experiment.class_names())
    return dataset, names, ignore, {"config": str(config), "split": split, "dataset": experiment.data.dataset}


def _first_tokens_picture(folder: Path, name: str, data: dict, pred, predictor, ignore: int | None) -> None:
    """tokens_<name>.png: the first patch of the image, ground-truth tokens beside the generated ones."""
    from .data.patches import crop, resize, scaled_shape
    from .tokens import downsample_mask

    tokenizer, box = predictor.tokenizer, pred.boxes[0]
    shape = scaled_shape(np.shape(data["mask"]), pred.scale)

    def small(array: np.ndarray, fill: int) -> np.ndarray:
        part = crop(resize(np.asarray(array, np.int64), shape, -2, linear=False), box, fill, -2)
        return downsample_mask(part, predictor.factor, "nearest")

    panels = []
    try:
        mask = small(data["mask"], -1 if ignore is None else ignore)
        mask = np.where((mask < 0) | (mask == ignore), 0, mask)
        if predictor.panoptic:
            truth = tokenizer.encode(mask, small(data["instances"], 0)) if "instances" in data else None
        else:
            truth = tokenizer.encode(mask)
        if truth is not None:
            panels.append(("ground truth", truth))
    except ValueError:  # a ground truth the tokenizer cannot encode (e.g. thing pixels without instance id)
        pass
    panels.append(("generated", pred.tokens[0]))
    tokens_picture(tokenizer, panels).save(folder / f"tokens_{_safe(name)}.png")


# ----------------------------------------------------------------------------- video model evaluation
def _evaluate_video(path: Path, model, out, *, config, overrides, split, images, masks, class_names, ignore_index,
                    options: dict, limit, pictures: int, tolerance, overwrite: bool, progress: bool,
                    window_stride: int | None) -> dict[str, Any]:
    from .api import InferenceOptions, Predictor
    from .metrics import VideoMeter

    tokenizer = model.tokenizer
    with _video_dataset(path, model, config, overrides, split, images, masks, class_names, ignore_index,
                        options) as (dataset, names, ignore, source):
        predictor = Predictor(model, InferenceOptions(**options))
        stride = tokenizer.frames if window_stride is None else window_stride
        meter = VideoMeter(tokenizer.num_classes, ignore, 0, tolerance)
        count = dataset.num_sequences() if limit is None else min(limit, dataset.num_sequences())
        totals = dict.fromkeys(("windows", "patches", "tokens", "generated_runs", "invalid_runs", "truncated"), 0)
        rows: list[dict[str, Any]] = []
        with atomic_output(out, overwrite) as tmp:
            for seq in _progress(range(count), progress, "evaluate"):
                name = dataset.sequence_name(seq)
                data = dataset.read_frames(seq, 0, dataset.sequence_length(seq))
                pred = predictor.run_video(data["image"], stride)
                gt = np.asarray(data["mask"])
                try:
                    scores = meter.update(pred.labels, gt)
                except ValueError as error:
                    raise ValueError(f"sequence {name}: {error}") from None
                for key, value in (("windows", len(pred.starts)), ("patches", pred.patches), ("tokens", pred.tokens),
                                   ("generated_runs", pred.generated_runs), ("invalid_runs", pred.invalid_runs),
                                   ("truncated", pred.truncated)):
                    totals[key] += value
                for frame in range(len(gt)):
                    row: dict[str, Any] = {"sequence": name, "frame": frame, "height": gt.shape[1],
                                           "width": gt.shape[2],
                                           "pixel_accuracy": _number(scores["pixel_accuracy"][frame])}
                    for score in ("dice", "iou"):
                        present = scores[score][frame][~np.isnan(scores[score][frame])]
                        row[f"mean_{score}"] = _number(present.mean()) if present.size else None
                    for score in ("dice", "iou"):
                        row.update({f"{score}_{c}": _number(v) for c, v in enumerate(scores[score][frame])})
                    rows.append(row)
                if seq == 0:
                    for frame in range(min(pictures, len(gt))):
                        (tmp / "pictures").mkdir(exist_ok=True)
                        title = f"{name} frame {frame}"
                        panel = comparison_panel(thumbnail(data["image"][frame]), thumbnail(gt[frame]),
                                                 thumbnail(pred.labels[frame]), names, title=title)
                        panel.save(tmp / "pictures" / f"{_safe(name)}_frame_{frame:04d}.png")
            o = predictor.options
            settings = {"mode": o.mode, "stride": o.stride or predictor.patch_size, "patch_size": predictor.patch_size,
                        "factor": predictor.factor, "scale": o.scale, "frames": tokenizer.frames,
                        "window_stride": stride, "temperature": o.temperature, "top_p": o.top_p,
                        "max_len": o.max_len or model.config.max_seq_len, "ignore_index": ignore,
                        "boundary_tolerance": tolerance}
            computed = meter.compute()
            results = {"source": {"checkpoint": str(path), **source}, "class_names": names,
                       "num_images": computed["num_images"], "num_videos": computed["num_videos"],
                       "semantic": {k: v for k, v in computed.items() if k not in ("num_videos", "temporal")},
                       "temporal": computed["temporal"], "generation": {**totals, "constrained": o.constrained},
                       "settings": settings}
            write_report(tmp, results, rows, "per_frame.csv")
    return results


@contextlib.contextmanager
def _video_dataset(path: Path, model, config, overrides, split, images, masks, class_names, ignore_index,
                   options: dict):
    """(dataset, class names, ignore_index, source) of a video evaluation, as :func:`_dataset`."""
    from .data import PatchConfig
    from .data.video import VideoFolderDataset

    tokenizer = model.tokenizer
    if images is None and masks is None:
        yield _dataset(path, model, config, overrides, split, images, masks, "", class_names, ignore_index, options)
        return
    if images is None or masks is None:
        raise ValueError("give both --images DIR and --masks DIR")
    for folder in (Path(images), Path(masks)):
        if not folder.is_dir():
            raise ValueError(f"{folder}: no such folder; a video model evaluates folders of sequences (one frame "
                             "folder or multi-page TIFF per sequence)")
    ignore = 255 if ignore_index is None else ignore_index
    factor = model.config.image_size // tokenizer.mask_size[0]
    # VideoFolderDataset reads ROOT/images and ROOT/masks: link the two folders under a scratch root.
    root = Path(tempfile.mkdtemp(prefix="rleseg-video-"))
    try:
        (root / "images").symlink_to(Path(images).resolve(), target_is_directory=True)
        (root / "masks").symlink_to(Path(masks).resolve(), target_is_directory=True)
        patch = PatchConfig(patch_size=model.config.image_size, factor=factor)
        try:
            dataset = VideoFolderDataset(root, tokenizer, tokenizer.frames, patch=patch, ignore_index=ignore)
        except ValueError as error:
            raise ValueError(str(error).replace(str(root / "images"), str(images)).replace(
                str(root / "masks"), str(masks))) from None
        yield dataset, class_names_for(tokenizer.num_classes, class_names), ignore, {"images": str(images),
                                                                                     "masks": str(masks)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
