"""The patch pipeline: windows, augmentation alignment, patch -> stitch round trip, video merging."""

import numpy as np
import pytest

from rleseg.data import (
    Augmentation,
    PatchConfig,
    crop,
    make_patch,
    resize,
    sliding_windows,
    stitch,
    stitch_patches_of_image,
    stitch_windows,
    window_starts,
)
from rleseg.data.patches import random_window_starts
from rleseg.tokens import downsample_mask, upsample_mask

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


@pytest.mark.parametrize(("shape", "patch", "factor", "stride"), [((96, 80), 32, 4, 16), ((100, 70), 32, 4, 12)])
def test_stitching_ground_truth_patches_gives_back_the_mask(shape, patch, factor, stride):
    mask = _blocks(shape, classes=4, block=7)  # not on the subsampling grid: a typical loss
    image = PALETTE[mask]
    config = PatchConfig(patch_size=patch, factor=factor, stride=stride)
    boxes = sliding_windows(shape, patch, stride)
    rng = np.random.default_rng(0)
    small = np.stack([make_patch(image, mask, box, config, rng, 255)["mask_small"] for box in boxes])
    stitched = stitch_patches_of_image(small, boxes, config, shape, num_classes=4)
    assert stitched.shape == shape
    # Up to the subsampling loss: the same as one subsample -> upsample of the whole mask.
    direct = upsample_mask(downsample_mask(mask, factor), factor, shape)
    direct_agreement = (direct == mask).mean()
    assert direct_agreement < 1
    assert (stitched == mask).mean() >= direct_agreement - 0.03
    if shape[0] % factor == 0 and shape[1] % factor == 0 and stride % factor == 0:
        np.testing.assert_array_equal(stitched, direct)  # windows on the subsampling grid: exact
    # Factor 1: lossless.
    full = PatchConfig(patch_size=patch, factor=1, stride=stride)
    exact = np.stack([make_patch(image, mask, box, full, rng, 255)["mask_small"] for box in boxes])
    np.testing.assert_array_equal(stitch_patches_of_image(exact, boxes, full, shape, 4), mask)


def test_stitch_majority_vote_and_scores():
    boxes = np.array([[0, 0, 4, 4], [0, 0, 4, 4], [0, 0, 4, 4]])
    preds = np.stack([np.full((4, 4), 1), np.full((4, 4), 2), np.full((4, 4), 2)])
    assert (stitch(preds, boxes, (4, 4), 1, 3) == 2).all()
    assert (stitch(preds, boxes, (4, 4), 1, 3, scores=np.array([0.9, 0.1, 0.2])) == 1).all()
    per_pixel = np.zeros((3, 4, 4), np.float32)
    per_pixel[0, :2] = 1.0
    per_pixel[2, 2:] = 0.5
    out = stitch(preds, boxes, (4, 4), 1, 3, scores=per_pixel)
    assert (out[:2] == 1).all() and (out[2:] == 2).all()
    # Uncovered pixels get the fill label; labels out of range are refused.
    assert (stitch(preds[:1], boxes[:1], (6, 6), 1, 3, fill=0)[4:] == 0).all()
    with pytest.raises(ValueError, match="labels"):
        stitch(preds, boxes, (4, 4), 1, 2)


def test_stitch_ties_go_to_the_patch_whose_centre_is_nearer():
    # Two patches overlap by half; every pixel of the overlap has one vote for each label.
    boxes = np.array([[0, 0, 8, 8], [0, 4, 8, 12]])
    preds = np.stack([np.full((8, 8), 1), np.full((8, 8), 2)])
    out = stitch(preds, boxes, (8, 12), 1, 3)
    assert (out[:, :4] == 1).all() and (out[:, 8:] == 2).all()
    assert (out[3:5, 5] == 1).all() and (out[3:5, 6] == 2).all()


def test_stitch_windows_votes_per_frame():
    truth = np.stack([_blocks((12, 12), classes=3, seed=t, block=3) for t in range(7)])
    starts = np.arange(0, 7 - 3 + 1)  # windows of 3 frames, stride 1
    windows = np.stack([truth[s : s + 3] for s in starts])
    windows[0, 2] = 0  # one window wrong on frame 2: outvoted by the two others
    merged = stitch_windows(windows, starts, 7, 3)
    np.testing.assert_array_equal(merged, truth)
    with pytest.raises(ValueError, match="overrun"):
        stitch_windows(windows, starts + 1, 7, 3)
