"""The dataset base every image layout shares: full images in, tokenized patches out.

A subclass says how many images there are, their (H, W) (cheaply, e.g. from file headers) and how
to read one (``read``). :class:`PatchDataset` turns that into patches (``rleseg.data.patches``) and
tokens, on the fly. One item is one patch; an image contributes ``count_windows(...)`` items at the
config's nominal stride.

Sample (one item), every array a torch tensor:

    image        (3, P, P) float32 in [0, 1]
    mask         (P, P) int64 full-resolution labels, ``ignore_index`` kept
    mask_small   (P/s, P/s) int64, the subsampled mask the tokens encode, ``ignore_index`` kept
    tokens       (T,) int64, the tokenizer's body + EOS (no BOS, no padding)
    box          (4,) int64 ``(y0, x0, y1, x1)`` of the patch in the resized image
    index, image_index   ints;  name  str (file stem)
    instances, instances_small   (P, P), (P/s, P/s) int64, when the layout has instances
    num_skipped  int, bad samples skipped to produce this one (``skip_bad=True``)

Ignored pixels: ``ignore_index`` is tokenized as label 0, the fill label run-length encoding never
writes, so the token sequence stays valid and short. Losses and metrics must exclude those pixels
using ``mask`` / ``mask_small``, where they keep ``ignore_index``. A real class 0 (e.g. with
``reduce_zero_label``) is also the fill label, which is harmless: both decode to 0 and the ignored
pixels are not scored.

Patches of an image: at a fixed stride, item k of an image is its k-th window (row by row). With
``stride_range`` (training) each image draws a new random-stride grid per epoch and item k takes
window k of it (modulo its size), so an image yields the same number of items every epoch. With
``empty_keep`` below 1 (training) an item whose patch is empty may be replaced by another item's patch;
``index``, ``image_index`` and ``box`` are then those of the item that replaced it.

Randomness: the random strides of image i use ``default_rng([seed, epoch, i, 1])``, the augmentation
of item j ``default_rng([seed, epoch, j, 2])``, the keep-or-replace draws of an empty patch of item j
``default_rng([seed, epoch, j, 3])``. Samples depend only on (seed, epoch, index), never on
the worker or rank that loads them, so DataLoader workers, DistributedSampler ranks and a rerun with the
same seed all see the same samples. Call ``set_epoch(epoch)`` before each epoch (as with
DistributedSampler) to draw new augmentations; with ``persistent_workers=True`` the workers keep the
epoch they were started with.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

from .patches import PatchConfig, count_windows, make_patch, resize, scaled_shape, sliding_windows

# Errors a bad file raises on read: our ValueError, and the OSError family PIL/tifffile raise.
READ_ERRORS = (ValueError, OSError)
# Draws of a patch with empty_keep < 1 before the last empty one is kept anyway: empty_keep 0 on data without
# foreground would draw for ever (at 0.1, 100 empty draws in a row come with probability 0.9**100 = 3e-5).
MAX_EMPTY_DRAWS = 100


def default_patch(tokenizer, factor: int = 8) -> PatchConfig:
    """The paper's setting: patches of ``factor`` times the tokenizer's mask side, no overlap."""
    height, width = tokenizer.mask_size
    if height != width:
        raise ValueError(f"patches are square; the tokenizer's mask_size {tokenizer.mask_size} is not")
    return PatchConfig(patch_size=height * factor, factor=factor)


class PatchDataset(Dataset):
    """Base class: subclasses implement ``num_images``, ``image_shape`` and ``read``."""

    label_hint = ""  # what to do about a label outside the classes, added to that error (a layout's own advice)

    def __init__(
        self,
        tokenizer,
        patch: PatchConfig,
        seed: int = 0,
        ignore_index: int = 255,
        skip_bad: bool = False,
    ):
        if tuple(tokenizer.mask_size) != patch.mask_size:
            raise ValueError(
                f"patch_size {patch.patch_size} with factor {patch.factor} gives {patch.mask_size} masks, "
                f"the tokenizer expects {tuple(tokenizer.mask_size)}"
            )
        if tokenizer.task == "panoptic" and patch.downsample != "nearest":
            # The centre pixel keeps class and instance id consistent; a per-map mode would not.
            raise ValueError("a panoptic tokenizer needs PatchConfig(downsample='nearest')")
        self.tokenizer, self.patch = tokenizer, patch
        self.seed, self.ignore_index, self.skip_bad = int(seed), int(ignore_index), skip_bad
        self.epoch = 0
        self.num_skipped = 0  # per process: each DataLoader worker counts its own
        counts = np.array(
            [
                count_windows(self.resized_shape(i), patch.patch_size, patch.nominal_stride)
                for i in range(self.num_images())
            ],
            dtype=np.int64,
        )
        self._first_item = np.concatenate(([0], np.cumsum(counts)))
        self._cache: tuple[int, dict] | None = None

    # ------------------------------------------------------------------ what a layout provides
    def num_images(self) -> int:
        raise NotImplementedError

    def image_shape(self, index: int) -> tuple[int, int]:
        """(H, W) of image ``index`` as stored, before resizing."""
        raise NotImplementedError

    def read(self, index: int) -> dict:
        """image (H, W, 3) float32 in [0, 1], mask (H, W) integer, optional instances (H, W), name,
        optional source (file named in errors) and meta (ints added to the sample). Video layouts
        give a leading frame axis to image, mask and instances. Raises ValueError naming the file
        on bad content."""
        raise NotImplementedError

    def __getstate__(self) -> dict:
        # DataLoader workers started by "spawn" receive a pickled copy: leave the image caches behind.
        state = self.__dict__.copy()
        for key in ("_cache", "_stack", "_clip"):
            if key in state:
                state[key] = None
        return state

    # ------------------------------------------------------------------ indexing
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self._first_item[-1])

    def resized_shape(self, index: int) -> tuple[int, int]:
        return scaled_shape(self.image_shape(index), self.patch.scale)

    def locate(self, item: int) -> tuple[int, int]:
        """(image index, window number) of an item."""
        if not 0 <= item < len(self):
            raise IndexError(f"index {item} out of range for {len(self)} items")
        image = int(np.searchsorted(self._first_item, item, side="right") - 1)
        return image, item - int(self._first_item[image])

    def windows(self, image: int) -> np.ndarray:
        """(K, 4) boxes of image ``image`` at the fixed stride (evaluation)."""
        return sliding_windows(self.resized_shape(image), self.patch.patch_size, self.patch.nominal_stride)

    # ------------------------------------------------------------------ samples
    def __getitem__(self, item: int) -> dict:
        skipped = 0
        while True:
            try:
                sample = self._sample(item)
                sample["num_skipped"] = skipped
                return sample
            except READ_ERRORS as error:
                if not self.skip_bad:
                    raise
                self.num_skipped += 1
                skipped += 1
                warnings.warn(f"skipping bad sample {item}: {error}", stacklevel=2)
                if skipped >= self.num_images():
                    raise ValueError("every sample of the dataset is bad") from error
                # Move to the first item of the next image: the whole image is unreadable.
                image, _ = self.locate(item)
                item = int(self._first_item[(image + 1) % self.num_images()])

    def _read_resized(self, image: int) -> dict:
        # Consecutive items usually come from the same image: keep the last one (per worker).
        if self._cache is not None and self._cache[0] == image:
            return self._cache[1]
        data = self.read(image)
        self.check_read(data, image)
        shape = self.resized_shape(image)
        data["image"] = resize(data["image"], shape, -3, linear=True)
        for key in ("mask", "instances"):
            if key in data:
                data[key] = resize(np.asarray(data[key], dtype=np.int64), shape, -2, linear=False)
        self._cache = (image, data)
        return data

    def check_read(self, data: dict, image: int) -> None:
        """Shapes agree and labels are known classes or ``ignore_index``."""
        name = data.get("source", data.get("name", str(image)))
        if data["image"].shape[:-1] != data["mask"].shape:
            raise ValueError(f"{name}: image {data['image'].shape[:-1]} and mask {data['mask'].shape} differ in size")
        mask = data["mask"]
        bad = (mask >= self.tokenizer.num_classes) & (mask != self.ignore_index)
        if bad.any():
            raise ValueError(
                f"{name}: label {int(mask[bad].min())} is outside the classes 0..{self.tokenizer.num_classes - 1} "
                f"and is not ignore_index {self.ignore_index}{self.label_hint}"
            )

    def _patch(self, item: int) -> tuple[int, dict, np.ndarray, dict]:
        """(image index, its resized data, the window's box, the augmented patch) of ``item``."""
        image, window = self.locate(item)
        data = self._read_resized(image)
        config = self.patch
        if config.stride_range is not None:
            rng = np.random.default_rng([self.seed, self.epoch, image, 1])
            boxes = sliding_windows(self.resized_shape(image), config.patch_size, None, config.stride_range, rng)
        else:
            boxes = self.windows(image)
        box = boxes[window % len(boxes)]
        rng = np.random.default_rng([self.seed, self.epoch, item, 2])
        patch = make_patch(data["image"], data["mask"], box, config, rng, self.ignore_index, data.get("instances"))
        return image, data, box, patch

    def _kept_patch(self, item: int) -> tuple[int, int, dict, np.ndarray, dict]:
        """``(item, *_patch(item))`` of ``item`` or of the item that took its place: with ``patch.empty_keep``
        below 1, an empty patch (no foreground cell in its subsampled mask) is kept with that probability, else
        an item drawn uniformly replaces it, and so on. Rejecting by uniform draws gives the stream the paper got
        by dropping that share of the empty patches from its list of patches."""
        keep = self.patch.empty_keep
        rng = np.random.default_rng([self.seed, self.epoch, item, 3])
        for _ in range(MAX_EMPTY_DRAWS):
            drawn = self._patch(item)
            small = drawn[-1]["mask_small"]
            if keep >= 1 or ((small != 0) & (small != self.ignore_index)).any() or rng.random() < keep:
                break
            item = int(rng.integers(len(self)))
        return item, *drawn

    def _sample(self, item: int) -> dict:
        item, image, data, box, patch = self._kept_patch(item)
        tokens = self.encode(patch)
        # Copies: a crop can be a view of the cached image, which a consumer must not be able to change.
        sample = {key: torch.from_numpy(np.array(value)) for key, value in patch.items()}
        sample["image"] = sample["image"].movedim(-1, -3)  # (..., P, P, 3) -> (..., 3, P, P)
        for key in ("mask", "mask_small", "instances", "instances_small"):
            if key in sample:
                sample[key] = sample[key].long()
        sample.update(
            tokens=torch.from_numpy(tokens),
            box=torch.from_numpy(box.copy()),
            index=item,
            image_index=image,
            name=data.get("name", str(image)),
        )
        sample.update(data.get("meta", {}))
        return sample

    def encode(self, patch: dict) -> np.ndarray:
        """Tokens of one patch: ignored pixels become the fill label 0 (see the module doc).

        A panoptic tokenizer (``task == "panoptic"``) gets ``(semantic, instances)``; any other gets
        the label map (a video tokenizer: the (N, h, w) window).
        """
        small = patch["mask_small"]
        small = np.where(small == self.ignore_index, 0, small)
        if self.tokenizer.task == "panoptic":
            if "instances_small" not in patch:
                raise ValueError(f"{type(self).__name__} has no instance masks for a panoptic tokenizer")
            return np.asarray(self.tokenizer.encode(small, patch["instances_small"]), dtype=np.int64)
        return np.asarray(self.tokenizer.encode(small), dtype=np.int64)


class ArrayDataset(PatchDataset):
    """In-memory images: ``images`` (N, H, W, 3) float in [0, 1], ``masks`` (N, H, W) integer,
    optional ``instances`` (N, H, W). E.g. the arrays of ``rleseg.data.bundled``."""

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        tokenizer,
        patch: PatchConfig | None = None,
        instances: np.ndarray | None = None,
        ignore_index: int = 255,
        seed: int = 0,
    ):
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[:-1] != masks.shape:
            raise ValueError(f"expected images (N, H, W, 3) and masks (N, H, W), got {images.shape}, {masks.shape}")
        if instances is not None and instances.shape != masks.shape:
            raise ValueError(f"instances {instances.shape} must match masks {masks.shape}")
        self.images, self.masks, self.instances = images, masks, instances
        super().__init__(tokenizer, patch or default_patch(tokenizer), seed, ignore_index)

    def num_images(self) -> int:
        return len(self.images)

    def image_shape(self, index: int) -> tuple[int, int]:
        return self.images.shape[1:3]

    def read(self, index: int) -> dict:
        data = {"image": self.images[index].astype(np.float32), "mask": self.masks[index], "name": f"array_{index}"}
        if self.instances is not None:
            data["instances"] = self.instances[index]
        return data
