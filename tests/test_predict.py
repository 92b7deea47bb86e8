"""``rleseg predict`` and ``rleseg.load``: images, folders, frame folders, videos, COCO JSON, bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

import rleseg
from helpers import noisy_checkpoint
from rleseg.cli import main
from rleseg.label_files import save_instances
from rleseg.tokens import Tokenizer
from rleseg.tokens.formats import coco_rles_to_instance_map, coco_rles_to_label_map
from rleseg.tokens.panoptic import PanopticTokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return noisy_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.safetensors", Tokenizer((16, 16), 3))


@pytest.fixture(scope="module")
def panoptic_checkpoint(tmp_path_factory):
    tokenizer = PanopticTokenizer((16, 16), 3, thing_classes=[1])
    return noisy_checkpoint(tmp_path_factory.mktemp("pan") / "model.safetensors", tokenizer)


def image_file(path, shape, seed=0):
    array = (np.random.default_rng(seed).random((*shape, 3)) * 255).astype(np.uint8)
    Image.fromarray(array).save(path)
    return array


def run(*argv):
    return main([str(a) for a in argv] + ["--no-progress"])


def test_png_larger_than_the_patch_matches_the_python_api(checkpoint, tmp_path, capsys):
    array = image_file(tmp_path / "big.png", (100, 150))
    out = tmp_path / "out"
    assert run("predict", checkpoint, tmp_path / "big.png", "--out", out, "--stride", 48, "--coco-json") == 0
    assert "images/s" in capsys.readouterr().out
    labels = np.array(Image.open(out / "labels" / "big.png"))
    assert Image.open(out / "labels" / "big.png").mode == "P" and labels.shape == (100, 150)
    width, height = Image.open(out / "overlays" / "big.png").size
    assert width == 150 and height > 100  # the image, and the class legend below it
    predictor = rleseg.load(checkpoint, device="cpu", stride=48)
    assert np.array_equal(predictor.predict(array), labels)
    assert len(np.unique(labels)) > 1  # a constant map would make the comparisons weak
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 1 and summary["patches"] == 6 and summary["tokens"] > 0
    assert summary["invalid_runs"] == 0 and summary["images_per_s"] > 0 and summary["tokens_per_s"] > 0
    assert summary["options"]["decoding"]["earliest_instance"] == 0.0  # a semantic model: the rule is off
    coco = json.loads((out / "predictions.json").read_text())
    rles = {a["category_id"]: {**a["segmentation"], "counts": a["segmentation"]["counts"].encode()} for a in coco}
    assert np.array_equal(coco_rles_to_label_map(rles, (100, 150)), labels)
    assert all(a["image_id"] == 1 and a["area"] == (labels == a["category_id"]).sum() for a in coco)


def test_predict_many_batches_across_images(checkpoint, tmp_path):
    images = [np.random.default_rng(s).random((h, w, 3)).astype(np.float32) for s, (h, w) in
              enumerate([(64, 64), (30, 90), (130, 70)])]
    batched = rleseg.load(checkpoint, device="cpu", batch_size=4).predict_many(images)
    single = [rleseg.load(checkpoint, device="cpu", batch_size=1).predict(image) for image in images]
    assert [b.shape for b in batched] == [(64, 64), (30, 90), (130, 70)]
    assert all(np.array_equal(a, b) for a, b in zip(batched, single, strict=True))


def test_folder_and_frame_folder(checkpoint, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "frames").mkdir()
    image_file(tmp_path / "photos" / "a.png", (40, 50), 1)
    image_file(tmp_path / "photos" / "b.jpg", (64, 80), 2)
    (tmp_path / "photos" / "notes.txt").write_text("not an image, skipped in folders")
    for i in range(3):
        image_file(tmp_path / "frames" / f"{i:04d}.png", (48, 64), 10 + i)
    out = tmp_path / "out"
    assert run("predict", checkpoint, tmp_path / "photos", tmp_path / "frames", "--out", out, "--mode", "whole") == 0
    labels = sorted(p.relative_to(out / "labels").as_posix() for p in (out / "labels").rglob("*.png"))
    assert labels == ["frames/0000.png", "frames/0001.png", "frames/0002.png", "photos/a.png", "photos/b.png"]
    assert np.array(Image.open(out / "labels" / "photos" / "b.png")).shape == (64, 80)
    assert (out / "overlays" / "frames" / "0002.png").is_file()
    assert json.loads((out / "summary.json").read_text())["patches"] == 5  # whole mode: one per image


def test_video(checkpoint, tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(4):
            frame = np.full((64, 96, 3), 40 * i, np.uint8)
            frame[10:40, 20 + 10 * i : 60 + 10 * i] = 220
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = tmp_path / "out"
    assert run("predict", checkpoint, path, "--out", out) == 0
    frames = sorted((out / "labels" / "clip").iterdir())
    assert [f.name for f in frames] == [f"frame_{i:06d}.png" for i in range(4)]
    assert all(np.array(Image.open(f)).shape == (64, 96) for f in frames)
    assert json.loads((out / "summary.json").read_text())["images"] == 4


def test_panoptic_instances(panoptic_checkpoint, tmp_path):
    image_file(tmp_path / "scene.png", (90, 110), 5)
    out = tmp_path / "out"
    argv = ("predict", panoptic_checkpoint, tmp_path / "scene.png", "--out", out, "--temperature", 1, "--seed", 0)
    assert run(*argv, "--coco-json") == 0
    semantic = np.array(Image.open(out / "labels" / "scene.png"))
    instances = np.array(Image.open(out / "instances" / "scene.png"))
    assert semantic.shape == instances.shape == (90, 110) and instances.max() > 0
    ids = np.unique(instances[instances > 0])
    assert np.array_equal(ids, np.arange(1, len(ids) + 1))  # renumbered 1..n
    assert (semantic[instances > 0] == 1).all()  # class and instance of a pixel come from the same patch
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["decoding"]["earliest_instance"] == 0.0  # sampled: the rule is for greedy decoding
    coco = json.loads((out / "predictions.json").read_text())
    things = {i + 1: a for i, a in enumerate(a for a in coco if a["category_id"] == 1)}
    rles = {k: {**a["segmentation"], "counts": a["segmentation"]["counts"].encode()} for k, a in things.items()}
    rebuilt = coco_rles_to_instance_map(rles, (90, 110))
    assert len(things) == len(ids) and np.array_equal(rebuilt > 0, instances > 0)
    predictor = rleseg.load(panoptic_checkpoint, device="cpu", temperature=1.0, seed=0)
    sem, inst = predictor.predict(tmp_path / "scene.png")
    assert np.array_equal(sem, semantic) and np.array_equal(inst, instances)


def test_import_rleseg_stays_torch_free_and_load_is_lazy():
    code = ("import sys, rleseg\nbefore = 'torch' in sys.modules\nfrom rleseg.inference import load\n"
            "print(before, rleseg.load is load)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "True"], done.stderr


# ----------------------------------------------------------------------------- bad input
def expect_user_error(capsys, argv, out, match):
    assert run(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("rleseg: error:") and match in err, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_bad_inputs(capsys, checkpoint, tmp_path):
    out = tmp_path / "out"
    image_file(tmp_path / "ok.png", (64, 64))
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 64)
    (tmp_path / "empty").mkdir()
    for bad, match in ((tmp_path / "notes.txt", "not an image"), (tmp_path / "missing.png", "no such file"),
                       (tmp_path / "empty", "a folder without images"), (tmp_path / "broken.png", "cannot read"),
                       (tmp_path / "broken.mp4", "cannot read the video")):
        # ok.png first: the failure comes after output was written, and still nothing remains.
        expect_user_error(capsys, ["predict", checkpoint, tmp_path / "ok.png", bad, "--out", out, "--batch-size", 1],
                          out, match)


def test_bad_checkpoint(capsys, tmp_path):
    image_file(tmp_path / "ok.png", (64, 64))
    corrupt = tmp_path / "model.safetensors"
    corrupt.write_bytes(b"not a safetensors file at all")
    out = tmp_path / "out"
    expect_user_error(capsys, ["predict", corrupt, tmp_path / "ok.png", "--out", out], out, "corrupt")
    expect_user_error(capsys, ["predict", tmp_path, tmp_path / "ok.png", "--out", out], out, "best.safetensors")


def test_bad_device(capsys, checkpoint, tmp_path):
    image_file(tmp_path / "ok.png", (64, 64))
    out = tmp_path / "out"
    expect_user_error(capsys, ["predict", checkpoint, tmp_path / "ok.png", "--out", out, "--device", "gpu"], out,
                      "not a torch device")


def test_video_options_are_refused_for_an_image_model(capsys, checkpoint, tmp_path):
    image_file(tmp_path / "ok.png", (64, 64))
    out = tmp_path / "out"
    expect_user_error(capsys, ["predict", checkpoint, tmp_path / "ok.png", "--out", out, "--window-stride", 2], out,
                      "--window-stride is for video checkpoints")
    with pytest.raises(ValueError, match="image model; predict_video needs a video checkpoint"):
        rleseg.load(checkpoint).predict_video(np.zeros((3, 64, 64, 3), np.float32))


# ----------------------------------------------------------------------------- the output folder
def expect_refused(capsys, argv, match):
    """Exit 2 with one line naming the problem; nothing under the test's folder changes."""
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rleseg: error: ") and match in err and "Traceback" not in err, err


def test_out_that_is_or_holds_an_input_or_the_checkpoint_is_refused(capsys, checkpoint, tmp_path):
    images = tmp_path / "X" / "images"
    images.mkdir(parents=True)
    image_file(images / "a.png", (64, 64))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "best.safetensors").write_bytes(checkpoint.read_bytes())
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    (tmp_path / "link").symlink_to(tmp_path / "X")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for model, inputs, out, match in (
        (checkpoint, [images], tmp_path / "X", "the output folder holds the input"),
        (checkpoint, [images], images, "the output folder is the input"),
        (checkpoint, [images / "a.png"], images, "the output folder holds the input"),
        (checkpoint, [images], tmp_path / "link", "the output folder holds the input"),  # links resolved
        (checkpoint, [images], images / ".." / "..", "the output folder holds the input"),
        (run_dir, [images / "a.png"], run_dir, f"the output folder is the input {run_dir}"),
        (run_dir / "best.safetensors", [images], run_dir, "the output folder holds the input"),
        (checkpoint, [images], notes, "is a file, not a folder"),
        (checkpoint, [images], checkpoint, "is a file, not a folder"),
    ):
        expect_refused(capsys, ["predict", model, *inputs, "--out", out, "--overwrite"], match)
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert notes.read_text() == "mine" and checkpoint.is_file()


def test_images_beyond_the_pixel_limit_are_refused(capsys, checkpoint, tmp_path, monkeypatch):
    image_file(tmp_path / "a.png", (64, 64))
    image_file(tmp_path / "b.png", (100, 120))
    monkeypatch.setenv("RLESEG_MAX_PIXELS", "10000")
    out = tmp_path / "out"
    expect_user_error(capsys, ["predict", checkpoint, tmp_path / "a.png", tmp_path / "b.png", "--out", out],
                      out, "b.png: declares 100x120 = 12000 pixels, more than the limit of 10000 pixels")


def test_panoptic_join_options_from_the_command_line(panoptic_checkpoint, tmp_path, capsys):
    image_file(tmp_path / "scene.png", (90, 110), 5)
    for join in ("none", "overlap"):
        out = tmp_path / join
        argv = ("predict", panoptic_checkpoint, tmp_path / "scene.png", "--out", out, "--temperature", 1, "--seed", 0)
        assert run(*argv, "--panoptic-join", join, "--join-iou", 0.3, "--stride", 24) == 0
        predictor = rleseg.load(panoptic_checkpoint, device="cpu", temperature=1.0, seed=0, stride=24,
                                panoptic_join=join, join_iou=0.3)
        _, instances = predictor.predict(tmp_path / "scene.png")
        assert np.array_equal(np.array(Image.open(out / "instances" / "scene.png")), instances)
    capsys.readouterr()  # the warnings of the runs above
    expect_user_error(capsys, ("predict", panoptic_checkpoint, tmp_path / "scene.png", "--out", tmp_path / "bad",
                               "--join-iou", 1), tmp_path / "bad", "join_iou must lie in [0, 1)")


def test_instance_maps_are_16_bit_pngs_and_32_bit_tiffs_past_65535(tmp_path):
    ids = np.array([[0, 1, 2], [65535, 3, 0]])
    written = save_instances(tmp_path / "few.png", ids)
    assert written == tmp_path / "few.png" and Image.open(written).mode == "I;16"
    assert np.array_equal(np.array(Image.open(written)), ids)
    ids[0, 0] = 70000  # a label tool's ids need not be consecutive: 65536 and past need 32 bits
    written = save_instances(tmp_path / "many.png", ids)
    assert written == tmp_path / "many.tif" and not (tmp_path / "many.png").exists()
    assert tifffile.imread(written).dtype == np.uint32 and np.array_equal(tifffile.imread(written), ids)
