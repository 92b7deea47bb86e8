"""Cityscapes fine annotations: ``*_gtFine_labelIds.png`` -> the 19 train ids + ignore.

Layout (the official download)::

    root/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
    root/gtFine/<split>/<city>/<name>_gtFine_labelIds.png
    root/gtFine/<split>/<city>/<name>_gtFine_instanceIds.png   (optional: instances)

Labels: train ids 0..18 (``CITYSCAPES_CLASSES``), every other label id -> ``ignore_index``. The
tokenizer then has ``num_classes=19`` and road (0) is the fill label run-length encoding never writes
(it is the commonest class, so sequences are shortest that way). ``void_as_background=True``
instead gives labels ``train id + 1`` with the void pixels as class 0 (20 classes, the paper's setup).
Instance ids (``class id * 1000 + k`` in the instanceIds files) become ``instances``; pixels with
ids below 1000 (stuff, crowds) get 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..imageio import image_shape, read_image, read_label_map
from ..tokens import MaskTokenizer
from .dataset import PatchDataset, default_patch
from .patches import PatchConfig

CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
# Label id of each train id, in train-id order (the official cityscapesScripts table).
_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def cityscapes_train_ids(
    label_ids: np.ndarray, ignore_index: int = 255, void_as_background: bool = False
) -> np.ndarray:
    """Map a labelIds map to train ids (see the module doc for the two conventions)."""
    table = np.full(max(256, int(label_ids.max(initial=0)) + 1), 0 if void_as_background else ignore_index, np.int64)
    table[list(_LABEL_IDS)] = np.arange(len(_LABEL_IDS)) + (1 if void_as_background else 0)
    return table[label_ids]


class CityscapesDataset(PatchDataset):
    """The images of one split of the official layout (module doc) with their train-id label maps, cut into
    patches and tokenized on the fly like every ``PatchDataset``."""

    def __init__(self, root: str | Path, tokenizer: MaskTokenizer, split: str = "train",
                 patch: PatchConfig | None = None, ignore_index: int = 255, void_as_background: bool = False,
                 skip_bad: bool = False, seed: int = 0):
        self.root, self.split, self.void_as_background = Path(root), split, void_as_background
        classes = len(CITYSCAPES_CLASSES) + (1 if void_as_background else 0)
        if tokenizer.num_classes != classes:
            raise ValueError(
                f"Cityscapes has {classes} classes here, the tokenizer has num_classes={tokenizer.num_classes}"
            )
        image_root = self.root / "leftImg8bit" / split
        if not image_root.is_dir():
            raise ValueError(f"{image_root}: no such folder; expected leftImg8bit/{split}/<city>/*_leftImg8bit.png")
        images = sorted(image_root.glob("*/*_leftImg8bit.png"))
        if not images:
            raise ValueError(f"{image_root}: empty; expected <city>/*_leftImg8bit.png files")
        self.samples = []
        for image in images:
            base = image.name[: -len("_leftImg8bit.png")]
            label = self.root / "gtFine" / split / image.parent.name / f"{base}_gtFine_labelIds.png"
            if not label.exists():
                raise ValueError(f"{image}: no annotation; expected {label}")
            instances = label.with_name(f"{base}_gtFine_instanceIds.png")
            self.samples.append((base, image, label, instances if instances.exists() else None))
        self._shapes = [image_shape(s[1]) for s in self.samples]
        super().__init__(tokenizer, patch or default_patch(tokenizer), seed, ignore_index, skip_bad)

    def num_images(self) -> int:
        return len(self.samples)

    def image_shape(self, index: int) -> tuple[int, int]:
        return self._shapes[index]

    def read(self, index: int) -> dict:
        name, image_path, label_path, instance_path = self.samples[index]
        data = {
            "image": read_image(image_path),
            "mask": cityscapes_train_ids(read_label_map(label_path), self.ignore_index, self.void_as_background),
            "name": name,
            "source": str(label_path),
        }
        if instance_path is not None:
            ids = read_label_map(instance_path)
            data["instances"] = np.where(ids >= 1000, ids, 0)
        return data
