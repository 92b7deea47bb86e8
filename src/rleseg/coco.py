"""Predictions as COCO files that other tools read: results for pycocotools and panoptic PNGs.

:class:`CocoOutput` collects the predictions of a set of images and writes, into one folder:

    predictions.json  COCO results (``COCO(images.json).loadRes(predictions.json)``, ``COCOeval(..., "segm")``):
                      per image, one entry per class present (semantic models) or per instance and per
                      stuff class (panoptic): ``image_id``, ``category_id``, ``segmentation`` (compressed
                      RLE, ``counts`` a str) and ``score``
    images.json       what those entries refer to: ``images`` (``id`` 1, 2, ... in the order given,
                      ``file_name`` the input, ``height``, ``width``, ``name`` the output name) and
                      ``categories``
    panoptic/<name>.png, panoptic.json
                      panoptic models: COCO panoptic format, segment ids ``R + 256 G + 256**2 B`` and per
                      image ``segments_info`` (``id``, ``category_id``, ``area``, ``bbox``, ``iscrowd``, and
                      ``score``), with the same ``images`` and ``categories``

Category ids are the class indices, names the class names; background (class 0), which the sequences
never write, has no category and no entries. Panoptic categories carry ``isthing`` (the tokenizer's thing classes).

A segment's score is the mean of the image's per-pixel scores (``ImagePrediction.scores``) over its
pixels: for token models the probability the model gave to the tokens (start, length, class) of the
run that paints each pixel, so the mean over the segment's runs weighted by their pixels; for dense
models the softmax probability of the pixel's class. Predictions without scores (video models) get 1.0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .tokens.formats import coco_panoptic_ids, instance_map_to_coco_rles, label_map_to_coco_rles, panoptic_to_coco


def coco_categories(class_names: list[str], thing_classes: list[int] | None = None) -> list[dict]:
    """One category per class but background 0, ``id`` the class, ``name`` its name; ``isthing`` when
    ``thing_classes`` are given."""
    categories = [{"id": c, "name": name} for c, name in enumerate(class_names) if c > 0]
    if thing_classes is not None:
        categories = [{**c, "isthing": int(c["id"] in thing_classes)} for c in categories]
    return categories


def segment_scores(segments: np.ndarray, scores: np.ndarray | None, count: int) -> np.ndarray:
    """(count,) mean of the finite ``scores`` over the pixels of each segment id 0..count-1 of ``segments``
    (0.0 for a segment without one); 1.0 everywhere when ``scores`` is None."""
    if scores is None:
        return np.ones(count)
    finite = np.isfinite(scores)
    totals = np.bincount(segments[finite], weights=scores[finite], minlength=count)
    pixels = np.bincount(segments[finite], minlength=count)
    return np.divide(totals, pixels, out=np.zeros(count), where=pixels > 0)


def coco_results(image_id: int, labels: np.ndarray, instances: np.ndarray | None, scores: np.ndarray | None,
                 num_classes: int) -> list[dict]:
    """COCO results entries of one image: per class present (semantic), or per instance plus per stuff
    class (panoptic; instances: (H, W) ids, 0 = none). Background gets none."""
    def entry(category: int, rle: dict, score: float, area: int) -> dict:
        return {"image_id": image_id, "category_id": int(category), "score": float(score), "area": int(area),
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}}

    stuff = labels if instances is None else np.where(instances == 0, labels, 0)
    class_scores, areas = segment_scores(stuff, scores, num_classes), np.bincount(stuff.ravel(), minlength=num_classes)
    out = [entry(c, rle, class_scores[c], areas[c]) for c, rle in label_map_to_coco_rles(stuff, num_classes).items()]
    if instances is not None:
        count = int(instances.max(initial=0)) + 1
        category = np.zeros(count, np.int64)
        category[instances.ravel()] = labels.ravel()  # an instance covers one class
        instance_scores = segment_scores(instances, scores, count)
        areas = np.bincount(instances.ravel(), minlength=count)
        out += [entry(category[i], rle, instance_scores[i], areas[i])
                for i, rle in instance_map_to_coco_rles(instances).items()]
    return out


class CocoOutput:
    """Collects the predictions of images (:meth:`add`) and writes the COCO files (:meth:`write`), see the
    module doc. ``results``: predictions.json and images.json; ``thing_classes`` (panoptic models): the
    panoptic PNGs and panoptic.json too."""

    def __init__(self, folder: Path, class_names: list[str], results: bool, thing_classes: list[int] | None = None):
        self.folder, self.class_names, self.thing_classes = Path(folder), list(class_names), thing_classes
        self.images: list[dict] = []
        self.results: list[dict] | None = [] if results else None
        self.panoptic: list[dict] = []

    def add(self, name: str, origin: str, labels: np.ndarray, instances: np.ndarray | None = None,
            scores: np.ndarray | None = None) -> None:
        """One image: output ``name``, ``origin`` (its file), (H, W) labels, instance ids and scores."""
        image_id = len(self.images) + 1
        height, width = labels.shape
        self.images.append({"id": image_id, "file_name": origin, "height": height, "width": width, "name": name})
        if self.results is not None:
            self.results += coco_results(image_id, labels, instances, scores, len(self.class_names))
        if self.thing_classes is not None:
            self.panoptic.append(self._panoptic_png(image_id, name, labels, instances, scores))

    def _panoptic_png(self, image_id: int, name: str, labels: np.ndarray, instances: np.ndarray,
                      scores: np.ndarray | None) -> dict:
        rgb, segments_info = panoptic_to_coco(labels, instances)
        segment_ids = coco_panoptic_ids(rgb)
        mean = segment_scores(segment_ids, scores, len(segments_info) + 1)
        path = self.folder / "panoptic" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(path)
        return {"image_id": image_id, "file_name": f"{name}.png",
                "segments_info": [{**info, "score": float(mean[info["id"]])} for info in segments_info]}

    def write(self) -> None:
        """predictions.json and images.json (``results``), panoptic.json (panoptic models)."""
        categories = coco_categories(self.class_names, self.thing_classes)
        files = {}
        if self.results is not None:
            files["predictions.json"] = self.results
            files["images.json"] = {"images": self.images, "categories": categories}
        if self.thing_classes is not None:
            files["panoptic.json"] = {"images": self.images, "categories": categories, "annotations": self.panoptic}
        for file, data in files.items():
            (self.folder / file).write_text(json.dumps(data) + "\n")
        if self.results == []:  # pycocotools' loadRes fails on an empty list (it reads the first entry)
            print("rleseg: warning: predictions.json is empty: the model found no segment in any image; "
                  "pycocotools' COCO.loadRes cannot read an empty results list", file=sys.stderr)
