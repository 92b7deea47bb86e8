"""Checkpoints, backbone weights and backbone arguments as untrusted input, and the predictor's memory guard:
edited metadata, damaged weights files, timm arguments that would load files, a --scale that would take
terabytes. Each gives one line naming the file, key or value (exit 2 on the command line), never a traceback
or an allocation."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import rleseg
from helpers import micro_config
from rleseg.cli import main
from rleseg.models import Backbone, DenseConfig, create_model, load_checkpoint, read_checkpoint_info, save_checkpoint
from rleseg.models.backbone import BACKBONE_KWARGS
from rleseg.tokens import Tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(create_model(micro_config(), Tokenizer((16, 16), 3)), path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One image and its label map, for predict and evaluate."""
    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(rng.integers(0, 3, (40, 60)).astype(np.uint8)).save(root / "masks" / "a.png")
    return root


def edited(checkpoint, path, *, config=None, tokenizer=None, extra=None):
    """A copy of ``checkpoint`` at ``path`` whose metadata (JSON) is changed: ``config`` keys replaced,
    ``tokenizer`` keys replaced (and its stored vocabulary dropped unless given), ``extra`` replaced."""
    with safe_open(str(checkpoint), framework="pt") as f:
        metadata, state = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}
    fields = json.loads(metadata["config"])
    if tokenizer is not None:
        stored = {k: v for k, v in fields["tokenizer"].items() if k != "vocab"}
        fields["tokenizer"] = {**stored, **tokenizer}
    fields.update(config or {})
    metadata["config"] = json.dumps(fields)
    if extra is not None:
        metadata["extra"] = extra
    save_file(state, str(path), metadata=metadata)
    return path


def command(name, checkpoint, data, out):
    if name == "predict":
        return ["predict", checkpoint, data / "images", "--out", out, "--no-progress"]
    masks = ["--masks", data / "masks"]
    return ["evaluate", checkpoint, "--images", data / "images", *masks, "--out", out, "--no-progress"]


def expect_one_line(capsys, argv, *parts):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rleseg: error: ") and "Traceback" not in err, err
    assert all(part in err for part in parts), err
    return err


# ----------------------------------------------------------------------------- edited checkpoints
EDITS = {
    # Ill-typed config values: the message names the key.
    "dim-text": ({"config": {"dim": "abc"}}, ["config.dim must be an integer, got 'abc'"]),
    "dim-list": ({"config": {"dim": [1, 2]}}, ["config.dim must be an integer, got [1, 2]"]),
    "dropout-text": ({"config": {"dropout": "x"}}, ["config.dropout must be a number"]),
    "kwargs-list": ({"config": {"backbone_kwargs": [1]}}, ["config.backbone_kwargs must be a mapping"]),
    "tokenizer-text": ({"config": {"tokenizer": "abc"}}, ["config.tokenizer must be a mapping"]),
    # Timm arguments that would read files or download: refused before anything is built.
    "checkpoint_path": ({"config": {"backbone_kwargs": {"checkpoint_path": "/tmp/evil.pth"}}},
                        ["config.backbone_kwargs key 'checkpoint_path' is not passed to timm", "out_indices"]),
    "pretrained_cfg_overlay": ({"config": {"backbone_kwargs": {"pretrained_cfg_overlay": {"file": "/tmp/x"}}}},
                               ["key 'pretrained_cfg_overlay' is not passed to timm"]),
    # Edited vocabularies and invalid tokenizer dicts: the message names the checkpoint.
    "classes": ({"tokenizer": {"num_classes": 5}}, ["weights do not fit the model", "decoder.token_weight"]),
    "classes-with-vocab": ({"tokenizer": {"num_classes": 5, "vocab": {"size": 293}}},
                           ["the tokenizer in its config is not valid", "vocabulary"]),
    "mask-text": ({"tokenizer": {"mask_size": "ab"}}, ["the tokenizer in its config is not valid"]),
    "mask-one-side": ({"tokenizer": {"mask_size": [16]}}, ["the tokenizer in its config is not valid"]),
    "classes-text": ({"tokenizer": {"num_classes": "x"}}, ["the tokenizer in its config is not valid"]),
    # Sizes: a 100000x100000 mask (1-D starts: 10^10 start tokens; 2-D: 10^10 cells), a mask whose vocabulary
    # the tokenizer allows but the file cannot hold, and a sequence length of 10^10 positions.
    "mask-1e5": ({"tokenizer": {"mask_size": [100000, 100000]}}, ["100000, 100000", "10,000,000,"]),
    "mask-1e5-2d": ({"tokenizer": {"mask_size": [100000, 100000], "starts": "2d"}}, ["100000, 100000"]),
    "mask-16000": ({"tokenizer": {"mask_size": [16000, 16000]}},
                   ["a vocabulary of 256,000,037 tokens", "mask_size=(16000, 16000)", "GB as float32",
                    "does not belong to these weights"]),
    "max_seq_len": ({"config": {"max_seq_len": 10**10}}, ["max_seq_len 10,000,000,000", "GB as float32"]),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_an_edited_checkpoint_is_one_line_naming_it(checkpoint, data, tmp_path, capsys, name):
    changes, parts = EDITS[name]
    path = edited(checkpoint, tmp_path / f"{name}.safetensors", **changes)
    with pytest.raises(ValueError, match=f"^{path}: ") as error:
        load_checkpoint(path)
    assert all(part in str(error.value) for part in parts), error.value
    for kind in ("predict", "evaluate"):
        out = tmp_path / f"out-{kind}"
        expect_one_line(capsys, command(kind, path, data, out), str(path), *parts)
        assert not out.exists()


def test_the_sizes_are_checked_before_the_model_is_built(checkpoint, tmp_path, monkeypatch):
    """The 16000x16000 mask would need a 33.8 GB embedding: refused from the metadata alone."""
    from rleseg.models import checkpoint as checkpoints

    def never(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(checkpoints, "create_model", never)
    path = edited(checkpoint, tmp_path / "big.safetensors", tokenizer={"mask_size": [16000, 16000]})
    with pytest.raises(ValueError, match=r"at least 8,448,027,845 values \(8,448,001,221 token embedding \+ 2,048 "
                                         r"positions \+ 24,576 transformer layers\), 33.8 GB as float32, more than "
                                         r"the [0-9,]+-byte file"):
        load_checkpoint(path)


def test_an_edited_dense_checkpoint(data, tmp_path, capsys):
    model = create_model(DenseConfig(backbone="test_resnet", image_size=64, width=32), Tokenizer((16, 16), 3))
    save_checkpoint(model, tmp_path / "dense.safetensors")
    five = edited(tmp_path / "dense.safetensors", tmp_path / "five.safetensors", tokenizer={"num_classes": 5})
    with pytest.raises(ValueError, match=rf"^{five}: weights do not fit .*classifier\.weight"):
        load_checkpoint(five)
    many = edited(tmp_path / "dense.safetensors", tmp_path / "many.safetensors", tokenizer={"num_classes": 200000})
    expect_one_line(capsys, command("predict", many, data, tmp_path / "out"), f"{many}: its config claims 200,000 "
                    "classes", "at least 3,400,000 values (3,400,000 classifier)", "does not belong to these weights")


def test_extra_metadata_that_is_not_a_json_object(checkpoint, tmp_path):
    errors = {"{not json": "is not valid JSON", "[1]": "must be a JSON object, got list"}
    for extra, match in errors.items():
        path = edited(checkpoint, tmp_path / "extra.safetensors", extra=extra)
        with pytest.raises(ValueError, match=f"^{path}: checkpoint extra {match}"):
            read_checkpoint_info(path)


# ----------------------------------------------------------------------------- backbone weights and arguments
def test_a_damaged_pretrained_safetensors_file_is_one_line_naming_it(tmp_path, capsys):
    good = tmp_path / "good.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(good))
    damaged = {"random": np.random.default_rng(0).bytes(5000), "truncated": good.read_bytes()[:-3000],
               "empty": b""}
    for name, content in damaged.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(ValueError, match=f"^{path}: not a safetensors file, or a corrupt one"):
            create_model(micro_config(pretrained=str(path)), Tokenizer((4, 4), 2, "binary"))
        path = tmp_path / f"{name}.pth"
        path.write_bytes(content)
        with pytest.raises(ValueError, match=f"^{path}: not a tensors-only torch weights file"):
            create_model(micro_config(pretrained=str(path)), Tokenizer((4, 4), 2, "binary"))
    # Through the command line: training from a config whose model.pretrained is the damaged file.
    expect_train_refused(capsys, tmp_path, f"  pretrained: {tmp_path / 'truncated.safetensors'}\n",
                         "truncated.safetensors: not a safetensors file, or a corrupt one")


def expect_train_refused(capsys, tmp_path, model_lines: str, part: str) -> None:
    """``rleseg train`` of a tiny config with ``model_lines`` added to its model section: one line holding
    ``part``, exit 2, and no checkpoint written."""
    config = tmp_path / "config.yaml"
    config.write_text(f"model:\n  preset: tiny\n  backbone: test_resnet\n{model_lines}"
                      "data:\n  patch:\n    patch_size: 64\n")
    out = tmp_path / "run"
    expect_one_line(capsys, ["train", config, "--out", out], part)
    assert not (out / "best.safetensors").exists() and not (out / "checkpoints").exists()


@pytest.mark.parametrize("kwargs, match", [
    ({"checkpoint_path": "weights.pth"}, "backbone_kwargs key 'checkpoint_path' is not passed to timm"),
    ({"pretrained_cfg": {"file": "x.pth"}}, "key 'pretrained_cfg' is not passed"),
    ({"cache_dir": "/tmp"}, "key 'cache_dir' is not passed"),
    ({"feature_cls": "hook"}, "key 'feature_cls' is not passed"),
    ({"drop_path_rate": "0.1"}, r"backbone_kwargs.drop_path_rate must be a number in \[0, 1\), got '0.1'"),
    ({"drop_rate": 1.5}, r"backbone_kwargs.drop_rate must be a number in \[0, 1\)"),
    ({"output_stride": 7}, "backbone_kwargs.output_stride must be 8, 16 or 32"),
    ({"out_indices": "all"}, "backbone_kwargs.out_indices must be a list of feature levels"),
    ({"drop_block_rate": 0.1, "__class__": 1}, "key '__class__' is not passed"),
])
def test_backbone_kwargs_outside_the_allow_list_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Backbone("test_resnet", **kwargs)
    with pytest.raises(ValueError, match=match):
        create_model(micro_config(backbone_kwargs=kwargs, start_head="table"), Tokenizer((4, 4), 2, "binary"))


def test_allowed_backbone_kwargs_reach_timm():
    assert set(BACKBONE_KWARGS) == {"out_indices", "output_stride", "drop_rate", "drop_path_rate", "drop_block_rate"}
    backbone = Backbone("test_resnet", output_stride=16, drop_path_rate=0.1, drop_block_rate=0.1, drop_rate=0.0)
    assert backbone.stride == 16 and backbone(torch.rand(1, 3, 64, 64)).shape[-1] == 4
    with pytest.raises(ValueError, match="timm backbone 'test_efficientnet' does not take backbone_kwargs"):
        Backbone("test_efficientnet", drop_block_rate=0.1)  # allowed, but this network has no DropBlock


def test_backbone_kwargs_from_yaml_are_refused_on_one_line(tmp_path, capsys):
    expect_train_refused(capsys, tmp_path, f"  backbone_kwargs:\n    checkpoint_path: {tmp_path / 'evil.pth'}\n",
                         "backbone_kwargs key 'checkpoint_path' is not passed to timm; allowed keys: out_indices")


# ----------------------------------------------------------------------------- the predictor's memory guard
def test_predict_scale_1000_is_refused_before_it_allocates(checkpoint, data, tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "rleseg.cli", "predict", str(checkpoint), str(data / "images" / "a.png"), "--out",
            str(out), "--scale", "1000", "--no-progress"]
    environment = {k: v for k, v in os.environ.items() if k != "RLESEG_MEMORY_LIMIT_GB"}  # the default limit
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("rleseg: error: predicting a 40x60 image at scale 1000 (40,000x60,000 pixels "
                                  "resized) would take about 290.4 GB, above the limit of 64.0 GB (set "
                                  "RLESEG_MEMORY_LIMIT_GB to allow more)"), done.stderr
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_the_memory_limit_can_be_raised_and_lowered(checkpoint, data, tmp_path, monkeypatch, capsys):
    image = data / "images" / "a.png"
    predictor = rleseg.load(checkpoint, device="cpu", scale=2, max_len=4)
    need = predictor.memory_needed((40, 60))  # resize, stitching maps, labels back, one batch of patches
    batch = 32 * 64 * 64 * 12  # 32 float32 RGB patches of 64x64 (InferenceOptions.batch_size)
    assert need == (57 + 48 + 16) * 80 * 120 + 33 * 40 * 60 + batch
    assert rleseg.load(checkpoint, device="cpu").memory_needed((40, 60)) == 16 * 40 * 60 + batch
    monkeypatch.setenv("RLESEG_MEMORY_LIMIT_GB", str(need / 1e9 * 0.99))
    with pytest.raises(ValueError, match=r"scale 2 \(80x120 pixels resized\) would take about 2\.8 MB, above the "):
        predictor.predict(image)
    monkeypatch.setenv("RLESEG_MEMORY_LIMIT_GB", str(need * 1.0001 / 1e9))
    assert predictor.predict(image).shape == (40, 60)
    # Batches of patches of the model's input are checked when the predictor is made.
    monkeypatch.setenv("RLESEG_MEMORY_LIMIT_GB", "0.01")
    with pytest.raises(ValueError, match=r"batches of 1000 patches of the model's input 64x64 px would take about "
                                         r"49\.2 MB, above the limit of 10\.0 MB"):
        rleseg.load(checkpoint, device="cpu", batch_size=1000)
    # On the command line: one line.
    monkeypatch.setenv("RLESEG_MEMORY_LIMIT_GB", "0.0008")  # above the batch (786.4 KB), below the image
    argv = ["predict", checkpoint, image, "--out", tmp_path / "out", "--no-progress", "--max-len", 4,
            "--batch-size", 16]
    expect_one_line(capsys, argv, "scale 1 (40x60 pixels resized) would take about 824.8 KB, above the limit of "
                    "800.0 KB")
    monkeypatch.setenv("RLESEG_MEMORY_LIMIT_GB", "1")
    assert main([str(a) for a in argv]) == 0
    assert np.array(Image.open(tmp_path / "out" / "labels" / "a.png")).shape == (40, 60)
