"""Video checkpoints through ``rleseg.load(...).predict_video``, ``rleseg evaluate`` and ``rleseg predict``:
window merging on hand-built cases, a tiny trained run end to end, and bad input."""

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import rleseg
from rleseg.cli import main
from rleseg.experiment import load_config
from rleseg.inference import Predictor
from rleseg.models import Generation
from rleseg.models.decode import decode_generation
from rleseg.predict import write_video
from rleseg.tokens import PAD, VideoTokenizer
from rleseg.train import train

TINY_VIDEO = [
    "model.preset=tiny", "model.dim=32", "model.heads=2", "model.mlp_dim=64", "model.max_seq_len=48",
    "model.encoder_layers=1", "model.decoder_layers=1", "model.fusion=middle",
    "tokenizer.task=video", "tokenizer.frames=2", "data.dataset=synthetic_video",
    "data.patch.patch_size=64", "data.patch.factor=4", "data.train_options={length: 4}",
    "data.val_options={length: 2}", "train.steps=1", "train.batch_size=2", "train.warmup_steps=1",
    "eval.max_samples=2", "eval.batch_size=2", "output.tensorboard=false", "output.pictures=0",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A video run folder (config.yaml + best.safetensors) trained for one step."""
    folder = tmp_path_factory.mktemp("video") / "run"
    train(load_config(None, [*TINY_VIDEO, f"output.dir={folder}"]))
    return folder


# ----------------------------------------------------------------------------- hand-built window merging
class FakeVideoModel(torch.nn.Module):
    """Windows of 3 frames, 8 px patches, 4x4 masks (factor 2). Frame t of a sequence carries t / 100 in its
    green channel; ``rule(label, position)`` turns the class in the red channel (label / 10) of each frame
    at ``position`` in the window into the generated class. Records the first frame of each window seen."""

    target_keys, max_seq_len, grid_factor, refines = ("tokens",), 8, 2, False  # models/protocol.py

    def __init__(self, rule):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer = VideoTokenizer(frames=3, mask_size=(4, 4), num_classes=4, temporal="volume")
        self.config = SimpleNamespace(image_size=8, max_seq_len=8)
        self.rule, self.windows = rule, []

    def predict(self, images, options=None, generator=None):
        assert images.shape[1:] == (3, 3, 8, 8)  # (B, N, 3, P, P)
        self.windows += [round(float(x)) for x in images[:, 0, 1, 0, 0] * 100]
        labels = torch.round(images[:, :, 0, ::2, ::2] * 10).long()  # (B, N, 4, 4), the block's top-left pixel
        position = torch.arange(3).view(1, 3, 1, 1)
        masks = self.rule(labels, position).numpy()
        rows = [self.tokenizer.encode(mask) for mask in masks]  # each ends in EOS
        tokens = torch.full((len(rows), max(map(len, rows))), PAD)
        for row, sequence in zip(tokens, rows, strict=True):
            row[: len(sequence)] = torch.from_numpy(sequence)
        return decode_generation(self.tokenizer, Generation(tokens, torch.zeros(tokens.shape)), constrained=True)


def frames_with(labels: np.ndarray) -> np.ndarray:
    """(T, H, W) labels -> (T, H, W, 3) float frames: red = label / 10, green = frame index / 100."""
    t = np.arange(len(labels), dtype=np.float32)[:, None, None]
    return np.stack([labels / 10, np.broadcast_to(t / 100, labels.shape), np.zeros(labels.shape)], -1
                    ).astype(np.float32)


def test_overlapping_windows_vote_per_frame():
    # The window's first frame says 1, the others 2: with windows at 0, 1, 2 (stride 1, N = 3, T = 5)
    # frame 1 gets one vote each (tie -> the smaller label 1), frame 2 two votes for 2 against one.
    model = FakeVideoModel(lambda labels, k: torch.where(k == 0, 1, 2).expand_as(labels))
    predictor = Predictor(model)
    labels = predictor.predict_video(frames_with(np.zeros((5, 8, 8))), window_stride=1)
    assert model.windows == [0, 1, 2]
    assert labels.shape == (5, 8, 8)
    assert [int(np.unique(f)[0]) for f in labels] == [1, 1, 2, 2, 2]
    assert all(len(np.unique(f)) == 1 for f in labels)


@pytest.mark.parametrize(("frames", "stride", "starts"), [(7, 3, [0, 3, 4]), (7, 2, [0, 2, 4]), (2, 1, [0]),
                                                          (1, 3, [0]), (4, 5, [0, 1])])
def test_identity_model_recovers_every_frame_at_full_size(frames, stride, starts):
    # Labels in 2x2 blocks on a 14 x 20 image: overlapping spatial patches (rows 0, 6; columns 0, 8, 12).
    rng = np.random.default_rng(frames * 10 + stride)
    blocks = rng.integers(0, 4, (frames, 7, 10))
    truth = np.repeat(np.repeat(blocks, 2, 1), 2, 2)
    model = FakeVideoModel(lambda labels, k: labels)
    result = Predictor(model).run_video(list(frames_with(truth)), window_stride=stride)
    assert model.windows[:: len(model.windows) // len(starts)] == starts  # each window's spatial patches in turn
    assert result.padded == max(0, 3 - frames)  # a short sequence is padded with its last frame, then cut
    assert result.labels.shape == truth.shape and result.labels.dtype == np.int64
    np.testing.assert_array_equal(result.labels, truth)


def test_video_predictor_refuses_images_and_empty_sequences():
    predictor = Predictor(FakeVideoModel(lambda labels, k: labels))
    with pytest.raises(ValueError, match=r"video model .* use predict_video"):
        predictor.predict(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="at least 1 frame"):
        predictor.predict_video(np.zeros((0, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        predictor.predict_video(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="window stride"):
        predictor.predict_video(np.zeros((4, 8, 8, 3), np.float32), window_stride=0)


# ----------------------------------------------------------------------------- a tiny trained checkpoint
def write_sequence(folder, frames: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"t{t:03d}.png")


def test_api_predict_video_keeps_the_frame_count(run):
    predictor = rleseg.load(run, max_len=12)
    video = np.random.default_rng(0).integers(0, 256, (5, 40, 70, 3), dtype=np.uint8)
    labels = predictor.predict_video(video, window_stride=2)  # windows at 0, 2, 3
    assert labels.shape == (5, 40, 70) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < 3
    assert predictor.predict_video(list(video[:1])).shape == (1, 40, 70)  # shorter than a window


def test_evaluate_video_run_on_its_config(run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--out", str(out), "--max-len", "12", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_videos"] == 2 and metrics["num_images"] == 2 * 2  # 2 clips of 2 frames
    assert metrics["settings"]["window_stride"] == 2
    assert 0.0 <= metrics["temporal"]["pooled"]["pred_flip_rate"] <= 1.0
    rows = list(csv.DictReader((out / "per_frame.csv").open()))
    assert [(r["sequence"], r["frame"]) for r in rows] == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    assert "Temporal consistency" in (out / "metrics.md").read_text()
    assert len(list((out / "pictures").glob("*.png"))) == 2
    assert "2 videos: flip rate" in capsys.readouterr().out


def test_evaluate_video_folders_with_a_stride_not_dividing_the_length(run, tmp_path):
    rng = np.random.default_rng(1)
    write_sequence(tmp_path / "images" / "a", rng.integers(0, 256, (5, 48, 56, 3), dtype=np.uint8))
    write_sequence(tmp_path / "masks" / "a", rng.integers(0, 3, (5, 48, 56), dtype=np.uint8))
    out = tmp_path / "eval"
    assert main(["evaluate", str(run / "best.safetensors"), "--images", str(tmp_path / "images"), "--masks",
                 str(tmp_path / "masks"), "--window-stride", "2", "--max-len", "12", "--out", str(out),
                 "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 5 and metrics["generation"]["windows"] == 3  # starts 0, 2, 3
    assert len(list(csv.DictReader((out / "per_frame.csv").open()))) == 5


def test_predict_frame_folder_and_video_file(run, tmp_path):
    rng = np.random.default_rng(2)
    write_sequence(tmp_path / "clip", rng.integers(0, 256, (5, 30, 41, 3), dtype=np.uint8))
    write_sequence(tmp_path / "single", rng.integers(0, 256, (1, 30, 41, 3), dtype=np.uint8))
    write_video(tmp_path / "movie.mp4", list(rng.integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)), 7)
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(tmp_path / "clip"), str(tmp_path / "single"), str(tmp_path / "movie.mp4"),
                 "--out", str(out), "--window-stride", "3", "--max-len", "12", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 5 + 1 + 3 and summary["videos"] == 3
    assert sorted(p.name for p in (out / "labels" / "clip").iterdir()) == [f"t{t:03d}.png" for t in range(5)]
    assert len(list((out / "labels" / "movie").glob("frame_*.png"))) == 3
    assert len(list((out / "overlays" / "single").glob("*.png"))) == 1
    assert np.asarray(Image.open(out / "labels" / "clip" / "t004.png")).shape == (30, 41)
    import av

    for name, count, rate in (("clip", 5, 5), ("movie", 3, 7)):
        with av.open(str(out / "overlays" / f"{name}.mp4")) as container:
            assert container.streams.video[0].average_rate == rate
            assert sum(1 for _ in container.decode(video=0)) == count


def test_bad_video_input_is_one_line_and_exit_2(run, tmp_path, capsys):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "one.png")
    (tmp_path / "empty").mkdir()
    cases = [
        (["predict", str(run), str(tmp_path / "one.png")], "a single image, but this checkpoint is a video model"),
        (["predict", str(run), str(tmp_path / "empty")], "a folder without images"),
        (["evaluate", str(run), "--images", str(tmp_path / "empty"), "--masks", str(tmp_path / "nowhere")],
         "no such folder"),
    ]
    for args, message in cases:
        assert main([*args, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()
