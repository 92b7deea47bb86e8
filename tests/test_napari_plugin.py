"""The napari plugin, tested at the function level: napari (and its Qt) is not installed for the tests. What
the widget does is ``segment_array`` on numpy data (checked against ``rleseg.load(...).predict``, TIFF stacks
as ``rleseg predict`` reads them, and ``predict_video``), the glue is called with a stand-in for an image
layer, and the npe2 manifest is validated with npe2 (the light manifest library napari plugins declare
themselves with)."""

import inspect
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import torch

import rleseg
from helpers import micro_config, noisy_checkpoint
from rleseg.cli import main
from rleseg.imageio import Normalization, read_frames
from rleseg.inference import Predictor
from rleseg.models import create_model
from rleseg.napari_plugin import load_predictor, segment_array, segment_widget
from rleseg.tokens import PanopticTokenizer, Tokenizer, VideoTokenizer

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "src" / "rleseg" / "napari.yaml"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return noisy_checkpoint(tmp_path_factory.mktemp("napari") / "model.safetensors", Tokenizer((16, 16), 3),
                            {"class_names": ["background", "cell", "debris"]})


@pytest.fixture(scope="module")
def panoptic(tmp_path_factory):
    tokenizer = PanopticTokenizer((16, 16), 3, thing_classes=[1])
    return rleseg.load(noisy_checkpoint(tmp_path_factory.mktemp("pan") / "model.safetensors", tokenizer))


def grey(shape, seed=0, dtype=np.uint8, top=255):
    return (np.random.default_rng(seed).random(shape) * top).astype(dtype)


def test_an_image_gives_the_labels_that_predict_gives(checkpoint):
    predictor = rleseg.load(checkpoint)
    image = grey((70, 90), dtype=np.uint16, top=3000)  # deep values: the stored normalisation stretches them
    labels, kwargs = segment_array(predictor, image, name="nuclei")
    expected = predictor.predict(image)
    assert labels.shape == (70, 90) and labels.dtype == np.uint8 and len(np.unique(expected)) > 1
    assert np.array_equal(labels, expected)
    assert kwargs["name"] == "nuclei labels"
    assert kwargs["features"] == {"index": [0, 1, 2], "class": ["background", "cell", "debris"]}
    rgba = grey((70, 90, 4), seed=1)
    assert np.array_equal(segment_array(predictor, rgba, rgb=True)[0], predictor.predict(rgba[..., :3]))


def test_a_stack_is_predicted_frame_by_frame_normalised_as_rleseg_predict_reads_it(checkpoint, tmp_path):
    predictor = rleseg.load(checkpoint)
    # Frames of different brightness: normalised as one stack, not each frame on its own.
    stack = grey((3, 50, 60), dtype=np.uint16, top=1000) + np.array([0, 1500, 3000], np.uint16)[:, None, None]
    labels, kwargs = segment_array(predictor, stack, name="s")
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    frames = read_frames(tmp_path / "s.tif", predictor.normalization)  # what rleseg predict reads
    assert labels.shape == (3, 50, 60) and kwargs["metadata"]["rleseg"]["stack"] == "frames"
    assert all(np.array_equal(a, predictor.predict(b)) for a, b in zip(labels, frames, strict=True))
    alone = np.stack([predictor.predict(frame) for frame in stack])  # each frame normalised alone
    assert not np.array_equal(labels, alone)


def test_panoptic_models_give_instance_ids_unique_over_the_stack_with_their_classes(panoptic):
    stack = grey((2, 70, 90), seed=3)
    ids, kwargs = segment_array(panoptic, stack, name="cells")
    assert kwargs["name"] == "cells instances" and ids.max() > 2 and ids.shape == (2, 70, 90)
    classes = kwargs["features"]["class"]
    assert kwargs["features"]["index"] == list(range(ids.max() + 1)) and len(classes) == ids.max() + 1
    seen = set()
    for frame, ours in zip(stack, ids, strict=True):
        semantic, theirs = panoptic.predict(frame)
        pairs = np.unique(np.stack([ours.ravel(), theirs.ravel()]), axis=1)
        assert np.array_equal(ours == 0, theirs == 0)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]  # one to one
        present = set(np.unique(ours[ours > 0]).tolist())
        assert not present & seen  # an id names one instance of one frame
        seen |= present
        for i in present:
            assert np.unique(semantic[ours == i]).tolist() == [panoptic.class_names.index(classes[i])]


def test_video_models_predict_a_stack_as_one_clip():
    torch.manual_seed(0)
    model = create_model(micro_config(decoder_layers=1, max_seq_len=48),
                         VideoTokenizer(2, (16, 16), 3, temporal="tac", scheme="class"), fusion="middle")
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    predictor = Predictor(model.eval(), normalization=Normalization("minmax"))
    stack = grey((3, 40, 50), seed=4, dtype=np.float32, top=7.0)
    labels, kwargs = segment_array(predictor, stack, name="clip")
    scaled = (stack - stack.min()) / (stack.max() - stack.min())
    assert np.array_equal(labels, predictor.predict_video(list(scaled))) and len(np.unique(labels)) > 1
    assert kwargs["metadata"]["rleseg"]["stack"] == "clip"
    with pytest.raises(ValueError, match=r"^clip: a single image, but the model predicts clips of 2 frames"):
        segment_array(predictor, stack[0], name="clip")


@pytest.mark.parametrize(("data", "rgb", "match"), [
    (np.zeros(5, np.uint8), False, r"shape \(5,\); expected \(H, W\)"),
    (np.zeros((2, 3, 8, 8), np.uint8), False, r"shape \(2, 3, 8, 8\)"),
    (np.zeros((8, 8, 2), np.uint8), True, r"shape \(8, 8, 2\) \(RGB\)"),
    (np.full((8, 8), np.nan, np.float32), False, "NaN or infinite"),
])
def test_other_data_is_refused_naming_the_layer(checkpoint, data, rgb, match):
    with pytest.raises(ValueError, match=f"^layer: .*{match}"):
        segment_array(rleseg.load(checkpoint), data, rgb, name="layer")


def test_the_widget_loads_a_run_checkpoint_or_model_folder_and_returns_a_labels_layer(checkpoint, tmp_path):
    folder = tmp_path / "shared"
    assert main(["export", str(checkpoint), "--out", str(folder)]) == 0
    layer = SimpleNamespace(data=grey((60, 70), seed=5), rgb=False, multiscale=False, name="img",
                            scale=np.array([0.5, 0.25]), translate=np.array([10.0, 0.0]))
    expected = segment_array(rleseg.load(checkpoint), layer.data, name="img")[0]
    for model in (checkpoint, folder):
        labels, kwargs, kind = segment_widget(layer, model)
        assert kind == "labels" and np.array_equal(labels, expected)
        assert kwargs["scale"] == (0.5, 0.25) and kwargs["translate"] == (10.0, 0.0) and kwargs["name"] == "img labels"
    pyramid = SimpleNamespace(**{**vars(layer), "multiscale": True, "data": [layer.data, layer.data[::2, ::2]]})
    assert np.array_equal(segment_widget(pyramid, folder)[0], expected)  # the full resolution level
    assert load_predictor(folder) is load_predictor(folder)  # loaded once for many layers


def test_the_glue_imports_no_napari_and_names_napari_types_for_magicgui():
    code = ("import sys, rleseg.napari_plugin; "
            "sys.exit(any(m.split('.')[0] in ('napari', 'magicgui', 'qtpy', 'PyQt5', 'PySide6') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    signature = inspect.signature(segment_widget)
    assert signature.parameters["image"].annotation == "napari.layers.Image"
    assert signature.return_annotation == "napari.types.LayerDataTuple"


def test_the_npe2_manifest_is_valid_and_installed_by_the_package():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    assert manifest.name == "rleseg"
    (command,) = manifest.contributions.commands
    (widget,) = manifest.contributions.widgets
    assert widget.command == command.id and widget.autogenerate
    module, _, name = command.python_name.partition(":")
    assert getattr(__import__(module, fromlist=[name]), name) is segment_widget
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["napari.manifest"] == {"rleseg": "rleseg:napari.yaml"}
    assert "napari.yaml" in project["tool"]["setuptools"]["package-data"]["rleseg"]
    extras = project["project"]["optional-dependencies"]
    assert any(d.startswith("napari") for d in extras["napari"])
    assert not any(d.startswith(("napari", "magicgui")) for d in extras["dev"])  # the tests stay Qt-free
