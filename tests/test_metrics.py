"""Contracts of rleseg.metrics: hand-computed cases, agreement with independent implementations
(torchmetrics, a plain confusion-matrix mIoU, per-image loops written here), exact merging, no torch."""

import json
import subprocess
import sys

import numpy as np
import pytest

from rleseg.metrics import (
    PanopticMeter,
    SegmentationMeter,
    VideoMeter,
    boundary_f_score,
    confusion_matrix,
    panoptic_quality,
    per_class_iou,
)


def blocky(rng, shape, num_classes, block=4):
    """Random label maps made of block x block squares, so that boundaries and segments are not noise."""
    n, h, w = shape
    small = rng.integers(0, num_classes, (n, h // block, w // block))
    return np.repeat(np.repeat(small, block, 1), block, 2)


def perturb(rng, labels, num_classes, fraction=0.1):
    out = labels.copy()
    noise = rng.random(labels.shape) < fraction
    out[noise] = rng.integers(0, num_classes, int(noise.sum()))
    return np.roll(out, rng.integers(-1, 2), axis=-1)


def values(listed):
    """JSON list with None -> float array with NaN."""
    return np.array([np.nan if v is None else v for v in listed], np.float64)


# --- hand-computed cases --------------------------------------------------------------------------


def test_scores_by_hand_4x4():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [2, 2, 0, 0]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 0], [0, 0, 0, 0], [0, 2, 0, 0]])
    # class 0: gt 10, pred 11, TP 9. class 1: gt 4, pred 4, TP 3. class 2: gt 2, pred 1, TP 1. class 3 absent.
    meter = SegmentationMeter(4, boundary_tolerance=None)
    meter.update(pred, gt)
    pooled = meter.compute()["pooled"]
    cls = pooled["per_class"]
    np.testing.assert_allclose(cls["dice"][:3], [18 / 21, 6 / 8, 2 / 3])
    np.testing.assert_allclose(cls["iou"][:3], [9 / 12, 3 / 5, 1 / 2])
    np.testing.assert_allclose(cls["precision"][:3], [9 / 11, 3 / 4, 1 / 1])
    np.testing.assert_allclose(cls["recall"][:3], [9 / 10, 3 / 4, 1 / 2])
    assert all(cls[name][3] is None for name in cls)
    assert pooled["pixel_accuracy"] == 13 / 16
    np.testing.assert_allclose(pooled["mean"]["iou"], (9 / 12 + 3 / 5 + 1 / 2) / 3)
    np.testing.assert_allclose(pooled["mean_without_background"]["iou"], (3 / 5 + 1 / 2) / 2)
    assert meter.compute()["confusion"] == [[9, 1, 0, 0], [1, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]


def test_per_image_average_skips_absent_classes_and_ignored_pixels():
    gt = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 255]]])
    pred = np.array([[[1, 0], [0, 0]], [[0, 0], [1, 1]]])
    meter = SegmentationMeter(2, ignore_index=255, boundary_tolerance=None)
    per_image = meter.update(pred, gt)
    # Image 0: class 1 IoU 1/2. Image 1 (pixel (1,1) ignored): class 1 predicted once, absent in gt: IoU 0,
    # precision 0, recall 0 (sklearn zero division).
    np.testing.assert_allclose(per_image["iou"][:, 1], [1 / 2, 0])
    np.testing.assert_allclose(per_image["recall"][1], [2 / 3, 0])
    out = meter.compute()
    assert out["per_image"]["images_per_class"] == [2, 2]
    np.testing.assert_allclose(out["per_image"]["per_class"]["iou"][1], 1 / 4)
    np.testing.assert_allclose(out["per_image"]["per_class"]["iou"][0], (2 / 3 + 2 / 3) / 2)
    np.testing.assert_allclose(out["per_image"]["pixel_accuracy"], (3 / 4 + 2 / 3) / 2)
    np.testing.assert_allclose(out["pooled"]["pixel_accuracy"], 5 / 7)
    assert out["pooled"]["gt_pixels"] == [5, 2]


def test_boundary_f_by_hand():
    gt = np.zeros((8, 8), int)
    gt[2:6, 2:6] = 1
    pred = np.roll(gt, 1, axis=1)
    # Class 1: 12-pixel rings; the shifted ring shares its top and bottom rows' 3 middle pixels with the
    # true one (6 of 12); every pixel is within 1 pixel of the other ring. Class 0: the 16 background pixels
    # 4-adjacent to the square, 6 shared.
    np.testing.assert_allclose(boundary_f_score(pred, gt, 3, tolerance=0), [6 / 16, 6 / 12, np.nan])
    np.testing.assert_allclose(boundary_f_score(pred, gt, 3, tolerance=1)[1], 1.0)
    # The image border is not a boundary: moved against the right border, the predicted ring of class 1
    # loses its right column (10 pixels, 6 on the true ring): P = 6/10, R = 6/12.
    edge = np.zeros((6, 6), int)
    edge[1:5, 2:6] = 1
    core = np.zeros((6, 6), int)
    core[1:5, 1:5] = 1
    np.testing.assert_allclose(boundary_f_score(edge, core, 2, tolerance=0)[1], 2 * 0.6 * 0.5 / 1.1)


def test_boundary_tolerance_is_euclidean():
    gt = np.zeros((12, 12), int)
    gt[5, 5] = 1
    for shift, matched_from in ((1, 2), (2, 3)):  # diagonal offsets at distance sqrt(2) and sqrt(8)
        pred = np.roll(gt, (shift, shift), axis=(0, 1))
        scores = [boundary_f_score(pred, gt, 2, tolerance=t)[1] for t in (matched_from - 1, matched_from)]
        assert scores == [0.0, 1.0]


def test_boundary_f_edge_cases():
    full = np.ones((5, 5), int)
    assert boundary_f_score(full, full, 2)[1] == 1.0  # no boundary in either, class present in both
    assert np.isnan(boundary_f_score(full, full, 2)[0])
    gt = np.zeros((5, 5), int)
    gt[1:3, 1:3] = 1
    assert boundary_f_score(np.zeros((5, 5), int), gt, 2)[1] == 0.0  # missed class
    # Ignored pixels: the true region's contour against the ignored area is matched by the prediction.
    gt[3:, :] = 255
    pred = np.where(gt == 255, 0, gt)
    np.testing.assert_allclose(boundary_f_score(pred, gt, 2, tolerance=0, ignore_index=255), [1.0, 1.0])


def test_panoptic_match_just_above_and_below_half():
    def strip(thing_end, n=200):
        semantic = np.zeros((1, n), int)
        semantic[0, :thing_end] = 1
        return semantic, np.where(semantic == 1, 7, 0)

    gt = strip(100)  # a 100-pixel thing, then 100 pixels of stuff
    above = panoptic_quality(strip(51), gt, 2, thing_classes=[1])  # IoU 51/100
    assert above["per_class"]["tp"] == [1, 1] and above["per_class"]["fp"] == [0, 0]
    np.testing.assert_allclose(above["per_class"]["pq"], [100 / 149, 0.51])
    np.testing.assert_allclose(above["things"]["pq"], 0.51)
    np.testing.assert_allclose(above["all"]["pq"], (100 / 149 + 0.51) / 2)
    below = panoptic_quality(strip(50), gt, 2, thing_classes=[1])  # IoU exactly 0.5: no match
    assert below["per_class"]["tp"] == [1, 0] and below["per_class"]["fp"] == [0, 1]
    assert below["per_class"]["fn"] == [0, 1]
    assert below["things"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 1}
    np.testing.assert_allclose(below["stuff"]["sq"], 100 / 150)


def test_panoptic_void_rules():
    # 1 x 200 strip: pixels 0..9 void in the ground truth, a thing (class 1) at 10..99, stuff (0) after.
    gt_sem = np.zeros((1, 200), int)
    gt_sem[0, :10] = 255
    gt_sem[0, 10:100] = 1
    gt = (gt_sem, np.ones_like(gt_sem))

    def predict(thing_end):
        sem = np.zeros((1, 200), int)
        sem[0, :thing_end] = 1
        return sem, np.ones_like(sem)

    # Pixels predicted on void leave the union: 56 predicted (10 on void) -> 46 / (56 + 90 - 46 - 10) > 0.5,
    # though 46 / 100 < 0.5 with them.
    out = panoptic_quality(predict(56), gt, 3, thing_classes=[1, 2], ignore_index=255)
    assert out["per_class"]["tp"][1] == 1
    np.testing.assert_allclose(out["per_class"]["sq"][1], 46 / 90)
    assert panoptic_quality(predict(55), gt, 3, thing_classes=[1, 2], ignore_index=255)["per_class"]["tp"][1] == 0
    # A predicted segment more than half on void is no false positive; half or less is one.
    for start, stop, fp in ((0, 6, 0), (5, 15, 1)):
        sem, inst = predict(56)
        sem[0, start:stop], inst[0, start:stop] = 2, 9
        assert panoptic_quality((sem, inst), gt, 3, [1, 2], ignore_index=255)["per_class"]["fp"][2] == fp
    # Classes that are neither things nor stuff are void too, and are not scored.
    out = panoptic_quality(predict(56), (np.where(gt_sem == 255, 2, gt_sem), gt[1]), 3, [1], stuff_classes=[0])
    assert out["per_class"]["tp"] == [1, 1, 0] and out["per_class"]["pq"][2] is None
    assert out["all"]["n"] == 2


# --- independent implementations ------------------------------------------------------------------


def plain_miou(pred, gt, num_classes, ignore_index):
    """Dataset-pooled IoU per class from a confusion matrix built with a Python loop over classes."""
    keep = gt != ignore_index
    p, g = pred[keep], gt[keep]
    iou = np.full(num_classes, np.nan)
    for c in range(num_classes):
        inter = np.sum((p == c) & (g == c))
        union = np.sum((p == c) | (g == c))
        if union:
            iou[c] = inter / union
    return iou


def per_image_loop(pred, gt, num_classes, ignore_index):
    """The paper's protocol, written plainly: per image and class, skip classes absent from both."""
    sums = {k: np.zeros(num_classes) for k in ("dice", "iou", "precision", "recall")}
    counts = np.zeros(num_classes)
    for p_img, g_img in zip(pred, gt, strict=True):
        keep = g_img != ignore_index
        for c in range(num_classes):
            p, g = p_img[keep] == c, g_img[keep] == c
            if not (p.any() or g.any()):
                continue
            tp = np.sum(p & g)
            counts[c] += 1
            sums["dice"][c] += 2 * tp / (p.sum() + g.sum())
            sums["iou"][c] += tp / np.sum(p | g)
            sums["precision"][c] += tp / p.sum() if p.any() else 0.0
            sums["recall"][c] += tp / g.sum() if g.any() else 0.0
    with np.errstate(invalid="ignore"):
        return {k: v / counts for k, v in sums.items()}


def test_pooled_and_per_image_against_plain_loops():
    rng = np.random.default_rng(1)
    gt = blocky(rng, (6, 32, 32), 5)
    gt[:, :3, :] = 255
    gt[2] = np.where(gt[2] == 4, 0, gt[2])  # class 4 absent from one image's ground truth
    pred = perturb(rng, gt, 4)  # class 4 never predicted
    meter = SegmentationMeter(5, ignore_index=255)
    meter.update(pred, gt)
    out = meter.compute()
    expected = plain_miou(pred, gt, 5, 255)
    np.testing.assert_allclose(values(out["pooled"]["per_class"]["iou"]), expected)
    np.testing.assert_allclose(per_class_iou(pred, gt, 5, ignore_index=255), expected)
    np.testing.assert_allclose(out["pooled"]["mean"]["iou"], np.nanmean(expected))
    loop = per_image_loop(pred, gt, 5, 255)
    for name, value in loop.items():
        np.testing.assert_allclose(values(out["per_image"]["per_class"][name]), value, err_msg=name)
    assert confusion_matrix(pred, gt, 5, 255).sum() == np.sum(gt != 255)


def test_against_torchmetrics_dice_and_iou():
    torch = pytest.importorskip("torch")
    from torchmetrics.segmentation import DiceScore, MeanIoU

    rng = np.random.default_rng(2)
    gt = blocky(rng, (8, 32, 32), 4)
    gt[3] = np.where(gt[3] == 2, 1, gt[3])
    pred = perturb(rng, gt, 4, fraction=0.2)
    pred[3] = np.where(pred[3] == 2, 3, pred[3])  # class 2 absent from image 3: skipped there
    meter = SegmentationMeter(4, boundary_tolerance=None)
    for lo in range(0, 8, 3):  # uneven batches
        meter.update(pred[lo : lo + 3], gt[lo : lo + 3])
    out = meter.compute()
    p, g = torch.from_numpy(pred), torch.from_numpy(gt)

    # DiceScore(aggregation_level="samplewise", average="none"): Dice per image and class, NaN where
    # |pred| + |gt| = 0, and compute() takes the NaN-mean over images = our per_image protocol.
    per_image = DiceScore(4, average="none", input_format="index", aggregation_level="samplewise")
    per_image.update(p, g)
    np.testing.assert_allclose(values(out["per_image"]["per_class"]["dice"]), per_image.compute().double(), rtol=1e-6)
    # aggregation_level="global": numerators and denominators summed over images first = pooled.
    pooled = DiceScore(4, average="none", input_format="index", aggregation_level="global")
    pooled.update(p, g)
    np.testing.assert_allclose(values(out["pooled"]["per_class"]["dice"]), pooled.compute().double(), rtol=1e-6)
    # MeanIoU(per_class=True): IoU per image, averaged over the images where the union is non-empty.
    miou = MeanIoU(4, per_class=True, input_format="index")
    miou.update(p, g)
    np.testing.assert_allclose(values(out["per_image"]["per_class"]["iou"]), miou.compute().double(), rtol=1e-6)


def test_panoptic_against_torchmetrics():
    torch = pytest.importorskip("torch")
    from torchmetrics.detection import PanopticQuality

    rng = np.random.default_rng(3)
    things, stuff = [1, 2], [0, 3]  # class 4 is void (neither), in the ground truth only
    gt_sem = blocky(rng, (6, 32, 32), 5, block=8)
    gt_inst = blocky(rng, (6, 32, 32), 3, block=8)
    pred_sem = np.where(rng.random(gt_sem.shape) < 0.05, rng.integers(0, 4, gt_sem.shape), gt_sem)
    pred_sem = np.roll(np.where(pred_sem == 4, 0, pred_sem), 2, axis=-1)
    pred_inst = np.where(rng.random(gt_sem.shape) < 0.3, 2, gt_inst)
    # torchmetrics removes pixels predicted void from the union and drops mostly-predicted-void ground
    # truth from the FN count (panopticapi does neither): with no void in the prediction the rules agree.
    assert np.isin(pred_sem, things + stuff).all()
    meter = PanopticMeter(5, things, stuff)
    meter.update(pred_sem, pred_inst, gt_sem, gt_inst)
    out = meter.compute()
    # PanopticQuality pools TP/FP/FN/IoU sums over images (panopticapi style); per-class rows come in the
    # order of sorted things then sorted stuff; averages are over classes with TP + FP + FN > 0.
    reference = PanopticQuality(things, stuff, return_sq_and_rq=True, return_per_class=True)
    reference.update(
        torch.from_numpy(np.stack([pred_sem, pred_inst], -1)), torch.from_numpy(np.stack([gt_sem, gt_inst], -1))
    )
    per_class = reference.compute().double().numpy()  # (classes, 3): pq, sq, rq
    order = things + stuff
    assert out["all"]["n"] == 4 and sum(out["per_class"]["tp"]) > 10
    for col, name in enumerate(("pq", "sq", "rq")):
        np.testing.assert_allclose(values(out["per_class"][name])[order], per_class[:, col], rtol=1e-6)
    averaged = PanopticQuality(things, stuff, return_sq_and_rq=True)
    averaged.update(
        torch.from_numpy(np.stack([pred_sem, pred_inst], -1)), torch.from_numpy(np.stack([gt_sem, gt_inst], -1))
    )
    np.testing.assert_allclose([out["all"][k] for k in ("pq", "sq", "rq")], averaged.compute().double(), rtol=1e-6)


def test_video_flip_rates_against_loop():
    rng = np.random.default_rng(4)
    gt = blocky(rng, (6, 16, 16), 3).reshape(2, 3, 16, 16)
    gt[0, 1, :2] = 255
    pred = perturb(rng, gt, 3, fraction=0.2)
    meter = VideoMeter(3, ignore_index=255)
    meter.update(pred, gt)
    out = meter.compute()
    flips, pairs, rates = np.zeros(2), 0, []
    for p_vid, g_vid in zip(pred, gt, strict=True):
        f, n = np.zeros(2), 0
        for t in range(1, len(g_vid)):
            keep = (g_vid[t] != 255) & (g_vid[t - 1] != 255)
            f += [np.sum((p_vid[t] != p_vid[t - 1]) & keep), np.sum((g_vid[t] != g_vid[t - 1]) & keep)]
            n += keep.sum()
        flips, pairs = flips + f, pairs + n
        rates.append(f / n)
    pooled, per_video = out["temporal"]["pooled"], out["temporal"]["per_video"]
    np.testing.assert_allclose([pooled["pred_flip_rate"], pooled["gt_flip_rate"]], flips / pairs)
    np.testing.assert_allclose([per_video["pred_flip_rate"], per_video["gt_flip_rate"]], np.mean(rates, 0))
    np.testing.assert_allclose(pooled["ratio"], flips[0] / flips[1])
    assert out["num_videos"] == 2 and out["num_images"] == 6 and out["temporal"]["pixel_pairs"] == pairs
    frames = SegmentationMeter(3, ignore_index=255)
    frames.update(pred.reshape(6, 16, 16), gt.reshape(6, 16, 16))
    assert {k: v for k, v in out.items() if k in frames.compute()} == frames.compute()


# --- accumulation ---------------------------------------------------------------------------------


def make_meters():
    return [
        (SegmentationMeter(4, ignore_index=255), 2),
        (PanopticMeter(4, thing_classes=[1, 2], ignore_index=255), 4),
        (VideoMeter(4, ignore_index=255), 2),
    ]


def batches(rng, kind, n):
    gt = blocky(rng, (n * 2, 16, 16), 4)
    gt[:, 0, :] = 255
    pred = perturb(rng, np.where(gt == 255, 0, gt), 4)
    if kind == 4:
        inst = blocky(rng, gt.shape, 3)
        return [(pred[i : i + 2], inst[i : i + 2], gt[i : i + 2], np.roll(inst, 1, -1)[i : i + 2]) for i in (0, 2)]
    return [(pred[i : i + 2].reshape(1, 2, 16, 16), gt[i : i + 2].reshape(1, 2, 16, 16)) for i in (0, 2)]


@pytest.mark.parametrize("index", range(3))
def test_merge_and_state_round_trip_equal_single_pass(index):
    rng = np.random.default_rng(5)
    single, kind = make_meters()[index]
    parts = [make_meters()[index][0] for _ in range(2)]
    data = batches(rng, kind, 2)
    for batch, part in zip(data, parts, strict=True):
        if isinstance(single, SegmentationMeter) and not isinstance(single, VideoMeter):
            batch = tuple(b.reshape(-1, 16, 16) for b in batch)
        single.update(*batch)
        part.update(*batch)
    restored = type(single).from_state(json.loads(json.dumps(parts[0].state_dict())))
    merged = restored.merge(parts[1]).compute()
    expected = single.compute()
    assert json.dumps(merged) == json.dumps(expected) or _close(merged, expected)


def _close(a, b) -> bool:
    """Equal up to float64 rounding of summed per-image scores (addition order differs after a merge)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-12 * max(1.0, abs(b))
    return a == b


def test_merge_and_state_reject_mismatches():
    with pytest.raises(ValueError, match="cannot merge"):
        SegmentationMeter(3).merge(SegmentationMeter(4))
    state = SegmentationMeter(3).state_dict()
    with pytest.raises(ValueError, match="PanopticMeter"):
        PanopticMeter.from_state(state)
    state["state"]["confusion"] = [[0]]
    with pytest.raises(ValueError, match="shape"):
        SegmentationMeter.from_state(state)


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="outside"):
        SegmentationMeter(3).update(np.full((4, 4), 3), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="shape"):
        SegmentationMeter(3).update(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="integer"):
        boundary_f_score(np.zeros((4, 4)), np.zeros((4, 4), int), 2)
    with pytest.raises(ValueError, match="both things and stuff"):
        PanopticMeter(3, [1], [1, 2])
    with pytest.raises(ValueError, match="outside"):
        panoptic_quality((np.full((2, 2), 7), np.zeros((2, 2), int)), (np.zeros((2, 2), int),) * 2, 3, [1])


def test_import_does_not_load_torch():
    code = "import sys, rleseg.metrics; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- DDP --------------------------------------------------------------------------------------------


def _ddp_worker(rank, init_file, result_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    rng = np.random.default_rng(6)
    gt = blocky(rng, (4, 16, 16), 3)
    pred = perturb(rng, gt, 3)
    meter = SegmentationMeter(3)
    meter.update(pred[2 * rank : 2 * rank + 2], gt[2 * rank : 2 * rank + 2])
    meter.all_reduce()
    if rank == 1:
        with open(result_file, "w") as f:
            json.dump(meter.compute(), f)
    dist.destroy_process_group()


def test_all_reduce_over_two_gloo_ranks(tmp_path):
    torch_mp = pytest.importorskip("torch.multiprocessing")
    result = tmp_path / "result.json"
    torch_mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(result)), nprocs=2)
    rng = np.random.default_rng(6)
    gt = blocky(rng, (4, 16, 16), 3)
    pred = perturb(rng, gt, 3)
    single = SegmentationMeter(3)
    single.update(pred, gt)
    assert _close(json.loads(result.read_text()), single.compute())


def _matched_objects(pred_ids: np.ndarray, gt_ids: np.ndarray) -> int:
    """Pairs of a predicted and a true object with IoU > 0.5, by brute force over every pair."""
    matched = 0
    for g in np.unique(gt_ids[gt_ids > 0]):
        for p in np.unique(pred_ids[pred_ids > 0]):
            a, b = gt_ids == g, pred_ids == p
            matched += (a & b).sum() / (a | b).sum() > 0.5
    return int(matched)


def test_object_counts_and_f1_at_half_iou_match_a_brute_force_matching():
    rng = np.random.default_rng(4)
    for _ in range(10):
        gt_ids, pred_ids = (np.zeros((2, 24, 24), np.int64) for _ in range(2))
        for ids, count in ((gt_ids, 6), (pred_ids, 7)):
            for k in range(1, count + 1):  # boxes near the true ones: some match, some split, some miss
                image, (y, x), (h, w) = rng.integers(2), rng.integers(0, 18, 2), rng.integers(3, 8, 2)
                ids[image, y : y + h, x : x + w] = k
        objects = panoptic_quality(((pred_ids > 0).astype(int), pred_ids), ((gt_ids > 0).astype(int), gt_ids), 2,
                                   thing_classes=[1])["objects"]
        true = sum(len(np.unique(g[g > 0])) for g in gt_ids)
        predicted = sum(len(np.unique(p[p > 0])) for p in pred_ids)
        matched = sum(_matched_objects(p, g) for p, g in zip(pred_ids, gt_ids, strict=True))
        assert (objects["true"], objects["predicted"], objects["matched"]) == (true, predicted, matched)
        assert objects["f1"] == pytest.approx(2 * matched / (true + predicted))
        assert objects["precision"] == pytest.approx(matched / predicted)
        assert objects["recall"] == pytest.approx(matched / true)
    empty = panoptic_quality((np.zeros((4, 4), int),) * 2, (np.zeros((4, 4), int),) * 2, 2, [1])["objects"]
    assert empty == {"true": 0, "predicted": 0, "matched": 0, "precision": None, "recall": None, "f1": None}
