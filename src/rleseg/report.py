"""The evaluation report: metrics.json, metrics.md, the per-image (per-frame) CSV table, confusion.png
and the comparison pictures, written into a folder that ``rleseg evaluate`` then puts in place atomically.

numpy + Pillow only, so scoring prediction folders stays free of torch.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .visualize import comparison_panel

PICTURE_SIDE = 384  # longest side of the images in the comparison panels
METRICS_SCHEMA = "rleseg.metrics/1"  # the layout of metrics.json (:func:`metrics_document`)


def metrics_document(task: str, what: str, class_names: list[str], num_images: int, scores: dict[str, Any],
                     num_patches: int | None = None, **extra: Any) -> dict[str, Any]:
    """The layout of every metrics.json, from ``rleseg train``'s validations and from ``rleseg evaluate``::

        {"schema": "rleseg.metrics/1", "task": "semantic" | "panoptic" | "video",
         "what": "patches" | "stitched images" | "whole images" | "label maps",
         "class_names": [C], "num_images": images scored (video: frames),
         "num_patches": patches predicted (video: windows of frames x patches), where patches were,
         "num_videos": video only, "semantic": SegmentationMeter.compute(),
         "panoptic": PanopticMeter.compute() (panoptic), "temporal": flip rates (video),
         "refinement": RefinementMeter.compute() (models that refine), **extra}

    ``scores``: a meter's compute(), optionally with "panoptic", "temporal", "refinement" and "num_videos"
    beside the semantic scores (as ``PatchScores.compute`` and ``VideoMeter.compute`` give them). ``extra``:
    what one job adds (train: step, metric, value; evaluate: source, generation, settings).
    """
    split = ("panoptic", "temporal", "refinement", "num_videos")
    document = {"schema": METRICS_SCHEMA, "task": task, "what": what, "class_names": list(class_names),
                "num_images": int(num_images)}
    if num_patches is not None:
        document["num_patches"] = int(num_patches)
    if "num_videos" in scores:
        document["num_videos"] = scores["num_videos"]
    document["semantic"] = {key: value for key, value in scores.items() if key not in split}
    document.update({key: scores[key] for key in ("panoptic", "temporal", "refinement") if key in scores})
    return {**document, **extra}


def table_row(head: dict[str, Any], scores: dict[str, np.ndarray], index: int, extra: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """One row of per_image.csv / per_frame.csv: ``head`` (name, size), the image's pixel accuracy and mean
    Dice / IoU over the classes present other than background (class 0), as the headline scores count them
    (``mean_dice_without_background``; empty where only background is present), ``extra`` (generation
    counts, PQ), then Dice and IoU per class, background included.

    ``scores``: what ``SegmentationMeter.update`` / ``VideoMeter.update`` return, (n, C) arrays with NaN
    for absent classes; ``index``: the image (frame) among their n.
    """
    row = {**head, "pixel_accuracy": _number(scores["pixel_accuracy"][index])}
    for score in ("dice", "iou"):
        foreground = scores[score][index][1:]
        present = foreground[~np.isnan(foreground)]
        row[f"mean_{score}_without_background"] = _number(present.mean()) if present.size else None
    row.update(extra or {})
    for score in ("dice", "iou"):
        row.update({f"{score}_{c}": _number(v) for c, v in enumerate(scores[score][index])})
    return row


def _number(value: float) -> float | None:
    return None if value is None or np.isnan(value) else round(float(value), 6)


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
        if "objects" in pq:  # thing objects matched at IoU > 0.5 (metrics/panoptic.py)
            objects = pq["objects"]
            lines += ["", *_table(["true objects", "predicted", "matched", "precision", "recall", "F1 at IoU 0.5"],
                                  [list(objects.values())])]
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
    if "refinement" in results:
        lines += ["## Boundary refinement", "", refinement_line(results["refinement"]), ""]
    return "\n".join(lines)


def refinement_line(refinement: dict[str, Any]) -> str:
    """"The refiner changed N of M patch pixels (x%) ...": what a report says beside "refined"."""
    return (f"The refiner changed {refinement['changed_pixels']:,} of {refinement['patch_pixels']:,} patch pixels "
            f"({100 * refinement['changed_share']:.2f}%) from the decoded token mask")


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


def safe_name(name: str) -> str:
    """``name`` as a file name: characters other than letters, digits and ``-_.`` become ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:80]


def save_comparison(folder: Path, stem: str, image: np.ndarray, truth: np.ndarray, prediction: np.ndarray,
                    class_names: list[str], title: str, colours: np.ndarray | None = None) -> None:
    """pictures/<stem>.png: image | ground truth | prediction, each thumbnailed to :data:`PICTURE_SIDE`, with
    the legend of ``class_names`` in ``colours`` (default the palette)."""
    (folder / "pictures").mkdir(exist_ok=True)
    panel = comparison_panel(thumbnail(image), thumbnail(np.asarray(truth)), thumbnail(prediction), class_names,
                             title=title, colours=colours)
    panel.save(folder / "pictures" / f"{stem}.png")
