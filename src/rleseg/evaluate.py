"""``rleseg evaluate``: score a model on a dataset, or prediction PNGs against ground-truth PNGs.

Both write one folder (atomically: built under a temporary name beside it, renamed at the end, so an
error or an interruption leaves nothing behind; a folder that is or holds an input, the checkpoint or
its data is refused; the files are :mod:`rleseg.report`'s):

    metrics.json    :func:`rleseg.report.metrics_document`, the layout training's validation writes too:
                    SegmentationMeter.compute() (both aggregations, per class), class names, panoptic
                    PQ / SQ / RQ for panoptic models, generation counts (invalid runs, truncated sequences)
    metrics.md      the same as markdown tables
    per_image.csv   one row per image: size, pixel accuracy, mean Dice / IoU over the classes present
                    without background (``mean_dice_without_background``, as the headline), generation
                    counts (token models), Dice / IoU per class
    confusion.png   the confusion matrix, rows normalised (ground truth -> predicted)
    pictures/       image | ground truth | prediction panels of the first images (model evaluation)
    tokens_<name>.png  token models: the first patch of the first image as runs, ground-truth and generated tokens

A token model's metrics.json also holds ``generation`` (patches, tokens, runs, truncated sequences, passes,
``constrained``) and, when it refines, ``refinement``: the share of the patch pixels its boundary refiner
changed (:class:`rleseg.metrics.RefinementMeter`); a dense model's holds neither.
    panoptic/, panoptic.json  panoptic models: the predictions in COCO panoptic format (:mod:`rleseg.coco`):
                    ``panoptic/<index>_<name>.png``, the image's ``file_name`` its name in the dataset

Video checkpoints (tokenizer task "video") are scored per whole sequence: every sequence of the data
(the config's video dataset, or ``--images DIR --masks DIR`` laid out as ``VideoFolderDataset`` expects:
one frame folder or TIFF stack per sequence) is predicted with ``Predictor.run_video`` (windows every
``window_stride`` frames, default N as in the paper) and scored with ``VideoMeter``: metrics.json gains
``num_videos`` and ``temporal`` (flip rates), and the table is ``per_frame.csv``.

Scoring folders (``score_folders``) imports no torch: it reads PNG/TIFF label maps paired by file stem.
Model evaluation (``evaluate_checkpoint``) predicts full images with :class:`rleseg.inference.Predictor`
(the paper's patch -> predict -> stitch pipeline, or whole images) and scores at full resolution; it
imports the torch side (inference, models, datasets) inside its functions to keep it so.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import check_output_folder, output_folder
from .coco import CocoOutput
from .imageio import read_label_map
from .metrics import PanopticMeter, RefinementMeter, SegmentationMeter, VideoMeter
from .progress import progress as progress_bar
from .report import metrics_document, safe_name, save_comparison, table_row, write_report
from .stats import find_masks
from .visualize import tokens_picture


def class_names_for(num_classes: int, names: list[str] | None) -> list[str]:
    if names is None:
        return [f"class {c}" for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names given for {num_classes} classes")
    return list(names)


class ImageScores:
    """The scores of a set of images: semantic (and optionally panoptic) meters plus one table row per image."""

    def __init__(self, class_names: list[str], ignore_index: int | None, tolerance: int | None,
                 things: tuple[list[int], list[int]] | None = None):
        self.class_names = class_names
        self.semantic = SegmentationMeter(len(class_names), ignore_index, 0, tolerance)
        self._panoptic_args = None if things is None else (len(class_names), *things, ignore_index)
        self.panoptic = None if things is None else PanopticMeter(*self._panoptic_args)
        self.refinement = RefinementMeter()  # filled by the caller for models that refine
        self.rows: list[dict[str, Any]] = []

    def add(self, name: str, pred: np.ndarray, gt: np.ndarray, pred_instances: np.ndarray | None = None,
            gt_instances: np.ndarray | None = None, **extra: Any) -> None:
        """Score one (H, W) prediction against its ground truth; ``extra`` joins its table row."""
        if pred.shape != gt.shape:
            raise ValueError(f"{name}: prediction is {pred.shape[0]}x{pred.shape[1]}, ground truth "
                             f"{gt.shape[0]}x{gt.shape[1]}; expected equal sizes")
        try:
            scores = self.semantic.update(pred, gt)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        if self.panoptic is not None and gt_instances is not None:
            image = PanopticMeter(*self._panoptic_args)
            image.update(pred, pred_instances, gt, gt_instances)
            computed = image.compute()
            extra = {"pq": computed["all"]["pq"], "objects": computed["objects"]["true"],
                     "predicted_objects": computed["objects"]["predicted"], **extra}
            self.panoptic.merge(image)
        self.rows.append(table_row({"name": name, "height": gt.shape[0], "width": gt.shape[1]}, scores, 0, extra))

    def results(self, task: str, what: str, num_patches: int | None = None, **extra: Any) -> dict[str, Any]:
        """metrics.json (:func:`rleseg.report.metrics_document`); ``extra``: source, generation, settings."""
        scores = self.semantic.compute()
        if self.panoptic is not None and any("pq" in row for row in self.rows):
            scores["panoptic"] = self.panoptic.compute()
        refinement = self.refinement.compute()
        if refinement is not None:
            scores["refinement"] = refinement
        return metrics_document(task, what, self.class_names, len(self.rows), scores, num_patches, **extra)


# ----------------------------------------------------------------------------- prediction folders
def score_folders(pred_dir: str | Path, gt_dir: str | Path, num_classes: int, out: str | Path,
                  ignore_index: int | None = None, class_names: list[str] | None = None, tolerance: int | None = 2,
                  overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Score label maps in ``pred_dir`` against those in ``gt_dir`` (paired by stem); write the report."""
    scores = ImageScores(class_names_for(num_classes, class_names), ignore_index, tolerance)
    check_output_folder(out, (pred_dir, gt_dir))
    pairs = pair_by_stem(Path(pred_dir), Path(gt_dir))
    with output_folder(out, overwrite, "evaluate") as tmp:
        for stem, pred_path, gt_path in progress_bar(pairs, desc="evaluate", unit="image", enabled=progress):
            pred, gt = read_label_map(pred_path), read_label_map(gt_path)
            if pred.shape != gt.shape:
                raise ValueError(f"{pred_path}: prediction is {pred.shape[0]}x{pred.shape[1]}, {gt_path} is "
                                 f"{gt.shape[0]}x{gt.shape[1]}; expected equal sizes")
            scores.add(stem, pred, gt)
        results = scores.results("semantic", "label maps", source={"pred_dir": str(pred_dir), "gt_dir": str(gt_dir)})
        write_report(tmp, results, scores.rows)
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
    default the run folder's config.yaml) at ``split``. ``options``: the flat fields of
    :meth:`rleseg.inference.InferenceOptions.from_fields`. Video checkpoints: see the module doc (``limit``
    counts sequences, ``pictures`` frames of the first sequence, ``window_stride`` in frames).
    """
    from .device import resolve_device
    from .inference import InferenceOptions, Predictor
    from .models import checkpoint_classes, load_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    model = load_checkpoint(path, resolve_device(device))
    stored_names, colours = checkpoint_classes(path)
    tokenizer = model.tokenizer
    if num_classes is not None and num_classes != tokenizer.num_classes:
        raise ValueError(f"--num-classes {num_classes} does not match the checkpoint's {tokenizer.num_classes} "
                         f"classes ({path})")
    if window_stride is not None and tokenizer.task != "video":
        raise ValueError("--window-stride is for video checkpoints; this one is an image model")
    options = dict(options or {})
    dataset, names, ignore, source = _dataset(path, model, config, overrides, split, images, masks, mask_suffix,
                                              class_names or stored_names, ignore_index, options)
    predictor = Predictor(model, InferenceOptions.from_fields(**options), class_names=names, class_colours=colours)
    data = [source[key] for key in ("images", "masks", "root") if source.get(key) is not None]
    check_output_folder(out, [path, *[source[key] for key in ("config",) if key in source]], trees=data)
    source = {"checkpoint": str(path), **source}
    with output_folder(out, overwrite, "evaluate") as tmp:
        if tokenizer.task == "video":
            results, rows = _evaluate_videos(predictor, dataset, tmp, names, ignore, limit, pictures, tolerance,
                                             progress, window_stride)
        else:
            results, rows = _evaluate_images(predictor, dataset, tmp, names, ignore, limit, pictures, tolerance,
                                             progress)
        results = {**results, "source": source}
        write_report(tmp, results, rows, "per_frame.csv" if tokenizer.task == "video" else "per_image.csv")
    return results


def _evaluate_images(predictor, dataset, folder: Path, names: list[str], ignore: int | None, limit: int | None,
                     pictures: int, tolerance: int | None, progress: bool) -> tuple[dict[str, Any], list[dict]]:
    """(results, table rows) of an image model on ``dataset``; pictures go into ``folder``. Token counts, the
    token picture and generation settings only for models that write tokens."""
    tokenizer = predictor.tokenizer
    writes_tokens = predictor.model.max_seq_len is not None
    things = (list(tokenizer.thing_classes), list(tokenizer.stuff_classes)) if predictor.panoptic else None
    scores = ImageScores(names, ignore, tolerance, things)
    count = dataset.num_images() if limit is None else min(limit, dataset.num_images())
    totals = Counter()
    panoptic = CocoOutput(folder, names, False, things[0]) if predictor.panoptic else None

    def samples():
        for index in range(count):
            data = dataset.read(index)
            dataset.check_read(data, index)
            yield data["image"], data

    stream = predictor.run_with(samples())
    for index, (pred, data) in enumerate(progress_bar(stream, desc="evaluate", unit="image", enabled=progress,
                                                      total=count)):
        name = str(data.get("name", index))
        counts = pred.counts if writes_tokens else {"patches": len(pred.boxes)}
        totals.update(counts)
        if pred.redrawn is not None:
            scores.refinement.update(pred.redrawn, len(pred.boxes) * predictor.patch_size**2)
        scores.add(name, pred.labels, np.asarray(data["mask"]), pred.instances, data.get("instances"),
                   **(counts if writes_tokens else {}))
        if index < pictures:
            save_comparison(folder, f"{index:04d}_{safe_name(name)}", data["image"], data["mask"], pred.labels, names,
                            name, predictor.class_colours)
        if index == 0 and writes_tokens:
            _first_tokens_picture(folder, name, data, pred, predictor, ignore)
        if panoptic is not None:
            panoptic.add(f"{index:06d}_{safe_name(name)}", name, pred.labels, pred.instances, pred.scores)
    if panoptic is not None:
        panoptic.write()
    generation = {**totals, "constrained": predictor.options.decoding.constrained}
    results = scores.results(tokenizer.task, _what(predictor), totals["patches"],
                             **({"generation": generation} if writes_tokens else {}),
                             settings=_settings(predictor, ignore, tolerance))
    return results, scores.rows


def _evaluate_videos(predictor, dataset, folder: Path, names: list[str], ignore: int | None, limit: int | None,
                     pictures: int, tolerance: int | None, progress: bool, window_stride: int | None
                     ) -> tuple[dict[str, Any], list[dict]]:
    """(results, per-frame table rows) of a video model on ``dataset``, one whole sequence at a time."""
    frames = predictor.frames
    stride = frames if window_stride is None else window_stride
    meter = VideoMeter(predictor.num_classes, ignore, 0, tolerance)
    count = dataset.num_sequences() if limit is None else min(limit, dataset.num_sequences())
    totals, rows = Counter(), []
    for seq in progress_bar(range(count), desc="evaluate", unit="video", enabled=progress):
        name = dataset.sequence_name(seq)
        data = dataset.read_frames(seq, 0, dataset.sequence_length(seq))
        pred = predictor.run_video(data["image"], stride)
        gt = np.asarray(data["mask"])
        try:
            scores = meter.update(pred.labels, gt)
        except ValueError as error:
            raise ValueError(f"sequence {name}: {error}") from None
        totals.update(pred.counts)
        rows += [table_row({"sequence": name, "frame": frame, "height": gt.shape[1], "width": gt.shape[2]}, scores,
                           frame) for frame in range(len(gt))]
        if seq == 0:
            for frame in range(min(pictures, len(gt))):
                save_comparison(folder, f"{safe_name(name)}_frame_{frame:04d}", data["image"][frame], gt[frame],
                                pred.labels[frame], names, f"{name} frame {frame}", predictor.class_colours)
    computed = meter.compute()
    results = metrics_document("video", _what(predictor), names, computed["num_images"], computed, totals["patches"],
                               generation={**totals, "constrained": predictor.options.decoding.constrained},
                               settings=_settings(predictor, ignore, tolerance, frames=frames, window_stride=stride))
    return results, rows


def _what(predictor) -> str:
    """metrics.json "what": full images from stitched patches, or whole images scaled to the model input."""
    return "stitched images" if predictor.options.mode == "patches" else "whole images"


def _settings(predictor, ignore: int | None, tolerance: int | None, **video: int) -> dict[str, Any]:
    """How the images were predicted and scored (metrics.json "settings"); ``video``: frames, window_stride."""
    o, model = predictor.options, predictor.model
    d = o.decoding
    decoding = {}
    if model.max_seq_len is not None:  # a model that writes tokens; "refined": its refiner redrew the masks
        decoding = {"temperature": d.temperature, "top_k": d.top_k, "top_p": d.top_p,
                    "max_len": d.max_len or model.max_seq_len, "method": d.method,
                    "earliest_instance": d.earliest_instance,
                    "refined": predictor.stitch_factor != predictor.factor}
    return {"mode": o.mode, "stride": o.stride or predictor.patch_size, "patch_size": predictor.patch_size,
            "factor": predictor.factor, "scale": o.scale, **video, **decoding, "precision": o.precision,
            "panoptic_join": o.panoptic_join, "join_iou": o.join_iou, "ignore_index": ignore,
            "boundary_tolerance": tolerance}


def _dataset(path: Path, model, config, overrides, split, images, masks, mask_suffix, class_names, ignore_index,
             options: dict):
    """(dataset, class names, ignore_index, source description); fills scale/stride defaults in ``options``."""
    from .data import FolderDataset, PatchConfig, VideoFolderDataset
    from .experiment import build_datasets, load_config
    from .inference import stored_normalization

    tokenizer = model.tokenizer
    if images is not None or masks is not None:
        if images is None or masks is None:
            raise ValueError("give both --images DIR and --masks DIR")
        ignore = 255 if ignore_index is None else ignore_index
        size = model.config.image_size
        patch = PatchConfig(patch_size=size, factor=size // tokenizer.mask_size[0])
        folders = {"images": str(images), "masks": str(masks)}
        normalization = stored_normalization(path)  # what training used; the run config's data.normalize too
        if tokenizer.task == "video":
            dataset = VideoFolderDataset(".", tokenizer, tokenizer.frames, patch=patch, ignore_index=ignore,
                                         normalization=normalization, **folders)
        else:
            dataset = FolderDataset(".", tokenizer, patch=patch, mask_suffix=mask_suffix, ignore_index=ignore,
                                    normalization=normalization, **folders)
        return dataset, class_names_for(tokenizer.num_classes, class_names), ignore, folders
    config = Path(config) if config is not None else path.parent / "config.yaml"
    if not config.is_file():
        raise ValueError(f"no data to evaluate on: {config} does not exist; give --config RUN/config.yaml, "
                         "--images DIR --masks DIR, or --pred-dir/--gt-dir")
    # Only the config's data counts (the model is the checkpoint's), so a dense run's token settings are kept.
    experiment = load_config(config, list(overrides), keep_token_settings=True)
    if experiment.data.num_classes != tokenizer.num_classes:
        raise ValueError(f"{config}: data.num_classes is {experiment.data.num_classes}, the checkpoint {path} has "
                         f"{tokenizer.num_classes} classes")
    train, val = build_datasets(experiment, tokenizer)
    dataset = val if split == "val" else train
    if hasattr(dataset, "frames") != (tokenizer.task == "video"):
        kind = "a video" if hasattr(dataset, "frames") else "an image"
        raise ValueError(f"{config}: {kind} dataset ({experiment.data.dataset}), but the checkpoint {path} is "
                         f"{'not ' if kind == 'a video' else ''}a video model")
    options.setdefault("scale", experiment.data.patch.scale)
    if options.get("stride") is None:
        options["stride"] = experiment.data.patch.stride
    ignore = experiment.data.ignore_index if ignore_index is None else ignore_index
    names = class_names_for(tokenizer.num_classes, class_names or experiment.class_names())
    return dataset, names, ignore, {"config": str(config), "split": split, "dataset": experiment.data.dataset,
                                    "root": experiment.data.root}


def _first_tokens_picture(folder: Path, name: str, data: dict, pred, predictor, ignore: int | None) -> None:
    """tokens_<name>.png: the first patch of the image, ground-truth tokens beside the generated ones."""
    tokenizer, box = predictor.tokenizer, pred.boxes[0]
    panels = []
    try:
        mask = predictor.label_patch(data["mask"], pred.scale, box, -1 if ignore is None else ignore)
        mask = np.where((mask < 0) | (mask == ignore), 0, mask)
        if not predictor.panoptic:
            panels.append(("ground truth", tokenizer.encode(mask)))
        elif "instances" in data:
            instances = predictor.label_patch(data["instances"], pred.scale, box, 0)
            panels.append(("ground truth", tokenizer.encode(mask, instances)))
    except ValueError:  # a ground truth the tokenizer cannot encode (e.g. thing pixels without instance id)
        pass
    panels.append(("generated", pred.tokens[0]))
    tokens_picture(tokenizer, panels).save(folder / f"tokens_{safe_name(name)}.png")
