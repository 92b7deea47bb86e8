"""rleseg.models.video: each fusion mode's shapes and what its memory depends on, one frame reduces every
mode to the image encoder, image weights load, a small middle-fusion model overfits clips exactly under
volume / TAC / LTAC, batches go through the training protocol. The model contracts (cache, strict decoding,
teacher forcing, checkpoints, ...) run over the video variants of every fusion in
tests/test_model_contracts.py. Everything random-init, offline, CPU."""

import numpy as np
import pytest
import torch

from helpers import decoded, micro_config, overfit_exactly, padded
from rleseg.models import DenseConfig, ModelConfig, Pix2Seq, create_model
from rleseg.models.transformer import Encoder
from rleseg.models.video import FUSIONS, VideoModelConfig, VideoPix2Seq, time_code
from rleseg.tokens import Tokenizer
from rleseg.tokens.video import VideoTokenizer


def video_config(**changes) -> ModelConfig:
    """The micro model (64 x 64 frames give 2 x 2 = 4 cells per frame) with two encoder layers, a per-frame
    one and the one that fuses, and room for a window's tokens."""
    return micro_config(**{"encoder_layers": 2, "max_seq_len": 128, **changes})


def moving_squares(rng, count: int, frames: int, size: int, num_classes: int) -> list[np.ndarray]:
    """(frames, size, size) clips of two rectangles of random classes, each moving one step per frame."""
    clips = []
    for _ in range(count):
        clip = np.zeros((frames, size, size), np.uint8)
        for _ in range(2):
            r, c = rng.integers(0, size - 6, 2)
            h, w = rng.integers(2, 6, 2)
            dr, dc = rng.integers(-1, 2, 2)
            label = rng.integers(1, num_classes)
            for t in range(frames):
                rr, cc = np.clip(r + t * dr, 0, size - h), np.clip(c + t * dc, 0, size - w)
                clip[t, rr : rr + h, cc : cc + w] = label
        clips.append(clip)
    return clips


def image_encoding(model, images: torch.Tensor) -> torch.Tensor:
    """The image model's encoder computation (Encoder.forward) with the video model's weights, on
    frames (B, 3, H, W)."""
    return Encoder.forward(model.encoder, images)


def loud(model):
    """Larger random weights than the 0.02 init, so that every path's effect is well above float noise."""
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.encoder.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer() -> VideoTokenizer:
    return VideoTokenizer(3, (16, 16), num_classes=3, temporal="tac", scheme="class")


# ----------------------------------------------------------------------------- shapes and what memory sees
@pytest.mark.parametrize("fusion", FUSIONS)
def test_forward_shapes_loss_and_memory(fusion, tokenizer):
    torch.manual_seed(0)
    model = create_model(video_config(), tokenizer, fusion=fusion)
    assert isinstance(model.config, VideoModelConfig) and model.config.fusion == fusion
    assert model.config.tokenizer == tokenizer.to_dict() and model.config.tokenizer["frames"] == 3
    clips = torch.rand(2, 3, 3, 64, 96)
    memory = model.encoder(clips)
    cells = 2 * 3
    assert memory.shape == (2, cells * (3 if fusion == "late" else 1), 32)
    targets = padded(tokenizer, moving_squares(np.random.default_rng(0), 2, 3, 16, 3))
    logits = model(clips, targets)
    assert logits.shape == (2, targets.shape[1], tokenizer.vocab.size) and logits.dtype == torch.float32
    loss = model.loss(clips, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()  # every parameter takes part (DistributedDataParallel requires it)
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters without gradient: {unused[:5]}"


@pytest.mark.parametrize("fusion", FUSIONS)
def test_one_frame_reduces_to_the_image_encoder(fusion):
    """With N = 1 there is nothing to fuse: every mode's memory is the image Encoder's on that frame."""
    torch.manual_seed(0)
    model = create_model(video_config(), VideoTokenizer(1, (8, 8), 3, scheme="class"), fusion=fusion).eval()
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(model.encoder(images[:, None]), image_encoding(model, images), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("reference", [0, 2])
def test_middle_fusion_reads_the_reference_frame_and_attends_to_the_others(reference, tokenizer):
    torch.manual_seed(0)
    model = loud(create_model(video_config(), tokenizer, fusion="middle", reference_frame=reference))
    clips = torch.rand(2, 3, 3, 64, 64)
    other = 1
    changed = clips.clone()
    changed[:, other] = 1.0  # a white frame
    with torch.no_grad():
        memory = model.encoder(clips)
        assert (memory - model.encoder(changed)).abs().max() > 1e-2  # fused: another frame matters
        # Without the cross-attention's output, layer L is the image layer: memory = image encoder(reference).
        layer = model.encoder.layers[-1]
        layer.cross_attn.proj.weight.zero_()
        layer.cross_attn.proj.bias.zero_()
        expected = image_encoding(model, clips[:, reference])
        torch.testing.assert_close(model.encoder(clips), expected, atol=1e-6, rtol=1e-6)


def test_static_sees_only_its_frame_and_late_fusion_mixes_all(tokenizer):
    torch.manual_seed(0)
    clips = torch.rand(2, 3, 3, 64, 64)
    changed = clips.clone()
    changed[:, 2] = 1.0  # a white frame
    static = loud(create_model(video_config(), tokenizer, fusion="static"))
    late = loud(create_model(video_config(), tokenizer, fusion="late"))
    with torch.no_grad():
        torch.testing.assert_close(static.encoder(clips), static.encoder(changed))
        torch.testing.assert_close(static.encoder(clips), image_encoding(static, clips[:, 0]))
        static.encoder.reference = 2  # what reference_frame=2 builds
        torch.testing.assert_close(static.encoder(clips), image_encoding(static, clips[:, 2]))
        before, after = late.encoder(clips), late.encoder(changed)
    assert (before[:, :4] - after[:, :4]).abs().max() > 1e-2  # frame 0's cells see frame 2


def test_time_code_is_zero_at_offset_zero_and_distinct_elsewhere():
    code = time_code(torch.arange(-3, 4), 64)
    assert code.shape == (7, 64) and torch.equal(code[3], torch.zeros(64))
    assert torch.cdist(code, code).add(torch.eye(7)).min() > 0.1


def test_bad_inputs_are_refused(tokenizer):
    model = create_model(video_config(), tokenizer)
    with pytest.raises(ValueError, match=r"\(B, N, 3, H, W\)"):
        model.encoder(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match="windows of 2 frames, but the model's tokenizer encodes 3"):
        model.encoder(torch.rand(1, 2, 3, 64, 64))
    with pytest.raises(ValueError, match="needs a VideoTokenizer"):
        create_model(VideoModelConfig(**vars(video_config())), Tokenizer((16, 16), 3))
    with pytest.raises(ValueError, match="fusion must be one of"):
        create_model(video_config(), tokenizer, fusion="early")
    with pytest.raises(ValueError, match=r"reference_frame must be in 0 \.\. 2"):
        create_model(video_config(), tokenizer, reference_frame=3)
    with pytest.raises(ValueError, match="no tokenizer"):
        create_model(video_config())
    with pytest.raises(ValueError, match="unknown model preset"):
        create_model("huge", tokenizer)


def test_presets_and_config_tokenizer(tokenizer):
    model = create_model("tiny", tokenizer, fusion="late")  # a preset with a video tokenizer: a video model
    assert model.config.dim == 128 and model.config.fusion == "late"
    again = create_model(model.config)  # tokenizer rebuilt from the config
    assert again.tokenizer.to_dict() == tokenizer.to_dict() and again.config == model.config
    assert isinstance(again, VideoPix2Seq)  # create_model dispatches on the config class
    with pytest.raises(ValueError, match="semantic"):  # a video tokenizer never gives a dense model
        create_model(DenseConfig(backbone="test_resnet"), tokenizer)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_image_weights_load_into_video_models(fusion, tokenizer):
    """The video encoders keep the image Encoder's parameter names; middle fusion adds only its
    cross-attention. A static model with an image model's weights is that image model on frame 0."""
    torch.manual_seed(0)
    image = Pix2Seq(video_config(start_head="table"), tokenizer)  # the plain image model, fed the video tokens
    video = create_model(video_config(start_head="table"), tokenizer, fusion=fusion)
    result = video.load_state_dict(image.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(".cross_attn." in k or ".ln_query." in k or ".ln_context." in k for k in result.missing_keys)
    assert bool(result.missing_keys) == (fusion == "middle")
    if fusion == "static":
        clips, tokens = torch.rand(2, 3, 3, 64, 64), torch.randint(0, tokenizer.vocab.size, (2, 7))
        image.eval(), video.eval()
        with torch.no_grad():
            torch.testing.assert_close(video(clips, tokens), image(clips[:, 0], tokens))


# ----------------------------------------------------------------------------- overfitting
@pytest.mark.parametrize("temporal,scheme", [("volume", "lac"), ("tac", "class"), ("tac", "lac")])
def test_middle_fusion_overfits_clips_exactly(temporal, scheme):
    """4 fixed clips of 2 frames (moving rectangles, 16 x 16 masks); greedy decoding must reproduce each
    volume exactly. TAC with scheme 'lac' is LTAC."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tokenizer = VideoTokenizer(2, (16, 16), 3, temporal=temporal, scheme=scheme)
    clips = moving_squares(rng, 4, 2, 16, 3)
    targets = padded(tokenizer, clips)
    images = torch.rand(4, 2, 3, 64, 64)
    model = create_model(
        video_config(dim=64, mlp_dim=128, encoder_layers=1, max_seq_len=targets.shape[1] + 8), tokenizer
    )
    overfit_exactly(model, images, targets, clips, lr=2e-3, every=25)  # 75-175 steps on 4 seeds


# ----------------------------------------------------------------------------- the training protocol
def test_video_batches_train_and_evaluate_through_the_engine_protocol():
    """SyntheticVideoDataset batches (image (B, N, 3, P, P), tokens) go through engine.train_step and
    generate; decoded volumes score with VideoMeter against the batch's subsampled masks."""
    from rleseg.data import Collate, PatchConfig
    from rleseg.data.video import SyntheticVideoDataset
    from rleseg.engine import LossOf, TrainConfig, train_step
    from rleseg.metrics import VideoMeter

    tokenizer = VideoTokenizer(2, (16, 16), 3, temporal="tac", scheme="lac")
    dataset = SyntheticVideoDataset(tokenizer, 2, length=2, config={"frames": 3}, patch=PatchConfig(64, 4))
    batch = Collate(max_seq_len=128)([dataset[i] for i in range(len(dataset))])
    assert batch["image"].shape == (4, 2, 3, 64, 64)
    torch.manual_seed(0)
    model = create_model(video_config(), tokenizer, fusion="middle")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss, norm = train_step(LossOf(model), [batch], optimizer, TrainConfig(), torch.device("cpu"))
    assert np.isfinite(loss) and norm > 0
    out = model.generate(batch["image"], max_len=64, temperature=0)
    meter = VideoMeter(3, boundary_tolerance=None)
    meter.update(np.stack(decoded(tokenizer, out.tokens)), batch["mask_small"].numpy())
    assert meter.compute()["num_videos"] == 4
