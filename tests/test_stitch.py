"""Stitching (rleseg.inference.stitch): patch -> stitch round trip, votes, scores, ties, video windows."""

import numpy as np
import pytest

from rleseg.data import PatchConfig, make_patch, sliding_windows
from rleseg.inference.stitch import stitch, stitch_patches_of_image, stitch_windows
from rleseg.tokens import downsample_mask, upsample_mask

PALETTE = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=np.float32)


def _blocks(shape, classes, seed=0, block=5):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, classes, (-(-shape[0] // block), -(-shape[1] // block)))
    return upsample_mask(small, block, shape).astype(np.int64)


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
