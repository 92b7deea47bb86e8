"""Nothing is lost or mixed, round 3 (issue 30): output folders that cannot hold a run, checkpoint headers
that cannot exhaust memory, every reader under the pixel limit."""

import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from helpers import RUN_MODEL, write_run_config
from rleseg import imageio
from rleseg import load as rleseg_load
from rleseg.atomic import OUTPUT_MANIFEST
from rleseg.cli import main
from rleseg.coco import CocoOutput
from rleseg.data import CocoPanopticDataset
from rleseg.data.patches import PatchConfig
from rleseg.experiment import config_to_dict, load_config
from rleseg.imageio import MaskError, frames_shape, read_frames, read_image, read_label_frames
from rleseg.models import (
    ModelConfig,
    create_model,
    load_checkpoint,
    load_weights_into,
    read_checkpoint_info,
    save_checkpoint,
)
from rleseg.predict import video_frames, write_video
from rleseg.tokens import Tokenizer
from rleseg.tokens.panoptic import PanopticTokenizer
from rleseg.train import train
from rleseg.training_state import (
    LOCK_NOTE,
    TrainingState,
    load_latest_checkpoint,
    read_history,
    run_lock,
    save_run_checkpoint,
    start_segment,
)
from rleseg.typed_yaml import ConfigError
from test_data_layouts import _coco

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as ``rleseg train`` leaves it: config.yaml, best.safetensors, a checkpoint folder."""
    run = tmp_path_factory.mktemp("run")
    write_run_config(run, "data.val_options={length: 2}", "data.train_options={length: 2}")
    torch.manual_seed(0)
    save_checkpoint(create_model(ModelConfig(**RUN_MODEL), Tokenizer((16, 16), 3)), run / "best.safetensors")
    step = run / "checkpoints" / "step_0000002"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes((run / "best.safetensors").read_bytes())
    (step / "complete").write_text("{}")
    return run


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(folder / f"{name}.png")
    return folder


def tree(folder):
    return sorted((p.relative_to(folder), p.is_file() and p.read_bytes()) for p in folder.rglob("*"))


def rleseg(*argv):
    return subprocess.run([sys.executable, "-m", "rleseg.cli", *map(str, argv), "--no-progress"],
                          capture_output=True, text=True, timeout=120)


def one_line_error(done, *fragments):
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("rleseg: error: "), done.stderr
    assert all(fragment in done.stderr for fragment in fragments), done.stderr


def run_in_process(capsys, *argv):
    code = main([str(a) for a in argv] + ["--no-progress"])
    return code, capsys.readouterr().err


# One child process runs the command lines of the issue's cases (each its own main() call, its stderr kept
# apart), so that they start torch once: a traceback anywhere ends the child and fails every test below.
CHILD = """
import contextlib, io, json, sys
from rleseg.cli import main
results = {}
for key, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv + ["--no-progress"])
    results[key] = [code, err.getvalue()]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def program(run_dir, images, tmp_path_factory):
    """{case: (exit status, stderr, what it needs checked)} of the command lines of the issue, run as a program."""
    work = tmp_path_factory.mktemp("program")
    model = run_dir / "best.safetensors"
    fields = json.loads(safe_open(str(model), framework="pt").metadata()["config"])
    million = with_config(model, work / "million.safetensors", json.dumps({**fields, "decoder_layers": 10**6}))
    (work / "in" / "s").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((20, 20), 60 * i, np.uint8)).save(work / "in" / "s" / f"frame_{i:06d}.png")
    tifffile.imwrite(work / "in" / "s.tif", np.zeros((3, 20, 20), np.uint8), photometric="minisblack")
    tifffile.imwrite(work / "tzc.tif", np.zeros((2, 3, 2, 20, 20), np.uint16), imagej=True,
                     metadata={"axes": "TZCYX"})
    cases = {
        "out in run": ["evaluate", run_dir, "--out", run_dir / "checkpoints", "--overwrite"],
        "out in run, predict": ["predict", model, images, "--out", run_dir / "checkpoints", "--overwrite"],
        "million layers": ["predict", million, images, "--out", work / "out"],
        "folder and stack": ["predict", model, work / "in" / "s", work / "in" / "s.tif", "--out", work / "out"],
        "device meta": ["predict", model, images, "--out", work / "out", "--device", "meta"],
        "channels": ["predict", model, work / "tzc.tif", "--out", work / "out"],
    }
    before = tree(run_dir)
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps({k: list(map(str, v)) for k, v in cases.items()})],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    assert tree(run_dir) == before and not (work / "out").exists()  # nothing deleted, nothing written
    return {key: (code, err, work) for key, (code, err) in results.items()}


def refused(result, *fragments):
    code, err, _ = result
    assert code == 2 and err.count("\n") == 1 and err.startswith("rleseg: error: "), err
    assert all(fragment in err for fragment in fragments), err


# ----------------------------------------------------------------------------- 1. output folders
def test_out_inside_a_run_folder_is_refused_as_a_program(program, run_dir):
    """The cases of the issue: --out RUN/checkpoints --overwrite deleted every step folder."""
    refused(program["out in run"], f"{run_dir / 'checkpoints'}: the output folder lies inside the run folder {run_dir}")
    refused(program["out in run, predict"], f"lies inside the run folder {run_dir}")


def test_out_in_or_around_a_run_or_a_checkpoint_is_refused(capsys, run_dir, images, tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_bytes((run_dir / "best.safetensors").read_bytes())
    other_run = tmp_path / "other"
    (other_run / "checkpoints" / "step_0000001").mkdir(parents=True)
    before, before_tmp = tree(run_dir), tree(tmp_path)
    for model_, out, match in (
        (run_dir / "best.safetensors", run_dir / "checkpoints", f"lies inside the run folder {run_dir}"),
        (model, run_dir / "checkpoints" / "step_0000002", f"lies inside the run folder {run_dir}"),
        (model, run_dir / "new" / "deeper", f"lies inside the run folder {run_dir}"),
        (model, other_run, f"is the run folder {other_run}"),  # a run without a best model yet
    ):
        code, err = run_in_process(capsys, "predict", model_, images, "--out", out, "--overwrite")
        assert code == 2 and err.count("\n") == 1 and match in err, err
    assert tree(run_dir) == before and tree(tmp_path) == before_tmp


def test_overwrite_replaces_only_an_output_folder(capsys, run_dir, images, tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_bytes((run_dir / "best.safetensors").read_bytes())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code, err = run_in_process(capsys, "predict", model, images, "--out", mine, "--overwrite")
    assert code == 2 and f"{mine}: not an output folder of rleseg" in err and err.count("\n") == 1, err
    assert (mine / "notes.txt").read_text() == "mine"
    out = tmp_path / "pred"
    assert run_in_process(capsys, "predict", model, images, "--out", out)[0] == 0
    assert json.loads((out / OUTPUT_MANIFEST).read_text())["command"] == "predict"
    labels = sorted(p.relative_to(out) for p in (out / "labels").rglob("*.png"))
    assert len(labels) == 2
    (out / "labels" / "stale.png").write_bytes(b"old")
    assert run_in_process(capsys, "predict", model, images, "--out", out, "--overwrite")[0] == 0
    assert sorted(p.relative_to(out) for p in (out / "labels").rglob("*.png")) == labels
    # an output folder that somebody put a checkpoint into is no longer only an output
    (out / "copy.safetensors").write_bytes(model.read_bytes())
    code, err = run_in_process(capsys, "predict", model, images, "--out", out, "--overwrite")
    assert code == 2 and "holds the checkpoint" in err and (out / "copy.safetensors").is_file(), err


# ----------------------------------------------------------------------------- 2. checkpoint headers
def with_config(checkpoint, path, text):
    """A copy of ``checkpoint`` whose config metadata is ``text`` (a JSON string)."""
    with safe_open(str(checkpoint), framework="pt") as f:
        metadata, state = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}
    save_file(state, str(path), metadata={**metadata, "config": text})
    return path


def test_a_header_claiming_a_million_layers_is_refused_as_a_program(program):
    work = program["million layers"][2]
    refused(program["million layers"], f"{work / 'million.safetensors'}: its config claims",
            "1,000,001 transformer layers", "more than the", "does not belong to these weights")


def test_checkpoint_headers_are_sized_before_anything_is_built(run_dir, tmp_path, monkeypatch):
    best = run_dir / "best.safetensors"
    fields = json.loads(safe_open(str(best), framework="pt").metadata()["config"])
    # Thin layers that fit the file's bytes still need tensors the file does not hold.
    thin = with_config(best, tmp_path / "thin.safetensors",
                       json.dumps({**fields, "dim": 4, "heads": 1, "mlp_dim": 1, "decoder_layers": 10**4}))
    with pytest.raises(ValueError, match=r"claims 1 encoder and 10,000 decoder layers, at least 40,004 tensors, "
                                         r"but the file holds \d+;"):
        read_checkpoint_info(thin)
    deep = with_config(best, tmp_path / "deep.safetensors", "[" * 100_000 + "]" * 100_000)
    for read in (read_checkpoint_info, load_checkpoint):
        with pytest.raises(ValueError, match=f"^{deep}: checkpoint config is nested too deeply"):
            read(deep)
    model = create_model(ModelConfig(**RUN_MODEL), Tokenizer((16, 16), 3))
    with pytest.raises(ValueError, match="config is nested too deeply"):
        load_weights_into(model, deep)
    deep_extra = tmp_path / "deep_extra.safetensors"
    with safe_open(str(best), framework="pt") as f:
        save_file({n: f.get_tensor(n) for n in f.keys()}, str(deep_extra),
                  metadata={**f.metadata(), "extra": "{\"a\": " * 100_000 + "1" + "}" * 100_000})
    with pytest.raises(ValueError, match="checkpoint extra is not valid JSON"):
        read_checkpoint_info(deep_extra)
    # The whole model the header claims counts against the memory limit.
    monkeypatch.setenv("RLESEG_MEMORY_LIMIT_GB", "0.0001")
    with pytest.raises(ValueError, match=f"^{best}: the model its config describes .* would take about .* above "
                                         "the limit of 100.0 KB"):
        load_checkpoint(best)
    monkeypatch.setenv("RLESEG_MEMORY_LIMIT_GB", "1")
    assert load_checkpoint(best).config.decoder_layers == 1


# ----------------------------------------------------------------------------- 3. one pixel limit for every reader
def test_stats_video_checks_the_tiff_header_as_a_program(tmp_path):
    tifffile.imwrite(tmp_path / "v.tif", np.zeros((5, 20, 20), np.uint8), photometric="minisblack")
    done = subprocess.run([sys.executable, "-m", "rleseg.cli", "stats", str(tmp_path / "v.tif"), "--video", "2"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "RLESEG_MAX_PIXELS": "1000"})
    one_line_error(done, f"{tmp_path / 'v.tif'}: declares 5x20x20 = 2000 pixels, more than the limit of 1000")


def test_video_files_are_checked_frame_by_frame(capsys, run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # readers set Pillow's to the limit
    frames = [np.full((32, 48, 3), 40 * i, np.uint8) for i in range(3)]
    write_video(tmp_path / "clip.mp4", frames, 5)
    monkeypatch.setenv("RLESEG_MAX_PIXELS", "1000")  # a frame is 1536
    code, err = run_in_process(capsys, "predict", run_dir / "best.safetensors", tmp_path / "clip.mp4",
                               "--out", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1, err
    assert f"{tmp_path / 'clip.mp4'}: declares 32x48 = 1536 pixels, more than the limit of 1000" in err
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("RLESEG_MAX_PIXELS", "4000")  # each frame passes; a video model holds all three: 4608
    assert len(list(video_frames(tmp_path / "clip.mp4"))) == 3
    with pytest.raises(MaskError, match=r"clip\.mp4: declares 3x32x48 = 4608 pixels"):
        list(video_frames(tmp_path / "clip.mp4", whole=True))


def test_coco_panoptic_pngs_are_checked_from_their_header(tmp_path, monkeypatch):
    _coco(tmp_path)
    png = tmp_path / "annotations" / "panoptic_val2017" / "000001.png"
    Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(png)
    dataset = CocoPanopticDataset(tmp_path, PanopticTokenizer((16, 16), 3, thing_classes=(1,)),
                                  patch=PatchConfig(patch_size=16, factor=1))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # readers set Pillow's to the limit
    monkeypatch.setattr(imageio, "MAX_PIXELS", 300)  # the image is 16x16 = 256
    with pytest.raises(MaskError, match=f"^{png}: declares 16x32 = 512 pixels, more than the limit of 300"):
        dataset.read(0)


# ----------------------------------------------------------------------------- 4. one process per run folder
def test_a_second_train_into_a_held_run_folder_is_refused_as_a_program(tmp_path):
    run = tmp_path / "run"
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(load_config(CONFIGS / "synthetic-tiny.yaml",
                                                                [f"output.dir={run}"])), sort_keys=False))
    with run_lock(run):  # as a first `rleseg train` holds it for the life of its run
        done = rleseg("train", config, "--out", run)
        one_line_error(done, f"{run}: another rleseg process is training in this run folder (pid {os.getpid()}, "
                       "started ")
        assert [p.name for p in run.iterdir()] == [LOCK_NOTE]  # the second wrote nothing
        for resume in (True, False):  # train --resume too, and in one process
            with pytest.raises(ValueError, match=f"pid {os.getpid()}"):
                train(load_config(config, []), run, resume=resume)
    assert not run.exists()  # made for the lock, left empty: removed
    run.mkdir()
    with run_lock(run):
        pass
    assert run.is_dir() and not any(run.iterdir())  # a folder that was there stays


# ----------------------------------------------------------------------------- 5. checksums
def test_bytes_changed_in_place_make_a_checkpoint_damaged(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model(ModelConfig(**RUN_MODEL), Tokenizer((16, 16), 3))
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (1, 2):
        save_run_checkpoint(tmp_path, model, optimizer, TrainingState(step=step), keep_last=3)
    newest = tmp_path / "checkpoints" / "step_0000002"
    marker = json.loads((newest / "complete").read_text())
    assert set(marker) == {"model.safetensors", "trainer.safetensors", "trainer.json"}
    assert all(len(entry["sha256"]) == 64 for entry in marker.values())
    weights = newest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100:-90] = bytes(255 - b for b in data[-100:-90])  # inside the tensors: the file still loads
    weights.write_bytes(bytes(data))
    state = load_latest_checkpoint(tmp_path, model, optimizer)
    assert state.step == 1  # the one before
    err = capsys.readouterr().err
    assert "model.safetensors changed (SHA-256 differs from its marker)" in err, err
    assert "trying the checkpoint before" in err
    assert (tmp_path / "checkpoints" / "damaged_step_0000002").is_dir() and not newest.exists()
    # a marker of an rleseg before checksums (sizes only) still counts
    older = tmp_path / "checkpoints" / "step_0000001"
    (older / "complete").write_text(json.dumps({name: (older / name).stat().st_size for name in marker}))
    assert load_latest_checkpoint(tmp_path, model, optimizer).step == 1


# ----------------------------------------------------------------------------- 6. a full disk
TINY_RUN = [
    "model.preset=tiny", "model.dim=32", "model.heads=2", "model.mlp_dim=64", "model.max_seq_len=160",
    "model.encoder_layers=1", "model.decoder_layers=1", "data.patch.patch_size=64", "data.patch.factor=4",
    "data.train_options={length: 8}", "data.val_options={length: 2}", "train.batch_size=4", "train.steps=1",
    "train.warmup_steps=1", "eval.max_samples=2", "eval.batch_size=2", "output.tensorboard=false", "output.pictures=0",
]


def _small_files(limit):
    """In the child: files may grow to ``limit`` bytes; a longer write fails as on a full disk (EFBIG,
    Python ignores SIGXFSZ)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def test_a_full_disk_during_resume_is_one_line_and_keeps_the_checkpoint_as_a_program(tmp_path):
    run = tmp_path / "run"
    train(load_config(CONFIGS / "synthetic-tiny.yaml", [*TINY_RUN, f"output.dir={run}"]), show_progress=False)
    before = {p.relative_to(run): p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()}
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_0000001"]
    done = subprocess.run([sys.executable, "-m", "rleseg.cli", "train", "--resume", str(run), "--set",
                           "train.steps=2", "--no-progress"], capture_output=True, text=True, timeout=300,
                          preexec_fn=_small_files(200_000))
    one_line_error(done, f"{run / 'checkpoints' / 'step_0000002'}: cannot write the checkpoint (File too large)",
                   "earlier checkpoints are kept")
    after = {p.relative_to(run): p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()}
    assert after == before  # the previous checkpoint intact, nothing half-written beside it
    assert not [p for p in run.rglob(".*")]


# ----------------------------------------------------------------------------- 7. unique output names
def test_a_folder_and_a_stack_of_one_name_are_refused_as_a_program(program):
    """The case of the issue: a folder s of frames and a stack s.tif reported 6 images and wrote 5 files."""
    inputs = program["folder and stack"][2] / "in"
    refused(program["folder and stack"], f"{inputs / 's.tif'} and {inputs / 's'} would both write the folder labels/s/")


def test_inputs_that_would_write_one_output_are_refused(capsys, run_dir, images, tmp_path):
    model = run_dir / "best.safetensors"
    for folder in ("a", "b", "both"):
        (tmp_path / folder).mkdir()
    for path in (tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "both" / "y.png",
                 tmp_path / "both" / "y.tif", tmp_path / "s.png"):
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(path)
    a, b, both = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "both"
    for inputs, match in (
        ([a, b], f"{b} and {a} would both write labels/x.png"),
        ([both], f"{both / 'y.tif'} and {both / 'y.png'} would both write labels/both/y.png"),
        ([images, tmp_path / "a", images], f"{images}: given twice as an input"),
    ):
        code, err = run_in_process(capsys, "predict", model, *inputs, "--out", tmp_path / "out")
        assert code == 2 and err.count("\n") == 1 and match in err, err
        assert not (tmp_path / "out").exists()
    # an image s.png beside a folder s: labels/s.png and labels/s/..., no clash
    (tmp_path / "s").mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "s" / "s.png")
    out = tmp_path / "out"
    assert run_in_process(capsys, "predict", model, tmp_path / "s.png", tmp_path / "s", "--out", out)[0] == 0
    assert (out / "labels" / "s.png").is_file() and (out / "labels" / "s" / "s.png").is_file()


# ----------------------------------------------------------------------------- 8. bad flags
def test_device_meta_is_refused_as_a_program(program):
    refused(program["device meta"], "device meta is not one rleseg runs on; expected cpu, cuda, cuda:N or mps")


def test_scales_and_devices_that_cannot_run_are_one_line(capsys, run_dir, images, tmp_path):
    model = run_dir / "best.safetensors"
    for flags, match in (
        (["--scale", "inf"], "--scale must be a finite number > 0, got inf"),
        (["--scale", "1e308"], "at scale 1e+308 would take about 1.0e+30"),  # beyond any float size
        (["--device", "xla"], "device xla is not one rleseg runs on"),
    ):
        code, err = run_in_process(capsys, "predict", model, images, "--out", tmp_path / "out", *flags)
        assert code == 2 and err.count("\n") == 1 and match in err, err
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        rleseg_load(model, device="cpu", scale=float("inf"))


# ----------------------------------------------------------------------------- 9. no silent wrong reads
def test_a_tiff_with_channels_is_refused_as_a_program(program):
    """The case of the issue: T2 Z3 C2 was predicted as 12 frames, each channel a frame."""
    refused(program["channels"], f"{program['channels'][2] / 'tzc.tif'}: has 2 channels (axis C of TIFF axes TZCYX, "
            "shape (2, 3, 2, 20, 20)); rleseg reads grey or RGB images")


def test_channels_series_and_non_finite_values_are_refused(capsys, run_dir, tmp_path):
    stack = np.zeros((2, 3, 2, 20, 20), np.uint16)
    tifffile.imwrite(tmp_path / "tzc.tif", stack, imagej=True, metadata={"axes": "TZCYX"})
    for read in (read_frames, read_image, lambda path: frames_shape(path, image=True)):
        with pytest.raises(MaskError, match=r"has 2 channels \(axis C of TIFF axes TZCYX"):
            read(tmp_path / "tzc.tif")
    assert frames_shape(tmp_path / "tzc.tif") == (12, 20, 20)  # as label maps: C is a frame axis there
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:  # three pages, three series
        for i in range(3):
            tif.write(np.full((8, 10), i, np.uint8))
    for read in (read_frames, read_label_frames, frames_shape):
        with pytest.raises(MaskError, match=r"pages.tif: holds 3 image series \(YX \(8, 10\), YX \(8, 10\), YX"):
            read(tmp_path / "pages.tif")
    one_nan = np.random.default_rng(0).random((20, 20)).astype(np.float32)
    one_nan[3, 4] = np.nan  # one is enough: the percentiles of normalising would make every pixel NaN
    for name, bad, count in (("nan", np.full((20, 20), np.nan, np.float32), 400),
                             ("inf", np.full((20, 20), np.inf, np.float32), 400), ("one_nan", one_nan, 1)):
        tifffile.imwrite(tmp_path / f"{name}.tif", bad)
        with pytest.raises(MaskError, match=f"{name}.tif: holds {count} of 400 values that are NaN or infinite"):
            read_image(tmp_path / f"{name}.tif")
    code, err = run_in_process(capsys, "predict", run_dir / "best.safetensors", tmp_path / "nan.tif",
                               "--out", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1 and "400 of 400 values that are NaN or infinite" in err, err
    assert "RuntimeWarning" not in err


# ----------------------------------------------------------------------------- 10. leftovers and lenient checks
def test_a_rerun_removes_what_a_killed_predict_left(capsys, run_dir, images, tmp_path):
    out = tmp_path / "out"
    dead = tmp_path / ".out.999999999.abcd.partial"  # no process has that pid (above Linux's pid_max)
    old_style = tmp_path / ".out.efgh.partial"  # as rleseg 0.1 named them, without a pid
    live = tmp_path / f".out.{os.getpid()}.ijkl.partial"  # a running process's: kept
    for folder in (dead, old_style, live):
        (folder / "labels").mkdir(parents=True)
    assert run_in_process(capsys, "predict", run_dir / "best.safetensors", images, "--out", out)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "out"])


def test_a_junk_history_is_kept_with_a_warning_on_resume(tmp_path, capsys):
    (tmp_path / "history.json").write_text("{not json")
    start_segment(tmp_path, 4, {})
    err = capsys.readouterr().err
    assert f"{tmp_path / 'history.json'}: not a readable run history" in err and "history.json.damaged" in err
    assert (tmp_path / "history.json.damaged").read_text() == "{not json"
    assert [s["start_step"] for s in read_history(tmp_path)] == [4]
    (tmp_path / "history.json").write_text('{"segments": []}')  # readable, only empty: no warning
    start_segment(tmp_path, 6, {})
    assert capsys.readouterr().err == "" and [s["start_step"] for s in read_history(tmp_path)] == [6]


def test_empty_and_duplicate_key_configs_are_refused(capsys, tmp_path):
    for name, text, match in (
        ("empty.yaml", "", "empty.yaml is empty; expected a YAML mapping of config sections"),
        ("comments.yaml", "# nothing yet\n", "comments.yaml is empty"),
        ("twice.yaml", "train:\n  steps: 1\n  lr: 0.1\n  steps: 2\n",
         "twice.yaml: line 4: key 'steps' given twice in one mapping (first on line 2)"),
        ("sections.yaml", "train: {steps: 1}\ntrain: {steps: 2}\n", "key 'train' given twice"),
    ):
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=re.escape(match)):
            load_config(tmp_path / name, [])
        code, err = run_in_process(capsys, "train", tmp_path / name, "--out", tmp_path / "run")
        assert code == 2 and err.count("\n") == 1 and match in err, err
    assert not (tmp_path / "run").exists()


def test_checkpoint_tokenizers_with_unknown_keys_or_fractional_counts_are_refused(run_dir, tmp_path):
    model = run_dir / "best.safetensors"
    fields = json.loads(safe_open(str(model), framework="pt").metadata()["config"])
    stored = {k: v for k, v in fields["tokenizer"].items() if k != "vocab"}
    for change, match in (({"num_classes": 3.5}, "num_classes must be int, got 3.5"),
                          ({"colour": "red"}, "unknown key 'colour'; an image tokenizer has mask_size, num_classes"),
                          ({"mask_size": [16.0, 16]}, r"mask_size must be tuple\[int, int\], got \[16.0, 16\]")):
        edited = with_config(model, tmp_path / "edited.safetensors",
                             json.dumps({**fields, "tokenizer": {**stored, **change}}))
        with pytest.raises(ValueError, match=f"^{edited}: the tokenizer in its config is not valid: {match}"):
            load_checkpoint(edited)


def test_bad_seeds_and_out_dot_are_one_line(capsys, run_dir, images, tmp_path, monkeypatch):
    model = run_dir / "best.safetensors"
    code, err = run_in_process(capsys, "predict", model, images, "--out", tmp_path / "out", "--seed", "-5")
    assert code == 2 and "argument --seed: expected an integer >= 0, got '-5'" in err, err
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work)
    for out, match in ((".", ".: the output folder is the current folder"),
                       ("sub/..", "sub/..: the output folder is the current folder"),
                       ("..", "..: the output folder holds the current folder")):
        code, err = run_in_process(capsys, "predict", model, images, "--out", out, "--overwrite")
        assert code == 2 and err.count("\n") == 1 and match in err and "PosixPath" not in err, err
    assert sorted(p.name for p in work.iterdir()) == ["sub"]


def test_coco_panoptic_file_names_stay_inside_the_data(tmp_path):
    _coco(tmp_path)
    annotations = tmp_path / "annotations" / "panoptic_val2017.json"
    data = json.loads(annotations.read_text())
    tokenizer = PanopticTokenizer((16, 16), 3, thing_classes=(1,))
    for where, name in (("images", "../secret.jpg"), ("images", str(tmp_path / "val2017" / "000001.jpg")),
                        ("annotations", "../../x.png")):
        changed = json.loads(json.dumps(data))
        changed[where][0]["file_name"] = name
        annotations.write_text(json.dumps(changed))
        with pytest.raises(ValueError, match=f"file_name {re.escape(repr(name))} leaves its folder"):
            CocoPanopticDataset(tmp_path, tokenizer, patch=PatchConfig(patch_size=16, factor=1))


def test_an_empty_coco_results_file_says_pycocotools_cannot_read_it(tmp_path, capsys):
    output = CocoOutput(tmp_path, ["background", "cell"], True)
    output.add("a", "a.png", np.zeros((8, 8), np.int64))  # nothing found
    output.write()
    assert json.loads((tmp_path / "predictions.json").read_text()) == []
    err = capsys.readouterr().err
    assert "predictions.json is empty" in err and "COCO.loadRes cannot read an empty results list" in err


def test_a_full_disk_at_the_first_checkpoint_leaves_no_run(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    run = tmp_path / "run"
    config.write_text(yaml.safe_dump(config_to_dict(load_config(CONFIGS / "synthetic-tiny.yaml", TINY_RUN)),
                                     sort_keys=False))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))  # this process, for the run only
    try:
        code = main(["train", str(config), "--out", str(run), "--no-progress"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"{run / 'checkpoints' / 'step_0000001'}: cannot write the checkpoint (File too large)" in err
    assert not run.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]  # nothing left
