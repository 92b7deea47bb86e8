"""Cityscapes, COCO panoptic and video layouts on fixture folders made here; build_dataset."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from rleseg.data import (
    CityscapesDataset,
    CocoPanopticDataset,
    PatchConfig,
    SyntheticConfig,
    SyntheticDataset,
    SyntheticVideoDataset,
    VideoFolderDataset,
    build_dataset,
    cityscapes_train_ids,
    coco_panoptic_categories,
)
from rleseg.tokens import Tokenizer
from rleseg.tokens.panoptic import PanopticTokenizer
from rleseg.tokens.video import VideoTokenizer


# ----------------------------------------------------------------------------------------- Cityscapes
def _cityscapes(root, split="val"):
    label_ids = np.array([[7, 8, 26, 0], [24, 33, 255, 3]], dtype=np.uint8).repeat(8, 0).repeat(8, 1)  # 16x32
    for city in ("aachen", "bonn"):
        (root / "leftImg8bit" / split / city).mkdir(parents=True)
        (root / "gtFine" / split / city).mkdir(parents=True)
        base = f"{city}_000000_000019"
        Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(
            root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png"
        )
        Image.fromarray(label_ids).save(root / "gtFine" / split / city / f"{base}_gtFine_labelIds.png")
        instance_ids = np.where(label_ids == 26, 26001, label_ids.astype(np.uint16)).astype(np.uint16)
        Image.fromarray(instance_ids).save(root / "gtFine" / split / city / f"{base}_gtFine_instanceIds.png")
    return label_ids


def test_cityscapes_train_ids(tmp_path):
    label_ids = _cityscapes(tmp_path)
    expected = np.array([[0, 1, 13, 255], [11, 18, 255, 255]]).repeat(8, 0).repeat(8, 1)
    np.testing.assert_array_equal(cityscapes_train_ids(label_ids), expected)
    tokenizer = Tokenizer((4, 4), 19)
    dataset = CityscapesDataset(tmp_path, tokenizer, split="val", patch=PatchConfig(patch_size=16, factor=4))
    assert dataset.num_images() == 2 and len(dataset) == 4
    sample = dataset[1]
    np.testing.assert_array_equal(sample["mask"].numpy(), expected[:, 16:])
    assert sample["instances"].max() == 26001 and (sample["instances"][sample["mask"] != 13] == 0).all()
    # void_as_background: 20 classes, train id + 1, void = 0.
    shifted = CityscapesDataset(
        tmp_path, Tokenizer((4, 4), 20), "val", PatchConfig(patch_size=16, factor=4), void_as_background=True
    )
    np.testing.assert_array_equal(shifted[0]["mask"].numpy(), np.where(expected == 255, 0, expected + 1)[:, :16])
    with pytest.raises(ValueError, match="19 classes here, the tokenizer has num_classes=20"):
        CityscapesDataset(tmp_path, Tokenizer((4, 4), 20), "val", PatchConfig(patch_size=16, factor=4))
    (tmp_path / "gtFine" / "val" / "bonn" / "bonn_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(ValueError, match=r"no annotation; expected .*bonn_000000_000019_gtFine_labelIds\.png"):
        CityscapesDataset(tmp_path, tokenizer, "val", PatchConfig(patch_size=16, factor=4))
    with pytest.raises(ValueError, match="no such folder"):
        CityscapesDataset(tmp_path, tokenizer, "test", PatchConfig(patch_size=16, factor=4))


# ----------------------------------------------------------------------------------------- COCO panoptic
def _coco(root):
    (root / "val2017").mkdir()
    (root / "annotations" / "panoptic_val2017").mkdir(parents=True)
    ids = np.zeros((16, 16), np.int64)
    ids[2:6, 2:6] = 1000  # person instance
    ids[8:12, 2:6] = 70000  # another person, id using G and B channels
    ids[:, 10:] = 3  # sky (stuff)
    ids[12:, :4] = 5  # crowd person
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(root / "annotations" / "panoptic_val2017" / "000001.png")
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(root / "val2017" / "000001.jpg")
    data = {
        "images": [{"id": 1, "file_name": "000001.jpg", "height": 16, "width": 16}],
        "annotations": [
            {
                "image_id": 1,
                "file_name": "000001.png",
                "segments_info": [
                    {"id": 1000, "category_id": 1, "iscrowd": 0},
                    {"id": 70000, "category_id": 1, "iscrowd": 0},
                    {"id": 3, "category_id": 187, "iscrowd": 0},
                    {"id": 5, "category_id": 1, "iscrowd": 1},
                ],
            }
        ],
        "categories": [{"id": 187, "name": "sky", "isthing": 0}, {"id": 1, "name": "person", "isthing": 1}],
    }
    (root / "annotations" / "panoptic_val2017.json").write_text(json.dumps(data))
    return ids


def test_coco_panoptic(tmp_path):
    ids = _coco(tmp_path)
    names, things = coco_panoptic_categories(tmp_path / "annotations" / "panoptic_val2017.json")
    assert names == ("person", "sky") and things == (1,)
    tokenizer = PanopticTokenizer((16, 16), 3, thing_classes=things)
    dataset = CocoPanopticDataset(tmp_path, tokenizer, patch=PatchConfig(patch_size=16, factor=1))
    sample = dataset[0]
    mask, instances = sample["mask"].numpy(), sample["instances"].numpy()
    assert (mask[2:6, 2:6] == 1).all() and (mask[:, 10:] == 2).all()
    assert (mask[12:, :4] == 255).all() and (mask[0, 0] == 255)  # crowd and void are ignored
    assert (instances[8:12, 2:6] == 70000).all() and (instances[12:, :4] == 0).all()
    semantic, decoded = tokenizer.decode(sample["tokens"].numpy())
    np.testing.assert_array_equal(semantic, np.where(mask == 255, 0, mask))
    assert len(np.unique(decoded[semantic == 1])) == 2  # two person instances
    with pytest.raises(ValueError, match="2 categories need num_classes=3"):
        CocoPanopticDataset(tmp_path, PanopticTokenizer((16, 16), 4, [1]), patch=PatchConfig(patch_size=16, factor=1))
    (tmp_path / "val2017" / "000001.jpg").unlink()
    with pytest.raises(ValueError, match=r"000001\.jpg: not found"):
        CocoPanopticDataset(tmp_path, tokenizer, patch=PatchConfig(patch_size=16, factor=1))
    del ids


def test_panoptic_tokens_from_synthetic_instances():
    tokenizer = PanopticTokenizer((16, 16), 3, thing_classes=[1, 2])
    dataset = SyntheticDataset(tokenizer, length=3, config=SyntheticConfig(size=(64, 64)))
    sample = dataset[0]
    semantic, _ = tokenizer.decode(sample["tokens"].numpy())
    np.testing.assert_array_equal(semantic, sample["mask_small"].numpy())
    with pytest.raises(ValueError, match="downsample='nearest'"):
        SyntheticDataset(tokenizer, 3, SyntheticConfig(size=(64, 64)), PatchConfig(64, 4, downsample="mode"))


# ----------------------------------------------------------------------------------------- video
def _video_frames(root, frames=5, size=(16, 16)):
    masks = np.random.default_rng(0).integers(0, 3, (2, frames, *size)).astype(np.uint8)
    for seq in range(2):
        (root / "images" / f"seq{seq}").mkdir(parents=True)
        (root / "masks" / f"seq{seq}").mkdir(parents=True)
        for t in range(frames):
            Image.fromarray(masks[seq, t] * 100).save(root / "images" / f"seq{seq}" / f"{t:04d}.png")
            Image.fromarray(masks[seq, t]).save(root / "masks" / f"seq{seq}" / f"{t:04d}.png")
    return masks


def test_video_frame_folders(tmp_path):
    masks = _video_frames(tmp_path)
    tokenizer = VideoTokenizer(3, (16, 16), 3, temporal="volume", scheme="lac")
    dataset = VideoFolderDataset(tmp_path, tokenizer, frames=3, frame_stride=1, patch=PatchConfig(16, 1))
    assert len(dataset) == 2 * 3  # 5 frames, windows of 3 at stride 1
    sample = dataset[4]  # sequence 1, start frame 1
    assert sample["sequence"] == 1 and sample["start_frame"] == 1
    np.testing.assert_array_equal(sample["mask"].numpy(), masks[1, 1:4])
    np.testing.assert_allclose(sample["image"][:, 0].numpy(), masks[1, 1:4] * 100 / 255, atol=1e-6)
    np.testing.assert_array_equal(tokenizer.decode(sample["tokens"].numpy()), masks[1, 1:4])
    strided = VideoFolderDataset(tmp_path, tokenizer, frames=3, frame_stride=3, patch=PatchConfig(16, 1))
    assert [strided[i]["start_frame"] for i in range(len(strided))] == [0, 2, 0, 2]  # last window flush
    with pytest.raises(ValueError, match="the tokenizer encodes 3 frames"):
        VideoFolderDataset(tmp_path, tokenizer, frames=2, patch=PatchConfig(16, 1))
    (tmp_path / "masks" / "seq1" / "0002.png").unlink()
    with pytest.raises(ValueError, match=r"seq1/0002\.png: no mask"):
        VideoFolderDataset(tmp_path, tokenizer, frames=3, patch=PatchConfig(16, 1))
    with pytest.warns(UserWarning, match="no mask"):
        dataset = VideoFolderDataset(tmp_path, tokenizer, frames=3, patch=PatchConfig(16, 1), skip_bad=True)
    assert dataset.num_sequences() == 1 and dataset.num_skipped == 1


def test_video_tiff_stacks_with_instance_masks(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(1)
    instances = rng.integers(0, 4, (6, 16, 16)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "images" / "cells.tif", rng.integers(0, 4000, (6, 16, 16)).astype(np.uint16))
    tifffile.imwrite(tmp_path / "masks" / "cells.tif", instances)
    tokenizer = VideoTokenizer(2, (8, 8), 2, temporal="tac", scheme="class")
    dataset = VideoFolderDataset(
        tmp_path, tokenizer, frames=2, frame_stride=2, patch=PatchConfig(16, 2), instance_masks=True
    )
    assert len(dataset) == 3
    sample = dataset[2]
    np.testing.assert_array_equal(sample["instances"].numpy(), instances[4:6])
    np.testing.assert_array_equal(sample["mask"].numpy(), instances[4:6] > 0)
    assert sample["image"].shape == (2, 3, 16, 16) and 0 <= sample["image"].min() and sample["image"].max() <= 1
    tifffile.imwrite(tmp_path / "masks" / "cells.tif", instances[:5])
    with pytest.raises(ValueError, match=r"cells\.tif: 5 frames of \(16, 16\), the images have 6"):
        VideoFolderDataset(tmp_path, tokenizer, frames=2, patch=PatchConfig(16, 2))


def test_synthetic_video_dataset_is_deterministic():
    tokenizer = VideoTokenizer(4, (16, 16), 3, temporal="tac", scheme="class")
    config = SyntheticConfig(size=(32, 32), frames=6)
    a = SyntheticVideoDataset(tokenizer, 4, length=3, config=config, seed=2)
    b = SyntheticVideoDataset(tokenizer, 4, length=3, config=config, seed=2)
    assert len(a) == 3 * 3
    for i in (0, 4, 8):
        np.testing.assert_array_equal(a[i]["tokens"].numpy(), b[i]["tokens"].numpy())
        np.testing.assert_array_equal(tokenizer.decode(a[i]["tokens"].numpy()), a[i]["mask_small"].numpy())
    # Window 1 of clip 0 is window 0 shifted by one frame.
    np.testing.assert_array_equal(a[1]["mask"][:3].numpy(), a[0]["mask"][1:].numpy())


# ----------------------------------------------------------------------------------------- build_dataset
def test_build_dataset(tmp_path):
    tokenizer = Tokenizer((16, 16), 3)
    dataset = build_dataset("synthetic", tokenizer, length=4, config=SyntheticConfig(size=(64, 64)))
    assert len(dataset) == 4
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'; expected one of synthetic, synthetic_video, folder"):
        build_dataset("nope", tokenizer)
    with pytest.raises(ValueError, match="give root"):
        build_dataset("folder", tokenizer)
    _cityscapes(tmp_path)
    city = build_dataset("cityscapes", Tokenizer((4, 4), 19), tmp_path, "val", PatchConfig(patch_size=16, factor=4))
    assert len(city) == 4
