"""Stitching (rleseg.inference.stitch): patch -> stitch round trip, votes, scores, ties, video windows,
panoptic instances joined across patches."""

import numpy as np
import pytest

from helpers import hela_masks, stardist_mask
from rleseg.data import PatchConfig, make_patch, sliding_windows
from rleseg.data.patches import crop
from rleseg.inference import InferenceOptions
from rleseg.inference.stitch import stitch, stitch_panoptic_patches, stitch_patches_of_image, stitch_windows
from rleseg.metrics.panoptic import panoptic_quality
from rleseg.tokens import downsample_mask, upsample_mask
from rleseg.tokens.panoptic import PanopticTokenizer

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


# ----------------------------------------------------------------------------- panoptic: joining across patches
def _panoptic_oracle(instances, patch, factor, stride, join, join_iou=0.5):
    """What a perfect model gives: each patch's generation replaced by its ground-truth tokens (the panoptic
    tokenizer's round trip of the patch's subsampled maps, instances numbered per patch as a model writes
    them), stitched over the whole image."""
    semantic = (instances > 0).astype(np.int64)
    tokenizer = PanopticTokenizer((patch // factor, patch // factor), 2, [1])
    boxes = sliding_windows(instances.shape, patch, stride)

    def generated(box):
        return tokenizer.decode(tokenizer.encode(*(downsample_mask(crop(m, box, 0, -2), factor)
                                                   for m in (semantic, instances))))

    maps = [generated(box) for box in boxes]
    per_patch = (np.stack([m[i] for m in maps]).astype(np.int64) for i in (0, 1))
    config = PatchConfig(patch_size=patch, factor=factor, stride=stride)
    return stitch_panoptic_patches(*per_patch, boxes, config, instances.shape, 2, join, join_iou)


def _ceiling(instances, factor):
    """The whole image subsampled and upsampled back: the best any token model can do without patches."""
    instances = upsample_mask(downsample_mask(instances, factor), factor, instances.shape).astype(np.int64)
    return (instances > 0).astype(np.int64), instances


def _pq(pred, instances):
    # Background is not a class of its own (the panoptic tokenizer's stuff classes: none), as rleseg scores it.
    return panoptic_quality(pred, ((instances > 0).astype(np.int64), instances), 2, [1], [])["all"]["pq"]


@pytest.mark.parametrize(("stride", "join"), [(None, "touch"), (64, "touch"), (64, "overlap"), (96, "overlap")])
def test_panoptic_oracle_on_stardist_reaches_the_subsampling_ceiling(stride, join):
    instances = stardist_mask().astype(np.int64)  # 512x512, 125 nuclei
    ceiling = _ceiling(instances, 4)
    semantic, joined = _panoptic_oracle(instances, 128, 4, stride, join)
    assert abs(_pq((semantic, joined), instances) - _pq(ceiling, instances)) <= 0.01
    assert joined.max() == len(np.unique(instances)) - 1 == 125
    # The semantic map is the ceiling's, pixel for pixel (windows on the subsampling grid).
    np.testing.assert_array_equal(semantic, ceiling[0])
    # Without joining every cut nucleus counts as several: far below the ceiling.
    split = _panoptic_oracle(instances, 128, 4, stride, "none")
    assert split[1].max() > 150 and _pq(split, instances) < _pq(ceiling, instances) - 0.1


@pytest.mark.parametrize("stride", [None, 96, 64])
def test_semantic_oracle_on_stardist_stays_at_the_ceiling(stride):
    # Semantic models' stitching (majority vote) of perfect patches: exactly the whole image's subsampling.
    semantic = (stardist_mask() > 0).astype(np.int64)
    boxes = sliding_windows(semantic.shape, 128, stride)
    patches = np.stack([downsample_mask(crop(semantic, box, 0, -2), 4) for box in boxes])
    stitched = stitch_patches_of_image(patches, boxes, PatchConfig(patch_size=128, factor=4), semantic.shape, 2)
    np.testing.assert_array_equal(stitched, upsample_mask(downsample_mask(semantic, 4), 4, semantic.shape))


@pytest.mark.parametrize("frame", [0])
def test_panoptic_oracle_on_hela_frames_reaches_the_subsampling_ceiling(frame):
    # 700x1100: the last window of each axis overlaps its neighbour, the others abut.
    instances = hela_masks()[frame].astype(np.int64)
    semantic, joined = _panoptic_oracle(instances, 128, 4, None, "touch")
    assert abs(_pq((semantic, joined), instances) - _pq(_ceiling(instances, 4), instances)) <= 0.01
    assert abs(int(joined.max()) - (len(np.unique(instances)) - 1)) <= 1


def _disk(shape, centre, radius):
    rows, cols = np.indices(shape)
    return ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2).astype(np.int64)


@pytest.mark.parametrize(("stride", "join"), [(None, "touch"), (16, "overlap"), (16, "touch"), (14, "overlap")])
def test_an_object_cut_by_patch_borders_is_one_instance(stride, join):
    instances = _disk((64, 64), (30, 34), 11) * 7  # cut by the borders at row 32 and column 32
    semantic, joined = _panoptic_oracle(instances, 32, 4, stride, join)
    assert joined.max() == 1 and (semantic == joined).all()
    if (stride or 32) % 4 == 0:  # windows on the subsampling grid: exactly the ceiling's disk
        np.testing.assert_array_equal(joined, _ceiling(instances, 4)[0])
    else:  # off the grid (stride 14: joined at full resolution), each patch samples the disk its own way
        assert abs(int(joined.sum()) - int(_ceiling(instances, 4)[0].sum())) < 0.1 * instances.astype(bool).sum()
    assert _panoptic_oracle(instances, 32, 4, stride, "none")[1].max() > 1  # pieces from several patches


def test_touching_objects_stay_apart_where_windows_overlap():
    # Two nuclei of one class side by side, meeting at column 32, where the stride-32 windows abut.
    instances = np.zeros((32, 64), np.int64)
    instances[8:24, 20:32], instances[8:24, 32:44] = 1, 2
    for stride, join in ((16, "overlap"), (16, "touch")):
        _, joined = _panoptic_oracle(instances, 32, 4, stride, join)
        # The overlapping windows each see both whole: matched one to one, never to each other.
        np.testing.assert_array_equal(joined, instances)
    # Abutting windows without overlap have no second view of the border: "touch" joins the two (the rule
    # documented in stitch_panoptic_patches) and "overlap" joins nothing.
    assert _panoptic_oracle(instances, 32, 4, None, "touch")[1].max() == 1
    np.testing.assert_array_equal(_panoptic_oracle(instances, 32, 4, None, "overlap")[1], instances)


def test_joining_needs_one_class_and_enough_overlap():
    # One object of the first patch, a different class in the second: never joined.
    semantic = np.stack([np.ones((4, 4)), np.full((4, 4), 2)]).astype(np.int64)
    ids = np.ones((2, 4, 4), np.int64)
    boxes = np.array([[0, 0, 4, 4], [0, 2, 4, 6]])
    config = PatchConfig(patch_size=4, factor=1)
    classes, joined = stitch_panoptic_patches(semantic, ids, boxes, config, (4, 6), 3)
    assert joined.max() == 2 and set(np.unique(classes)) == {1, 2}
    # One class, but in the two shared columns the second patch's instance holds only the top half of the
    # first's: IoU 0.5, not above 0.5.
    ids[1, 2:, :2] = 0
    semantic[1] = ids[1]
    assert stitch_panoptic_patches(semantic, ids, boxes, config, (4, 6), 3, join_iou=0.5)[1].max() == 2
    assert stitch_panoptic_patches(semantic, ids, boxes, config, (4, 6), 3, join_iou=0.4)[1].max() == 1
    with pytest.raises(ValueError, match="join must be one of touch, overlap, none"):
        stitch_panoptic_patches(semantic, ids, boxes, config, (4, 6), 3, join="merge")


@pytest.mark.parametrize(("field", "value", "message"), [("panoptic_join", "merge", "panoptic_join must be one of"),
                                                        ("join_iou", 1.0, r"join_iou must lie in \[0, 1\)")])
def test_inference_options_check_the_join(field, value, message):
    with pytest.raises(ValueError, match=message):
        InferenceOptions.from_fields(**{field: value}).check()
