"""Per-run and per-pixel scores from the Python API, and fp16 autocast in training and inference."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import TINY, micro_config, padded, random_masks
from rleseg.engine import LossOf, TrainConfig, build_optimizer, grad_scaler, train_step
from rleseg.experiment import load_config
from rleseg.inference import InferenceOptions, Predictor, predict_batch
from rleseg.models import DENSE_PRESETS, create_model
from rleseg.models.decode import run_scores
from rleseg.tokens import PanopticTokenizer, Tokenizer
from rleseg.train import train
from rleseg.training_state import load_run_checkpoint


def test_a_runs_score_is_the_probability_of_its_tokens():
    tokenizer = Tokenizer((8, 8), 3)
    mask = np.zeros((8, 8), np.uint8)
    mask[1, 2:6], mask[4, :3], mask[6, 5:] = 1, 2, 1
    tokens = tokenizer.encode(mask)
    logprobs = -np.random.default_rng(0).random(tokens.size).astype(np.float32)
    scores, score_map = run_scores(tokenizer, tokens, logprobs, "strict")
    k = tokenizer.tokens_per_run
    expected = np.exp(logprobs[: 3 * k].reshape(3, k).sum(axis=1))
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert score_map.shape == (8, 8) and np.isnan(score_map[mask == 0]).all()
    for run, row in enumerate((1, 4, 6)):  # one run per row, in sequence order
        np.testing.assert_allclose(score_map[row][mask[row] > 0], expected[run], rtol=1e-6)


def test_lenient_decoding_scores_the_runs_it_keeps_at_their_positions():
    tokenizer = Tokenizer((8, 8), 3)
    mask = np.zeros((8, 8), np.uint8)
    mask[2, 1:4], mask[5, 4:7] = 1, 2
    tokens = tokenizer.encode(mask)
    k = tokenizer.tokens_per_run
    stray = np.concatenate([tokens[:k], tokens[k + 1 : k + 2], tokens[k:]])  # a misplaced token between the runs
    logprobs = -np.random.default_rng(1).random(stray.size).astype(np.float32)
    scores, _ = run_scores(tokenizer, stray, logprobs, "ignore")
    expected = [np.exp(logprobs[:k].sum()), np.exp(logprobs[k + 1 : 2 * k + 1].sum())]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_a_panoptic_runs_score_includes_its_groups_class_token():
    tokenizer = PanopticTokenizer((8, 8), 3, thing_classes=[1])
    semantic, instances = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.int32)
    semantic[1, 1:3], instances[1, 1:3] = 1, 4
    semantic[3, 1:3], instances[3, 1:3] = 1, 4  # a second run of instance 4
    semantic[6, :] = 2  # stuff
    tokens = tokenizer.encode(semantic, instances)
    logprobs = -np.random.default_rng(2).random(tokens.size).astype(np.float32)
    scores, score_map = run_scores(tokenizer, tokens, logprobs, "strict")
    k = tokenizer.tokens_per_run  # instance: run run class; stuff: run class
    thing = [np.exp(logprobs[i * k : (i + 1) * k].sum() + logprobs[2 * k]) for i in range(2)]
    stuff = np.exp(logprobs[2 * k + 1 : 3 * k + 1].sum() + logprobs[3 * k + 1])
    np.testing.assert_allclose(scores, [*thing, stuff], rtol=1e-6)
    np.testing.assert_allclose(score_map[1, 1:3], thing[0], rtol=1e-6)
    np.testing.assert_allclose(score_map[6], stuff, rtol=1e-6)


def _noisy_token_model(tokenizer):
    torch.manual_seed(0)
    model = create_model(micro_config(), tokenizer)
    with torch.no_grad():  # an untrained decoder predicts background everywhere: make the output vary
        for p in model.decoder.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model.eval()


def test_the_predictors_score_map_covers_exactly_the_painted_pixels():
    model = _noisy_token_model(Tokenizer((16, 16), 3))
    image = np.random.default_rng(3).random((100, 140, 3)).astype(np.float32)
    pred = next(Predictor(model, device="cpu").run([image]))
    assert pred.scores.shape == pred.labels.shape == (100, 140) and pred.scores.dtype == np.float32
    painted = pred.labels > 0
    assert painted.any() and (~painted).any()
    assert np.isfinite(pred.scores[painted]).all() and np.isnan(pred.scores[~painted]).all()
    assert (pred.scores[painted] > 0).all() and (pred.scores[painted] <= 1).all()
    assert len(pred.run_scores) == len(pred.boxes)
    assert sum(len(s) for s in pred.run_scores) == pred.generated_runs
    # Every pixel's score is the score of one of the runs of its patches.
    assert np.isin(pred.scores[painted], np.concatenate(pred.run_scores)).all()


def test_dense_scores_are_the_softmax_probability_of_the_pixels_class():
    model = create_model(replace(DENSE_PRESETS["tiny"], backbone="test_resnet", image_size=64, width=16),
                         Tokenizer((16, 16), 3)).eval()
    images = torch.rand(2, 3, 64, 64)
    out = predict_batch(model, images)
    with torch.no_grad():
        probabilities = model.predict_logits(images).softmax(1)
    expected = probabilities.max(1).values.numpy()
    np.testing.assert_allclose(np.stack(out.score_maps), expected, rtol=1e-5)
    assert np.array_equal(np.stack(out.masks), probabilities.argmax(1).numpy())
    assert all(s.size == 0 for s in out.run_scores)


def test_fp16_training_steps_run_with_a_loss_scaler_on_cpu():
    torch.manual_seed(0)
    tokenizer = Tokenizer((16, 16), 3)
    model = create_model(micro_config(), tokenizer)
    config = TrainConfig(precision="fp16", lr=1e-3, warmup_steps=0)
    optimizer = build_optimizer(model, config)
    scaler = grad_scaler(config, torch.device("cpu"))
    assert isinstance(scaler, torch.amp.GradScaler)
    assert grad_scaler(TrainConfig(precision="bf16"), torch.device("cpu")) is None
    masks = random_masks(np.random.default_rng(0), 4, 16, 3)
    batch = {"image": torch.rand(4, 3, 64, 64), "tokens": padded(tokenizer, masks)}
    before = [p.detach().clone() for p in model.parameters()]
    losses = [train_step(LossOf(model), [batch], optimizer, config, torch.device("cpu"), scaler=scaler)[0]
              for _ in range(4)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert scaler.get_scale() > 1  # the loss was scaled (an overflowing step would have halved it)


def test_fp16_inference_runs_on_cpu_with_valid_log_probabilities():
    model = _noisy_token_model(Tokenizer((16, 16), 3))
    images = torch.rand(2, 3, 64, 64)
    half = predict_batch(model, images, InferenceOptions.from_fields(precision="fp16"))
    full = predict_batch(model, images, InferenceOptions())
    assert [m.shape for m in half.masks] == [m.shape for m in full.masks] == [(16, 16)] * 2
    assert all(np.isfinite(lp).all() and (lp <= 0).all() for lp in half.logprobs)
    assert all(((s > 0) & (s <= 1)).all() for s in half.run_scores)


def test_unknown_precisions_are_refused():
    with pytest.raises(ValueError, match="precision must be 'fp32', 'bf16' or 'fp16', got 'fp8'"):
        InferenceOptions.from_fields(precision="fp8").check()


def test_a_run_trains_under_fp16_on_cpu(tmp_path, capsys):
    config = load_config(None, [*TINY, f"output.dir={tmp_path / 'run'}", "train.steps=3", "train.precision=fp16"])
    result = train(config, show_progress=False)
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    assert "fp16 autocast, float32 weights" in capsys.readouterr().out
    assert (result.run_dir / "best.safetensors").is_file()


def test_fp16_checkpoints_keep_the_loss_scale(tmp_path):
    """A resumed fp16 run continues with the scale and growth count it had, not a fresh scaler."""
    config = load_config(None, [*TINY, f"output.dir={tmp_path / 'run'}", "train.steps=3", "train.precision=fp16"])
    result = train(config, show_progress=False)
    folder = sorted((result.run_dir / "checkpoints").glob("step_*"))[-1]
    saved = json.loads((folder / "trainer.json").read_text())["loss_scale"]
    assert saved["scale"] > 1  # scaled (halved from 2**16 by each overflowing step)
    fresh = torch.amp.GradScaler("cpu", init_scale=1.0)
    load_run_checkpoint(folder, result.model, build_optimizer(result.model, config.train), fresh)
    assert fresh.state_dict() == saved
