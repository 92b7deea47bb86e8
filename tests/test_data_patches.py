"""The patch pipeline: windows, crops, augmentation alignment, resizing, the share of empty patches kept."""

import numpy as np
import pytest

from rleseg.data import (
    ArrayDataset,
    Augmentation,
    PatchConfig,
    crop,
    make_patch,
    resize,
    sliding_windows,
    window_starts,
)
from rleseg.data.patches import random_window_starts
from rleseg.tokens import Tokenizer, downsample_mask, upsample_mask

PALETTE = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=np.float32)


def _blocks(shape=(90, 70), classes=5, seed=0, block=5):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, classes, (-(-shape[0] // block), -(-shape[1] // block)))
    return upsample_mask(small, block, shape).astype(np.int64)


def test_windows_cover_the_image_and_stay_inside():
    assert window_starts(100, 32, 32).tolist() == [0, 32, 64, 68]
    assert window_starts(20, 32, 8).tolist() == [0]
    rng = np.random.default_rng(0)
    for _ in range(20):
        starts = random_window_starts(200, 32, (8, 40), rng)
        steps = np.diff(starts)
        assert starts[0] == 0 and starts[-1] == 200 - 32
        assert steps.min() >= 1 and steps[:-1].min() >= 8 and steps.max() <= 40
    boxes = sliding_windows((100, 70), 32, 20)
    covered = np.zeros((100, 70), bool)
    for y0, x0, y1, x1 in boxes:
        assert y1 - y0 == 32 and y1 <= 100 and x1 <= 70
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def test_crop_pads_small_images():
    image = np.ones((10, 12, 3), np.float32)
    mask = np.ones((10, 12), np.int64)
    box = sliding_windows((10, 12), 16)[0]
    assert crop(image, box, 0, -3).shape == (16, 16, 3)
    patch = crop(mask, box, 255, -2)
    assert (patch[:10, :12] == 1).all() and (patch[10:] == 255).all() and (patch[:, 12:] == 255).all()


@pytest.mark.parametrize("seed", range(6))
def test_augmentation_keeps_image_and_mask_aligned(seed):
    # The image is the palette colour of the label: after any transform they must still agree.
    mask = _blocks((64, 64), seed=seed)
    image = PALETTE[mask]
    config = PatchConfig(patch_size=48, factor=4, stride_range=(8, 16), rot90=True, flip=True)
    rng = np.random.default_rng(seed)
    box = sliding_windows((64, 64), 48, None, (8, 16), rng)[seed % 4]
    patch = make_patch(image, mask, box, config, rng, ignore_index=255, instances=mask * 10)
    np.testing.assert_array_equal(patch["image"], PALETTE[patch["mask"]])
    np.testing.assert_array_equal(patch["instances"], patch["mask"] * 10)
    np.testing.assert_array_equal(patch["mask_small"], downsample_mask(patch["mask"], 4))


def test_every_quarter_turn_and_flip_is_applied_identically():
    mask = _blocks((24, 24), seed=3, block=3)
    image = PALETTE[mask]
    for turns in range(4):
        for flips in [(False, False), (True, False), (False, True), (True, True)]:
            aug = Augmentation(turns, *flips)
            out_mask = aug.apply(mask, -2, 255, linear=False)
            np.testing.assert_array_equal(aug.apply(image, -3, 0, linear=True), PALETTE[out_mask])
    # Video: a leading frame axis gets the same transform per frame.
    frames = np.stack([mask, mask[::-1]])
    aug = Augmentation(1, True, False)
    out = aug.apply(frames, -2, 255, linear=False)
    np.testing.assert_array_equal(out[1], aug.apply(mask[::-1], -2, 255, linear=False))


def test_arbitrary_rotation_keeps_alignment_away_from_edges():
    mask = _blocks((64, 64), seed=1, block=8)
    image = PALETTE[mask]
    aug = Augmentation(degrees=23.0)
    out_mask = aug.apply(mask, -2, 255, linear=False)
    out_image = aug.apply(image, -3, 0.0, linear=True)
    assert (out_mask[0, 0] == 255) and (out_image[0, 0] == 0).all()  # corners come from outside
    # Bilinear blurs label borders; inside uniform 3x3 neighbourhoods colours must match labels.
    pad = np.pad(out_mask, 1, mode="edge")
    window = np.lib.stride_tricks.sliding_window_view(pad, (3, 3))
    uniform = (window == out_mask[..., None, None]).all(axis=(-1, -2)) & (out_mask != 255)
    assert uniform.sum() > 1500
    np.testing.assert_allclose(out_image[uniform], PALETTE[out_mask[uniform]], atol=1e-5)


def test_resize_nearest_and_bilinear():
    mask = _blocks((20, 30), block=10)
    big = resize(mask, (40, 60), -2, linear=False)
    np.testing.assert_array_equal(big, upsample_mask(mask, 2))
    np.testing.assert_array_equal(resize(big, (20, 30), -2, linear=False), mask)
    ramp = np.tile(np.linspace(0, 1, 30, dtype=np.float32), (20, 1))[..., None]
    out = resize(ramp, (10, 15), -3, linear=True)
    assert out.shape == (10, 15, 1) and np.all(np.diff(out[0, :, 0]) > 0)


def _half_empty(empty_keep: float) -> ArrayDataset:
    """Ten 32x64 images, class 1 on the left half, background and ignored pixels on the right: at 16-pixel
    patches 4 of each image's 8 windows are empty."""
    masks = np.zeros((10, 32, 64), np.int64)
    masks[:, :, :32] = 1
    masks[:, :8, 48:] = 255  # ignored pixels are not foreground
    images = np.random.default_rng(0).random((10, 32, 64, 3)).astype(np.float32)
    patch = PatchConfig(patch_size=16, factor=4, empty_keep=empty_keep)
    return ArrayDataset(images, masks, Tokenizer((4, 4), 2), patch)


def _epochs(dataset: ArrayDataset, epochs: int) -> tuple[np.ndarray, list[int]]:
    """(whether each sample of ``epochs`` epochs is empty, the item each came from); every sample must be the
    patch of the item it names (no augmentation here, so its mask is the crop at its box)."""
    empty, items = [], []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        for item in range(len(dataset)):
            sample = dataset[item]
            y0, x0, y1, x1 = sample["box"].tolist()
            np.testing.assert_array_equal(sample["mask"], dataset.masks[sample["image_index"], y0:y1, x0:x1])
            small = sample["mask_small"].numpy()
            empty.append(not ((small != 0) & (small != 255)).any())
            items.append(int(sample["index"]))
    return np.array(empty), items


def test_empty_keep_sets_the_share_of_empty_training_patches():
    empty, items = _epochs(_half_empty(1.0), 1)  # the default: every patch is its own item's, empty or not
    assert empty.mean() == 0.5 and items == list(range(80))
    assert not _epochs(_half_empty(0.0), 2)[0].any()  # 0: an empty patch is always replaced
    # 0.1 keeps an empty patch for every ten of the paper's list of patches: 0.1 * 40 / (0.1 * 40 + 40) = 9%.
    empty, items = _epochs(_half_empty(0.1), 5)
    assert 0.05 < empty.mean() < 0.14
    assert _epochs(_half_empty(0.1), 5)[1] == items  # the replacements depend on (seed, epoch, item) only
    with pytest.raises(ValueError, match="empty_keep must be >= 0 and <= 1"):
        PatchConfig(empty_keep=1.5)
