"""COCO panoptic: RGB segment-id PNGs + one JSON file.

Layout (the official download; every path configurable)::

    root/<split>/<image file>                         e.g. root/val2017/000000000139.jpg
    root/annotations/panoptic_<split>.json
    root/annotations/panoptic_<split>/<png file>      segment id = R + 256 G + 256^2 B

Labels: the JSON's categories, sorted by id, become labels 1..K (``categories``); void pixels (segment
id 0 or a segment the JSON does not list) and crowd segments become ``ignore_index`` (crowds have no
single instance; COCO's PQ ignores them too). ``instances`` holds the segment id of every pixel of a
non-crowd segment (things and stuff; the panoptic tokenizer ignores ids on stuff), 0 elsewhere. The
tokenizer has ``num_classes = K + 1``; a panoptic tokenizer's ``thing_classes`` should be
``dataset.thing_classes`` (checked for panoptic tokenizers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..imageio import image_shape, read_image
from ..tokens import MaskTokenizer
from .dataset import PatchDataset, default_patch
from .patches import PatchConfig


def coco_panoptic_categories(annotation_file: str | Path) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(names of labels 1..K, thing labels) of a panoptic JSON, to build the tokenizer first."""
    data = _load_json(Path(annotation_file))
    categories = sorted(data["categories"], key=lambda c: c["id"])
    names = tuple(c["name"] for c in categories)
    things = tuple(i + 1 for i, c in enumerate(categories) if c.get("isthing", 1))
    return names, things


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the panoptic JSON ({error})") from error
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{path}: no {key!r} list; expected a COCO panoptic annotation file")
    return data


def _inside(annotation_file: Path, name: object) -> str:
    """``name``, a file name the annotation file lists, when it names a file inside its folder; ValueError
    for an absolute path or one with ``..``, which would read files outside the data."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError(f"{annotation_file}: file_name {name!r} leaves its folder; expected a name relative to "
                         "the image or panoptic folder, without '..'")
    return name


class CocoPanopticDataset(PatchDataset):
    """The images of one split with their category labels and segment ids (module doc), cut into patches and
    tokenized on the fly like every ``PatchDataset``."""

    def __init__(self, root: str | Path, tokenizer: MaskTokenizer, split: str = "val2017",
                 patch: PatchConfig | None = None, annotation_file: str | Path | None = None,
                 panoptic_dir: str | Path | None = None, image_dir: str | Path | None = None, ignore_index: int = 255,
                 skip_bad: bool = False, seed: int = 0):
        root = Path(root)
        annotation_file = Path(annotation_file or root / "annotations" / f"panoptic_{split}.json")
        self.panoptic_dir = Path(panoptic_dir or root / "annotations" / f"panoptic_{split}")
        self.image_dir = Path(image_dir or root / split)
        data = _load_json(annotation_file)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.categories = tuple(c["name"] for c in categories)
        self.thing_classes = tuple(i + 1 for i, c in enumerate(categories) if c.get("isthing", 1))
        self._label_of_category = {c["id"]: i + 1 for i, c in enumerate(categories)}
        if tokenizer.num_classes != len(categories) + 1:
            raise ValueError(
                f"{annotation_file}: {len(categories)} categories need num_classes={len(categories) + 1}, "
                f"the tokenizer has {tokenizer.num_classes}"
            )
        if tokenizer.task == "panoptic" and tuple(tokenizer.thing_classes) != self.thing_classes:
            raise ValueError(f"{annotation_file}: thing classes {self.thing_classes} differ from the tokenizer's")
        images = {image["id"]: image for image in data["images"]}
        self.samples = []
        for ann in data["annotations"]:
            image = images.get(ann["image_id"])
            if image is None:
                raise ValueError(
                    f"{annotation_file}: annotation {ann['file_name']} refers to unknown image {ann['image_id']}"
                )
            for folder, name in ((self.image_dir, image["file_name"]), (self.panoptic_dir, ann["file_name"])):
                path = folder / _inside(annotation_file, name)
                if not path.exists():
                    raise ValueError(f"{path}: not found; expected the file {annotation_file.name} lists")
            unknown = [
                s["category_id"] for s in ann["segments_info"] if s["category_id"] not in self._label_of_category
            ]
            if unknown:
                raise ValueError(f"{annotation_file}: {ann['file_name']} uses unknown category {unknown[0]}")
            self.samples.append((image, ann))
        if not self.samples:
            raise ValueError(f"{annotation_file}: no annotations")
        super().__init__(tokenizer, patch or default_patch(tokenizer), seed, ignore_index, skip_bad)

    def num_images(self) -> int:
        return len(self.samples)

    def image_shape(self, index: int) -> tuple[int, int]:
        image = self.samples[index][0]
        return (int(image["height"]), int(image["width"]))

    def read(self, index: int) -> dict:
        image_info, ann = self.samples[index]
        png = self.panoptic_dir / ann["file_name"]
        rgb = _read_rgb(png).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        segments = ann["segments_info"]
        seg_ids = np.array([s["id"] for s in segments], dtype=np.int64)
        labels = np.array([self._label_of_category[s["category_id"]] for s in segments], dtype=np.int64)
        crowd = np.array([bool(s.get("iscrowd", 0)) for s in segments], dtype=bool)
        order = np.argsort(seg_ids)
        pos = np.clip(np.searchsorted(seg_ids[order], ids), 0, max(len(seg_ids) - 1, 0))
        listed = (seg_ids[order][pos] == ids) if len(seg_ids) else np.zeros(ids.shape, bool)
        seg = order[pos]
        keep = listed & ~crowd[seg] if len(seg_ids) else listed
        mask = np.where(keep, labels[seg] if len(seg_ids) else 0, self.ignore_index)
        return {
            "image": read_image(self.image_dir / image_info["file_name"]),
            "mask": mask,
            "instances": np.where(keep, ids, 0),
            "name": Path(image_info["file_name"]).stem,
            "source": str(png),
        }


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    image_shape(path)  # the header's pixels against the limit, before any is read
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except Exception as error:  # truncated or corrupt files raise several types
        raise ValueError(f"{path}: cannot read the panoptic PNG; it may be truncated ({error})") from error
