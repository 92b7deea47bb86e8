"""Boundary refinement (models/refine.py): the band it may change, its training, inference with and
without it, checkpoints."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from helpers import micro_config, padded
from rleseg.engine import LossOf, TrainConfig, train_step
from rleseg.inference import InferenceOptions, Predictor, predict_batch
from rleseg.models import create_model, load_checkpoint, save_checkpoint
from rleseg.models.pyramid import on_grid
from rleseg.models.refine import Refiner, boundary_band, jitter_boundaries, refine_instances, upsample_nearest
from rleseg.tokens import PanopticTokenizer, Tokenizer, VideoTokenizer, downsample_mask, upsample_mask


def discs(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """(count, size, size) int64 masks of three discs each, radii and centres off the 4-pixel grid."""
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((count, size, size), np.int64)
    for mask in masks:
        for _ in range(3):
            cy, cx, r = rng.uniform(8, size - 8), rng.uniform(8, size - 8), rng.uniform(5, 11)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
    return masks


def foreground_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return 2 * ((pred == 1) & (truth == 1)).sum() / ((pred == 1).sum() + (truth == 1).sum())


def noisy_refiner(band: int, classes: int = 3, dim: int = 8) -> Refiner:
    """A refiner whose head is not at its zero start, so that it does change labels where allowed."""
    torch.manual_seed(0)
    refiner = Refiner(dim, classes, band)
    with torch.no_grad():
        for param in refiner.parameters():
            param.normal_(0.0, 2.0)
    return refiner


def test_band_is_the_cells_within_band_cells_of_another_class():
    coarse = torch.zeros(1, 9, 9, dtype=torch.long)
    coarse[0, 4, 4] = 1
    for band in (0, 1, 2):
        expected = torch.zeros(9, 9, dtype=torch.bool)
        expected[4 - band : 5 + band, 4 - band : 5 + band] = band > 0
        assert torch.equal(boundary_band(coarse, 2, band)[0], expected)
    # The patch border is not a boundary: a one-class mask has no band.
    assert not boundary_band(torch.ones(2, 5, 5, dtype=torch.long), 3, 2).any()


@settings(max_examples=25, deadline=None)
@given(masks=hnp.arrays(np.int64, (2, 8, 8), elements=st.integers(0, 2)), band=st.integers(0, 2))
def test_outside_the_band_the_output_is_the_nearest_upsampled_mask_exactly(masks, band):
    refiner = noisy_refiner(band)
    coarse = torch.from_numpy(masks)
    images, cells = torch.rand(2, 3, 32, 32), torch.randn(2, 8, 8, 8)
    refined = refiner.labels(images, cells, coarse)
    nearest = upsample_nearest(coarse, 4)
    assert torch.equal(nearest, torch.from_numpy(upsample_mask(masks, 4)))
    outside = ~upsample_nearest(boundary_band(coarse, 3, band), 4)
    assert torch.equal(refined[outside], nearest[outside])
    if band == 0:
        assert torch.equal(refined, nearest)


def test_the_noisy_refiner_does_change_pixels_in_the_band():
    """The property above is not vacuous: where it may, this refiner redraws labels."""
    coarse = torch.from_numpy(np.kron(np.eye(2, dtype=np.int64), np.ones((4, 4), np.int64)))[None]  # (1, 8, 8)
    refined = noisy_refiner(2, classes=2).labels(torch.rand(1, 3, 32, 32), torch.randn(1, 8, 8, 8), coarse)
    assert (refined != upsample_nearest(coarse, 4)).any()


def test_each_patch_is_refined_as_it_would_be_alone():
    """Patches without a class boundary skip the convolutions; the others come out as refined one by one."""
    torch.manual_seed(1)
    coarse = torch.randint(0, 3, (4, 8, 8))
    coarse[1] = 2  # one class: no band
    images, cells = torch.rand(4, 3, 32, 32), torch.randn(4, 8, 8, 8)
    refiner = noisy_refiner(1)
    together = refiner.labels(images, cells, coarse)
    assert torch.equal(together[1], upsample_nearest(coarse[1:2], 4)[0])
    for i in range(4):
        assert torch.equal(together[i], refiner.labels(images[i : i + 1], cells[i : i + 1], coarse[i : i + 1])[0])
    assert (together != upsample_nearest(coarse, 4)).any()


def test_an_untrained_refiner_reproduces_the_coarse_mask():
    torch.manual_seed(0)
    coarse = torch.randint(0, 3, (2, 8, 8))
    refined = Refiner(8, 3, 2).labels(torch.rand(2, 3, 32, 32), torch.randn(2, 8, 8, 8), coarse)
    assert torch.equal(refined, upsample_nearest(coarse, 4))


def test_jitter_moves_boundary_cells_only():
    coarse = torch.zeros(4, 12, 12, dtype=torch.long)
    coarse[:, 3:9, 3:9] = 1
    moved = jitter_boundaries(coarse, 0.5, torch.Generator().manual_seed(0))
    changed = moved != coarse
    assert changed.any()
    assert not (changed & ~boundary_band(coarse, 2, 1)).any()
    assert torch.equal(jitter_boundaries(coarse, 0.0), coarse)


def test_the_loss_counts_band_pixels_only_and_skips_ignored_labels():
    refiner = noisy_refiner(1, classes=2)
    coarse = torch.zeros(1, 8, 8, dtype=torch.long)
    coarse[0, 2:6, 2:6] = 1
    images, cells = torch.rand(1, 3, 32, 32), torch.randn(1, 8, 8, 8)
    mask = upsample_nearest(coarse, 4)
    loss = refiner.loss(images, cells, coarse, mask)
    far = mask.clone()
    far[0, :2, :2] = 1 - far[0, :2, :2]  # outside the band: no change to the loss
    ignored = mask.clone()
    ignored[0, 8:12, 8:12] = 255  # in the band, but ignored
    assert refiner.loss(images, cells, coarse, far).item() == pytest.approx(loss.item())
    assert refiner.loss(images, cells, coarse, ignored).item() != pytest.approx(loss.item())
    assert refiner.loss(images, cells, torch.zeros_like(coarse), mask).item() == 0.0  # no boundary, no band


def trained_model(steps: int = 100):
    """A micro model with a refiner trained on four patches of discs: sub-cell boundaries the 16x16 grid
    cannot draw, and images that show them."""
    rng = np.random.default_rng(0)
    full = discs(rng, 4, 64)
    small = np.stack([downsample_mask(m, 4, "mode") for m in full])
    images = torch.from_numpy(0.2 + 0.6 * full[:, None].repeat(3, 1) + 0.05 * rng.standard_normal((4, 3, 64, 64)))
    tokenizer = Tokenizer((16, 16), 2)
    torch.manual_seed(0)
    model = create_model(micro_config(refine_band=1), tokenizer)
    targets = padded(tokenizer, list(small))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(steps):
        loss = model.loss(images.float(), targets, torch.from_numpy(full), torch.from_numpy(small))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, images.float(), full


@pytest.fixture(scope="module")
def trained():
    return trained_model()


def test_a_trained_refiner_beats_nearest_upsampling_of_the_same_tokens(trained):
    model, images, full = trained
    refined = predict_batch(model, images)
    token_only = predict_batch(model, images, InferenceOptions.from_fields(refine=False))
    for a, b in zip(refined.tokens, token_only.tokens, strict=True):
        assert np.array_equal(a, b)
    assert token_only.masks[0].shape == (16, 16) and refined.masks[0].shape == (64, 64)
    nearest = np.stack([upsample_mask(m, 4) for m in token_only.masks])
    before, after = foreground_dice(nearest, full), foreground_dice(np.stack(refined.masks), full)
    assert after > before + 0.05, (before, after)
    assert refined.score_maps[0].shape == (64, 64)


def test_predictor_stitches_refined_and_token_only_masks(trained):
    model, images, full = trained
    image = images[0].permute(1, 2, 0).numpy()
    refined = Predictor(model, InferenceOptions()).predict(image)
    token_only = Predictor(model, InferenceOptions.from_fields(refine=False)).predict(image)
    direct = predict_batch(model, images[:1])
    assert np.array_equal(refined, direct.masks[0])
    token_only_options = InferenceOptions.from_fields(refine=False)
    assert np.array_equal(token_only, upsample_mask(predict_batch(model, images[:1], token_only_options).masks[0], 4))
    assert foreground_dice(refined, full[0]) > foreground_dice(token_only, full[0])


def test_checkpoint_round_trip_keeps_the_refiner(trained, tmp_path):
    model, images, _ = trained
    save_checkpoint(model, tmp_path / "model.safetensors")
    loaded = load_checkpoint(tmp_path / "model.safetensors")
    assert loaded.config.refine_band == 1
    for (name, a), (_, b) in zip(model.refiner.state_dict().items(), loaded.refiner.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert all(np.array_equal(a, b) for a, b in zip(predict_batch(model, images).masks,
                                                    predict_batch(loaded, images).masks, strict=True))


def test_models_without_a_refiner_are_unchanged(tmp_path):
    torch.manual_seed(0)
    model = create_model(micro_config(), Tokenizer((16, 16), 2))
    assert model.refiner is None and model.target_keys == ("tokens",) and not model.refines
    save_checkpoint(model, tmp_path / "plain.safetensors")
    assert load_checkpoint(tmp_path / "plain.safetensors").refiner is None
    assert predict_batch(model, torch.rand(1, 3, 64, 64)).masks[0].shape == (16, 16)


def test_a_refiner_needs_the_masks_and_an_image_tokenizer():
    model = create_model(micro_config(refine_band=1), Tokenizer((16, 16), 2))
    assert model.target_keys == ("tokens", "mask", "mask_small") and model.refines
    targets = padded(model.tokenizer, [np.zeros((16, 16), np.uint8)])
    with pytest.raises(ValueError, match="mask and mask_small"):
        model.loss(torch.rand(1, 3, 64, 64), targets)
    with pytest.raises(ValueError, match="semantic or panoptic image tokenizer"):
        create_model(micro_config(refine_band=1), VideoTokenizer(2, (16, 16), 3))
    with pytest.raises(ValueError, match="refine_band"):
        micro_config(refine_band=-1)
    with pytest.raises(ValueError, match="refine_jitter"):
        micro_config(refine_jitter=1.5)


def test_train_step_passes_the_masks_to_a_refiner_and_trains_it():
    rng = np.random.default_rng(1)
    full = discs(rng, 2, 64)
    small = np.stack([downsample_mask(m, 4, "mode") for m in full])
    torch.manual_seed(0)
    model = create_model(micro_config(refine_band=1), Tokenizer((16, 16), 2))
    batch = {"image": torch.rand(2, 3, 64, 64), "tokens": padded(model.tokenizer, list(small)),
             "mask": torch.from_numpy(full), "mask_small": torch.from_numpy(small)}
    before = model.refiner.head[-1].weight.clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss, _ = train_step(LossOf(model), [batch], optimizer, TrainConfig(), torch.device("cpu"), model.target_keys)
    assert np.isfinite(loss) and not torch.equal(before, model.refiner.head[-1].weight)
    with pytest.raises(ValueError, match="mask and mask_small"):
        train_step(LossOf(model), [batch], optimizer, TrainConfig(), torch.device("cpu"))


def test_refine_batch_trains_the_refiner_on_the_first_images_only():
    rng = np.random.default_rng(2)
    full = discs(rng, 3, 64)
    small = np.stack([downsample_mask(m, 4, "mode") for m in full])
    torch.manual_seed(0)
    model = create_model(micro_config(refine_band=1, refine_jitter=0.0, refine_batch=2), Tokenizer((16, 16), 2))
    with torch.no_grad():
        model.refiner.head[-1].weight.normal_(0.0, 1.0)
    images, targets = torch.rand(3, 3, 64, 64), padded(model.tokenizer, list(small))
    masks, grids = torch.from_numpy(full), torch.from_numpy(small)
    model.eval()  # no dropout: the losses below are compared exactly
    cells = on_grid(model.encode(images).cells, model.tokenizer)
    token_loss = create_model(micro_config(), model.tokenizer).eval()
    token_loss.load_state_dict(model.state_dict(), strict=False)
    refiner_loss = model.refiner.training_loss(images[:2], cells[:2], masks[:2], grids[:2], model.config.refine_jitter)
    expected = token_loss.loss(images, targets) + refiner_loss
    torch.testing.assert_close(model.loss(images, targets, masks, grids), expected, atol=1e-5, rtol=1e-5)
    changed = masks.clone()
    changed[2] = 1 - changed[2]  # the third image's masks do not reach the refiner
    torch.testing.assert_close(model.loss(images, targets, changed, grids), expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- panoptic masks
def two_touching_instances() -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded classes and ids on a 6 x 8 grid: instances 1 and 2 of class 1 side by side, stuff class 2 in
    the last row; (1, 6, 8) each."""
    semantic = torch.zeros(1, 6, 8, dtype=torch.long)
    ids = torch.zeros_like(semantic)
    semantic[0, 1:4, 1:4], ids[0, 1:4, 1:4] = 1, 1
    semantic[0, 1:4, 4:7], ids[0, 1:4, 4:7] = 1, 2
    semantic[0, 5] = 2
    return semantic, ids


def test_redrawn_pixels_take_the_nearest_instance_of_their_class_and_only_they_change():
    coarse, ids = two_touching_instances()
    factor = 4
    refined = upsample_nearest(coarse, factor)
    refined[0, 16:18, 14:18] = 1  # below the contact of 1 and 2, into the background: the nearer instance's
    refined[0, 4:6, 4:6] = 0  # the top-left corner of instance 1 redrawn as background
    refined[0, 20, 0] = 1  # a thing pixel next to no instance (stuff below, background above): kept as decoded
    refined[0, 19, 9] = 2  # background redrawn as stuff: no instance
    semantic, instances = refine_instances(coarse, ids, refined, [1], band=1)
    up_ids = upsample_nearest(ids, factor)
    changed = refined != upsample_nearest(coarse, factor)
    assert torch.equal(instances[~changed], up_ids[~changed])  # only redrawn pixels change
    assert set(instances.unique().tolist()) == {0, 1, 2}  # every decoded instance keeps its id
    assert (instances[0, 16:18, 14:16] == 1).all() and (instances[0, 16:18, 16:18] == 2).all()
    assert (instances[0, 4:6, 4:6] == 0).all() and instances[0, 19, 9] == 0 and semantic[0, 19, 9] == 2
    assert semantic[0, 20, 0] == 2 and instances[0, 20, 0] == 0  # the decoded stuff pixel stays
    assert torch.equal(semantic[0, :20], refined[0, :20])
    assert ((instances > 0) == (semantic == 1)).all()  # every thing pixel has an instance, nothing else does


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 2))
def test_refined_instances_keep_decoded_ids_and_change_band_pixels_only(seed, band):
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(upsample_mask(rng.integers(0, 3, (4, 4)), 2).astype(np.int64))[None]  # (1, 8, 8)
    ids = torch.where(coarse == 1, 1 + torch.arange(64).view(1, 8, 8), 0)  # every cell of class 1 an instance
    refiner = noisy_refiner(band, classes=3)
    images, cells = torch.rand(1, 3, 32, 32), torch.randn(1, 8, 8, 8)
    refined = refiner.labels(images, cells, coarse)
    semantic, instances = refine_instances(coarse, ids, refined, [1], band)
    outside = ~refiner.band_pixels(coarse, 4)
    assert torch.equal(instances[outside], upsample_nearest(ids, 4)[outside])
    assert set(ids.unique().tolist()) <= set(instances.unique().tolist())
    assert ((instances > 0) == (semantic == 1)).all()


def test_a_panoptic_model_refines_its_instances_and_stays_reachable_token_only():
    tokenizer = PanopticTokenizer((16, 16), 2, [1])
    torch.manual_seed(0)
    model = create_model(micro_config(refine_band=1), tokenizer).eval()
    assert model.refines and model.target_keys == ("tokens", "mask", "mask_small")
    with torch.no_grad():  # a decoder that writes runs, and a refiner that redraws some of their pixels
        for part in (model.decoder, model.refiner):
            for param in part.parameters():
                param.add_(torch.randn_like(param) * 0.5)
    images = torch.rand(4, 3, 64, 64)
    refined = predict_batch(model, images)
    token_only = predict_batch(model, images, InferenceOptions.from_fields(refine=False))
    assert token_only.masks[0][0].shape == (16, 16) and refined.masks[0][0].shape == (64, 64)
    assert refined.redrawn.sum() > 0
    for (sem, inst), (coarse_sem, coarse_inst) in zip(refined.masks, token_only.masks, strict=True):
        kept = sem == upsample_mask(coarse_sem, 4)
        np.testing.assert_array_equal(inst[kept], upsample_mask(coarse_inst, 4)[kept])
        assert set(np.unique(coarse_inst)) - {0} <= set(np.unique(inst))
        assert ((inst > 0) == (sem == 1)).all()
    labels, instances = Predictor(model, InferenceOptions()).predict(images[0].permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(labels, refined.masks[0][0])
    assert len(np.unique(instances)) == len(np.unique(refined.masks[0][1]))
