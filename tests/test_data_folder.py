"""The folder layout on fixture folders made here: mask formats, class lists, every bad input."""

import pickle
import warnings

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from rleseg.data import FolderDataset, PatchConfig, read_class_list
from rleseg.tokens import Tokenizer

SIZE = (32, 40)
COLOURS = np.array([[0, 0, 0], [200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=np.uint8)


def _mask(seed, classes=4):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, classes, (SIZE[0] // 4, SIZE[1] // 4))
    return np.repeat(np.repeat(small, 4, 0), 4, 1).astype(np.uint8)


def _image(mask):
    return COLOURS[mask]  # colour encodes the label: alignment is checkable


def _write(root, count=3, kind="png", classes=4):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    masks = {}
    for i in range(count):
        mask = _mask(i, classes)
        masks[f"img{i}"] = mask
        Image.fromarray(_image(mask % 4)).save(root / "images" / f"img{i}.png")
        if kind == "png":
            Image.fromarray(mask, mode="L").save(root / "masks" / f"img{i}.png")
        elif kind == "palette":
            img = Image.fromarray(mask, mode="P")
            img.putpalette(COLOURS.ravel().tolist())
            img.save(root / "masks" / f"img{i}.png")
        elif kind == "tiff":
            tifffile.imwrite(root / "masks" / f"img{i}.tif", mask.astype(np.uint16))
        elif kind == "colour":
            Image.fromarray(COLOURS[mask]).save(root / "masks" / f"img{i}.png")
    return masks


def _full(classes=4):
    """Patch = image height, factor 1: the sample mask is the file's (top part) exactly."""
    return Tokenizer((32, 32), classes), PatchConfig(patch_size=32, factor=1, stride=8)


@pytest.mark.parametrize("kind", ["png", "palette", "tiff"])
def test_mask_formats_read_back_exactly(tmp_path, kind):
    masks = _write(tmp_path, kind=kind)
    tokenizer, patch = _full()
    dataset = FolderDataset(tmp_path, tokenizer, patch=patch)
    assert dataset.num_images() == 3 and len(dataset) == 3 * 2  # widths 40 at stride 8 -> 2 windows
    for item in range(len(dataset)):
        sample = dataset[item]
        y0, x0, y1, x1 = sample["box"].tolist()
        expected = masks[sample["name"]][y0:y1, x0:x1]
        np.testing.assert_array_equal(sample["mask"].numpy(), expected)
        colours = torch.from_numpy(COLOURS.astype(np.float32) / 255)[sample["mask"]].permute(2, 0, 1)
        torch.testing.assert_close(sample["image"], colours)
        np.testing.assert_array_equal(tokenizer.decode(sample["tokens"].numpy()), expected)


def test_training_augmentation_keeps_image_and_mask_aligned(tmp_path):
    _write(tmp_path, count=2)
    tokenizer = Tokenizer((8, 8), 4)
    patch = PatchConfig(patch_size=16, factor=2, stride_range=(4, 12), rot90=True, flip=True)
    dataset = FolderDataset(tmp_path, tokenizer, patch=patch, seed=1)
    palette = torch.from_numpy(COLOURS.astype(np.float32) / 255)
    transforms = set()
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for item in range(len(dataset)):
            sample = dataset[item]
            torch.testing.assert_close(sample["image"], palette[sample["mask"]].permute(2, 0, 1))
            transforms.add(tuple(sample["box"].tolist()))
    assert len(transforms) > 5  # random strides moved the windows around


def test_pickled_dataset_drops_its_image_cache(tmp_path):
    _write(tmp_path, count=1)
    dataset = FolderDataset(tmp_path, *_full()[:1], patch=_full()[1])
    dataset[0]
    copy = pickle.loads(pickle.dumps(dataset))
    assert dataset._cache is not None and copy._cache is None
    assert torch.equal(copy[0]["tokens"], dataset[0]["tokens"])


def test_colour_masks_through_a_yaml_class_list(tmp_path):
    masks = _write(tmp_path, kind="colour")
    names = ["background", "a", "b", "c"]
    text = "classes:\n" + "".join(
        f"  - name: {n}\n    color: {c.tolist()}\n" for n, c in zip(names, COLOURS, strict=True)
    )
    (tmp_path / "classes.yaml").write_text(text)
    tokenizer, patch = _full()
    dataset = FolderDataset(tmp_path, tokenizer, classes=tmp_path / "classes.yaml", patch=patch)
    assert dataset.classes.names == tuple(names)
    sample = dataset[0]
    np.testing.assert_array_equal(sample["mask"].numpy(), masks["img0"][:32, :32])


def test_txt_class_list(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# comment\nbackground 0 0 0\nroad #ff0000\n\ncar 0 0 255\n")
    classes = read_class_list(path)
    assert classes.names == ("background", "road", "car")
    np.testing.assert_array_equal(classes.colours, [[0, 0, 0], [255, 0, 0], [0, 0, 255]])
    path.write_text("background\nroad\n")
    assert read_class_list(path).colours is None
    path.write_text("background 1 2\n")
    with pytest.raises(ValueError, match="expected 'name'"):
        read_class_list(path)
    path.write_text("background 0 0 0\nroad\n")
    with pytest.raises(ValueError, match="some classes only"):
        read_class_list(path)


def test_reduce_zero_label_and_ignore_index(tmp_path):
    masks = _write(tmp_path, count=1)
    tokenizer, patch = _full(classes=3)
    dataset = FolderDataset(tmp_path, tokenizer, patch=patch, reduce_zero_label=True)
    sample = dataset[0]
    truth = masks["img0"][:32, :32].astype(np.int64)
    expected = np.where(truth == 0, 255, truth - 1)
    np.testing.assert_array_equal(sample["mask"].numpy(), expected)
    # Ignored pixels are tokenized as the fill label 0 and kept as 255 in the masks.
    np.testing.assert_array_equal(tokenizer.decode(sample["tokens"].numpy()), np.where(expected == 255, 0, expected))


def test_mask_suffix_and_subsampling(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    mask = _mask(0)
    Image.fromarray(_image(mask)).save(tmp_path / "images" / "a.jpg")
    Image.fromarray(mask).save(tmp_path / "masks" / "a_mask.png")
    dataset = FolderDataset(
        tmp_path, Tokenizer((8, 8), 4), patch=PatchConfig(patch_size=32, factor=4), mask_suffix="_mask"
    )
    sample = dataset[0]
    assert sample["mask_small"].shape == (8, 8) and sample["image"].shape == (3, 32, 32)


# ----------------------------------------------------------------------------------------- bad input
def test_empty_and_missing_folders(tmp_path):
    tokenizer, patch = _full()
    with pytest.raises(ValueError, match="no such folder"):
        FolderDataset(tmp_path, tokenizer, patch=patch)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match=r"images: empty; expected files ending in \.png"):
        FolderDataset(tmp_path, tokenizer, patch=patch)


def test_missing_mask(tmp_path):
    _write(tmp_path)
    (tmp_path / "masks" / "img1.png").unlink()
    tokenizer, patch = _full()
    with pytest.raises(ValueError, match=r"img1\.png: no mask; expected .*masks/img1"):
        FolderDataset(tmp_path, tokenizer, patch=patch)
    with pytest.warns(UserWarning, match="no mask"):
        dataset = FolderDataset(tmp_path, tokenizer, patch=patch, skip_bad=True)
    assert dataset.num_images() == 2 and dataset.num_skipped == 1


def test_size_mismatch(tmp_path):
    _write(tmp_path)
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "masks" / "img2.png")
    tokenizer, patch = _full()
    with pytest.raises(ValueError, match=r"img2\.png: mask is 30x40, image img2\.png is 32x40"):
        FolderDataset(tmp_path, tokenizer, patch=patch)


def test_duplicate_stems(tmp_path):
    _write(tmp_path)
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(tmp_path / "images" / "img0.jpg")
    with pytest.raises(ValueError, match="two files for stem 'img0'"):
        FolderDataset(tmp_path, *_full()[:1], patch=_full()[1])


def test_unreadable_header_is_caught_at_construction(tmp_path):
    _write(tmp_path)
    (tmp_path / "images" / "img1.png").write_bytes(b"not an image at all")
    tokenizer, patch = _full()
    with pytest.raises(ValueError, match=r"img1\.png: cannot read the image header"):
        FolderDataset(tmp_path, tokenizer, patch=patch)


def test_truncated_file_is_caught_at_read(tmp_path):
    _write(tmp_path)
    path = tmp_path / "masks" / "img1.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    tokenizer, patch = _full()
    dataset = FolderDataset(tmp_path, tokenizer, patch=patch)  # the header is intact
    dataset[0]
    with pytest.raises(ValueError, match=r"img1\.png: cannot read the file; it may be truncated"):
        dataset[2]
    skipping = FolderDataset(tmp_path, tokenizer, patch=patch, skip_bad=True)
    with pytest.warns(UserWarning, match="truncated"):
        sample = skipping[2]
    assert sample["name"] == "img2" and sample["num_skipped"] == 1 and skipping.num_skipped == 1


def test_label_outside_the_classes(tmp_path):
    _write(tmp_path, classes=4)
    bad = _mask(1)
    bad[3, 5] = 7
    Image.fromarray(bad).save(tmp_path / "masks" / "img1.png")
    tokenizer, patch = _full()
    dataset = FolderDataset(tmp_path, tokenizer, patch=patch)
    with pytest.raises(
        ValueError, match=r"img1\.png: label 7 is outside the classes 0\.\.3 and is not ignore_index 255"
    ):
        dataset[2]
    # 255 is the ignore index, not an error.
    bad[3, 5] = 255
    Image.fromarray(bad).save(tmp_path / "masks" / "img1.png")
    assert FolderDataset(tmp_path, tokenizer, patch=patch)[2]["mask"][3, 5] == 255


def test_class_list_must_match_the_tokenizer(tmp_path):
    _write(tmp_path)
    (tmp_path / "classes.txt").write_text("background\na\nb\n")
    tokenizer, patch = _full()
    with pytest.raises(ValueError, match="names 3 classes but the tokenizer has num_classes=4"):
        FolderDataset(tmp_path, tokenizer, classes=tmp_path / "classes.txt", patch=patch)


def test_unknown_colour_and_rgb_without_colours(tmp_path):
    _write(tmp_path, kind="colour")
    tokenizer, patch = _full()
    with pytest.raises(ValueError, match="RGB colour mask; give class colours"):
        FolderDataset(tmp_path, tokenizer, patch=patch)[0]
    (tmp_path / "classes.txt").write_text("bg 0 0 0\na 200 30 30\nb 30 200 30\nc 1 2 3\n")
    dataset = FolderDataset(tmp_path, tokenizer, classes=tmp_path / "classes.txt", patch=patch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"has colour \(30, 30, 200\), which is no class colour"):
            for item in range(len(dataset)):
                dataset[item]
