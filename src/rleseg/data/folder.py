"""The plain folder layout: ``root/images/<stem>.<ext>`` paired with ``root/masks/<stem><suffix>.<ext>``.

A TIFF stack (``rleseg.imageio.read_frames``: pages, time points, Z planes) paired with a mask stack of as
many frames gives one image per frame, named ``<stem>/frame_000000`` ...; the stack is normalised as one.
A held-out share (``val_fraction``) takes whole files, so frames of one stack never fall on both sides.

``labels`` says what a mask's values are: "classes" (the default: a class per pixel, 0 .. C-1, or
``ignore_index``) or "instances" (an instance label map: 0 background, one id per object, as napari,
StarDist and Cellpose write). Instances become the class map of :func:`rleseg.data.instances.instance_semantic`
(every object class 1, or each id's class from the table ``<mask stem>.json`` beside the mask, required when
there are more than two classes) plus the ids as ``instances``, which a panoptic tokenizer encodes as objects.
Which one a folder holds is never guessed from the values: ids past the classes could as well be classes of
a mistyped ``num_classes``, so such a label stops with a line that names the option.

Checked at construction (cheap, from file names and headers): an empty or missing folder, an image
without a mask, two files with one stem, an unreadable header, image and mask of different sizes.
Checked when a sample is read: a truncated or corrupt file, a label that is neither a class nor
``ignore_index``. With ``skip_bad=True`` each of these drops the pair (construction) or skips the
sample (read) with a warning, counted in ``num_skipped``; otherwise it raises ValueError naming the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection
from pathlib import Path

import numpy as np

from ..imageio import (
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    Normalization,
    frames_shape,
    read_frames,
    read_image,
    read_label_frames,
    read_label_map,
)
from .classes import ClassList, read_class_list
from .dataset import PatchDataset, default_patch
from .instances import ClassTable, instance_semantic, read_class_table
from .patches import PatchConfig

LABELS = ("classes", "instances")
_INSTANCES_HINT = ("; if the masks hold one id per object (instance label maps: 0 background, 1..N objects), set "
                   "data.options.labels: instances")


def files_by_stem(folder: Path, suffixes: tuple[str, ...], strip: str = "") -> dict[str, Path]:
    """``{stem: path}`` of the files of ``folder`` ending in one of ``suffixes``, ``strip`` cut off their
    stems (files whose stem lacks it are left out); ValueError for a missing or empty folder or one stem twice."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder; expected a folder of files ending in {', '.join(suffixes)}")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in suffixes or path.name.startswith("."):
            continue
        stem = path.stem
        if strip:
            if not stem.endswith(strip):
                continue
            stem = stem[: -len(strip)]
        if stem in files:
            raise ValueError(f"{path}: two files for stem {stem!r} ({files[stem].name}, {path.name}); expected one")
        files[stem] = path
    if not files:
        raise ValueError(f"{folder}: empty; expected files ending in {', '.join(suffixes)}")
    return files


def holdout_stems(images: Path, fraction: float, seed: int, held_out: bool) -> set[str]:
    """The image stems of ``images`` in a held-out share ``fraction`` (``held_out``) or in the rest: at least
    one image on each side, drawn by image with ``seed``, so both splits of one folder agree."""
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    stems = sorted(files_by_stem(images, IMAGE_SUFFIXES))
    if len(stems) < 2:
        raise ValueError(f"{images}: {len(stems)} image(s); holding out a validation share needs at least 2")
    count = min(len(stems) - 1, max(1, round(fraction * len(stems))))
    order = np.random.default_rng(seed).permutation(len(stems))
    chosen = order[:count] if held_out else order[count:]
    return {stems[i] for i in chosen}


class FolderDataset(PatchDataset):
    """Images and masks paired by file stem.

    Args:
        root: folder holding ``images`` and ``masks`` (names configurable).
        tokenizer: the mask tokenizer; its ``num_classes`` must match the class list when one is given.
        classes: a class-list file (YAML/TXT, see ``rleseg.data.classes.read_class_list``), a ClassList,
            or None (labels 0 .. tokenizer.num_classes - 1 unnamed).
        patch: the patch pipeline; default ``default_patch(tokenizer)``.
        mask_suffix: masks are named ``<image stem><mask_suffix>.<ext>`` (e.g. "_mask").
        reduce_zero_label: label 0 becomes ``ignore_index`` and every other label drops by one
            (for datasets whose 0 means "unlabelled").
        stems: only the images with these stems (a split held out of one folder, :func:`holdout_stems`).
        normalization: how image values become [0, 1] (``data.normalize``; default "auto", see
            ``rleseg.imageio.Normalization``).
        labels: "classes" (masks hold classes) or "instances" (masks hold object ids; see the module doc).
    """

    def __init__(
        self,
        root: str | Path,
        tokenizer,
        classes: str | Path | ClassList | None = None,
        patch: PatchConfig | None = None,
        images: str = "images",
        masks: str = "masks",
        mask_suffix: str = "",
        ignore_index: int = 255,
        reduce_zero_label: bool = False,
        skip_bad: bool = False,
        seed: int = 0,
        stems: Collection[str] | None = None,
        normalization: Normalization | None = None,
        labels: str = "classes",
    ):
        self.root, self.normalization = Path(root), normalization or Normalization()
        self.labels = _check_labels(labels, tokenizer, reduce_zero_label)
        self.label_hint = _INSTANCES_HINT if labels == "classes" else ""
        self.classes = read_class_list(classes) if isinstance(classes, str | Path) else classes
        if self.classes is not None and len(self.classes) != tokenizer.num_classes:
            raise ValueError(
                f"the class list names {len(self.classes)} classes but the tokenizer has "
                f"num_classes={tokenizer.num_classes}"
            )
        self.reduce_zero_label, self.skip_bad = reduce_zero_label, skip_bad
        self.num_skipped = 0
        image_files = files_by_stem(self.root / images, IMAGE_SUFFIXES)
        if stems is not None:
            image_files = {stem: path for stem, path in image_files.items() if stem in stems}
        mask_files = files_by_stem(self.root / masks, MASK_SUFFIXES, mask_suffix)
        self.pairs: list[tuple[str, Path, Path]] = []
        self._tables: list[ClassTable | None] = []  # per pair: its class table (instances with one)
        self._images: list[tuple[int, int | None]] = []  # per image: its pair, and its frame when a stack
        self._shapes: list[tuple[int, int]] = []
        for stem, image_path in image_files.items():
            try:
                frames, shape = self._check_pair(stem, image_path, mask_files.get(stem), masks, mask_suffix)
                table = self._class_table(mask_files[stem], tokenizer.num_classes)
            except ValueError as error:
                if not skip_bad:
                    raise
                self._skip(error)
                continue
            self.pairs.append((stem, image_path, mask_files[stem]))
            self._tables.append(table)
            pair = len(self.pairs) - 1
            self._images += [(pair, None)] if frames == 1 else [(pair, frame) for frame in range(frames)]
            self._shapes += [shape] * frames
        self._stack: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None
        if not self.pairs:
            raise ValueError(f"{self.root}: no usable image/mask pair ({self.num_skipped} skipped)")
        super().__init__(tokenizer, patch or default_patch(tokenizer), seed, ignore_index, skip_bad)
        self.num_skipped = len(image_files) - len(self.pairs)

    def _skip(self, error: Exception) -> None:
        self.num_skipped += 1
        warnings.warn(f"skipping: {error}", stacklevel=3)

    def _check_pair(self, stem: str, image_path: Path, mask_path: Path | None, masks: str, suffix: str):
        if mask_path is None:
            raise ValueError(
                f"{image_path}: no mask; expected {self.root / masks / (stem + suffix)} with one of "
                f"{', '.join(MASK_SUFFIXES)}"
            )
        (frames, *shape), (mask_frames, *mask_shape) = frames_shape(image_path), frames_shape(mask_path)
        if shape != mask_shape:
            raise ValueError(
                f"{mask_path}: mask is {mask_shape[0]}x{mask_shape[1]}, image {image_path.name} is "
                f"{shape[0]}x{shape[1]}; expected equal sizes"
            )
        if frames != mask_frames:
            raise ValueError(f"{mask_path}: {mask_frames} mask frame(s), the image {image_path.name} has {frames}; "
                             "expected one label map per frame")
        return frames, tuple(shape)

    def _class_table(self, mask_path: Path, num_classes: int) -> ClassTable | None:
        """The class table of an instance mask: ``<mask stem>.json`` when there, required past two classes."""
        path = mask_path.with_suffix(".json")
        if self.labels != "instances" or (num_classes == 2 and not path.is_file()):
            return None
        if not path.is_file():
            raise ValueError(f"{mask_path}: no class table {path.name}; with {num_classes} classes each instance "
                             'mask needs one beside it, a JSON object {"<instance id>": <class>, ...}')
        return read_class_table(path, num_classes)

    def num_images(self) -> int:
        return len(self._images)

    def image_shape(self, index: int) -> tuple[int, int]:
        return self._shapes[index]

    def read(self, index: int) -> dict:
        pair, frame = self._images[index]
        name, image_path, mask_path = self.pairs[pair]
        # Instance maps are ids, never class colours.
        colours = None if self.classes is None or self.labels == "instances" else self.classes.colours
        if frame is None:
            image, mask = read_image(image_path, self.normalization), read_label_map(mask_path, colours)
        else:
            image, mask = (frames[frame] for frames in self._read_stack(pair, colours))
            name = f"{name}/frame_{frame:06d}"
        if image.shape[:2] != mask.shape:
            raise ValueError(f"{mask_path}: mask is {mask.shape}, image is {image.shape[:2]}; expected equal sizes")
        if self.labels == "instances":
            semantic = instance_semantic(mask, self._tables[pair], mask_path)
            return {"image": image, "mask": semantic, "instances": mask, "name": name, "source": str(mask_path)}
        if self.reduce_zero_label:
            mask = np.where(mask == 0, self.ignore_index, np.where(mask == self.ignore_index, mask, mask - 1))
        return {"image": image, "mask": mask, "name": name, "source": str(mask_path)}

    def _read_stack(self, pair: int, colours: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        # The frames of one stack are consecutive images: keep the last stack read (per worker).
        if self._stack is None or self._stack[0] != pair:
            _, image_path, mask_path = self.pairs[pair]
            self._stack = (pair, (read_frames(image_path, self.normalization), read_label_frames(mask_path, colours)))
        return self._stack[1]


def _check_labels(labels: str, tokenizer, reduce_zero_label: bool) -> str:
    """``labels`` when it is one of :data:`LABELS` and fits the tokenizer; ValueError naming the option."""
    if labels not in LABELS:
        raise ValueError(f"data.options.labels must be classes (a class per pixel) or instances (an id per object), "
                         f"got {labels!r}")
    if labels == "instances" and reduce_zero_label:
        raise ValueError("data.options.labels: instances reads 0 as background; reduce_zero_label is for class masks")
    if labels == "classes" and tokenizer.task == "panoptic":
        raise ValueError("a panoptic tokenizer needs objects, which class masks do not hold: give instance label maps "
                         "(0 background, one id per object) and set data.options.labels: instances")
    return labels
