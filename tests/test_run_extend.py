"""Runs that go on: extending a finished run (the schedule continues to the new length, config.yaml and
history.json say what ran), the settings a resume may and may not change, starting a new run from another
run's weights (model.init_from), and the class names and colours every checkpoint carries to predict's and
evaluate's legends."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import rleseg
from helpers import TINY
from rleseg.cli import main
from rleseg.data import ClassList
from rleseg.engine import learning_rate
from rleseg.experiment import build_model, build_tokenizer, load_config
from rleseg.models import checkpoint_classes, save_checkpoint
from rleseg.train import model_file_extra, train
from rleseg.training_state import read_history
from rleseg.typed_yaml import ConfigError
from rleseg.visualize import overlay, palette, with_legend

NAMES = ["background", "disc", "square"]
# 4 steps, a checkpoint every 2 kept; deterministic, so that runs can be compared bit for bit.
STEPS = ["train.steps=4", "output.save_every=2", "output.keep_last=10", "train.deterministic=true",
         f"data.class_names=[{', '.join(NAMES)}]"]


def _config(run: Path, *extra: str):
    return load_config(None, [*TINY, *STEPS, f"output.dir={run}", *extra])


def _config_file(folder: Path, *extra: str) -> Path:
    from rleseg.typed_yaml import to_dict

    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(to_dict(_config(folder / "new", *extra))))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    train(_config(run))
    return run


@pytest.fixture
def run(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _trainer(run: Path, step: int) -> dict:
    return json.loads((run / "checkpoints" / f"step_{step:07d}" / "trainer.json").read_text())


def _lr_of_last_step(run: Path, step: int) -> float:
    """The learning rate the step before checkpoint ``step`` trained with (every group has lr_scale 1)."""
    return _trainer(run, step)["optimizer"]["param_groups"][0]["lr"]


def _eval_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "eval_log.jsonl").read_text().splitlines()]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("rleseg: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- extending
def test_extending_a_finished_run_from_the_cli_continues_its_schedule(run, capsys):
    tc = _config(run).train
    assert main(["train", "--resume", str(run), "--set", "train.steps=8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "train.steps 4 -> 8" in out
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "step_0000008"
    assert _trainer(run, 8)["step"] == 8 and _trainer(run, 8)["total_steps"] == 8
    # Steps 1-4 followed the 4-step schedule; steps 5-8 follow the 8-step one, without a second warm-up.
    assert _lr_of_last_step(run, 4) == pytest.approx(learning_rate(3, 4, tc))
    assert _lr_of_last_step(run, 6) == pytest.approx(learning_rate(5, 8, tc))
    assert _lr_of_last_step(run, 8) == pytest.approx(learning_rate(7, 8, tc))
    assert learning_rate(5, 8, tc) != pytest.approx(learning_rate(5, 4, tc))  # not the old schedule's floor
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"] == 8
    assert load_config(run / "config.yaml").train.steps == 8  # still a config file that loads
    assert read_history(run) == [
        {"start_step": 0, "end_step": 4, "ended": "schedule", "changes": {}},
        {"start_step": 4, "end_step": 8, "ended": "schedule", "changes": {"train.steps": [4, 8]}},
    ]
    assert _eval_steps(run) == [4, 8]


def test_extending_before_the_end_trains_as_a_run_planned_for_the_new_length(tmp_path):
    straight = train(_config(tmp_path / "a", "train.steps=8", "output.log_every=1"))
    first = train(_config(tmp_path / "b", "train.steps=6", "output.log_every=1"), stop_at_step=3)
    # A kill after steps 4 and 5 were logged, before their checkpoint: rows the resumed run trains again.
    with (tmp_path / "b" / "metrics.csv").open("a") as log:
        log.write("4,9.9,1.0,0.1,1.0,1.0,0,,\n5,10.9,1.0,0.1,1.0,1.0,0,,\n6,11")
    second = train(_config(tmp_path / "b", "train.steps=8", "output.log_every=1"), resume=True)
    assert second.step == 8 and len(second.losses) == 5
    assert first.losses + second.losses == pytest.approx(straight.losses, abs=0, rel=0)
    # metrics.csv lists every step once, with the losses the steps had: the resumed run's, not the killed one's.
    rows = list(csv.DictReader((tmp_path / "b" / "metrics.csv").open()))
    assert [int(row["step"]) for row in rows] == list(range(1, 9))
    assert [float(row["loss"]) for row in rows] == pytest.approx(straight.losses)
    assert [row["val_dice"] != "" for row in rows] == [False] * 7 + [True]  # the final validation, on step 8's row


def test_extending_from_the_api_trains_the_new_steps(run):
    result = train(_config(run, "train.steps=6", "eval.max_samples=2", "output.keep_last=1"), resume=True)
    assert result.step == 6 and len(result.losses) == 2 and result.metrics is not None
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_0000006"]  # output.keep_last 1 applied
    changes = read_history(run)[-1]["changes"]
    assert changes == {"eval.max_samples": [4, 2], "output.keep_last": [10, 1], "train.steps": [4, 6]}


def test_resuming_a_complete_run_says_so_and_changes_nothing(run, capsys):
    before = _snapshot(run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{run} is complete at step 4 of train.steps 4" in out and "train.steps=N" in out
    assert _snapshot(run) == before  # no second evaluation line, config.yaml and history untouched


def test_a_run_killed_in_its_final_evaluation_evaluates_when_resumed(run):
    (run / "metrics.json").unlink()
    result = train(_config(run), resume=True)
    assert result.step == 4 and result.losses == [] and result.metrics is not None
    assert json.loads((run / "metrics.json").read_text())["step"] == 4


@pytest.mark.parametrize(("override", "key"), [
    ("model.dim=32", "model.dim"),
    ("tokenizer.scheme=class", "tokenizer.scheme"),
    ("data.patch.factor=2", "data.patch.factor"),
    ("train.lr=0.1", "train.lr"),
])
def test_resume_refuses_changes_that_would_not_fit_the_run(run, capsys, override, key):
    before = _snapshot(run)
    assert main(["train", "--resume", str(run), "--set", override]) == 2
    line = _error_line(capsys)
    assert f"{key} cannot change when a run is resumed" in line and "model.init_from" in line
    assert _snapshot(run) == before


def test_a_run_ended_by_its_budget_goes_on_with_a_new_one(tmp_path, capsys):
    run = tmp_path / "run"
    ended = train(_config(run, "train.minutes=0.0005", "train.steps=40"))  # 30 ms: the first step ends it
    assert ended.step < 40
    capsys.readouterr()
    again = train(_config(run, "train.minutes=0.0005", "train.steps=40"), resume=True)
    assert again.losses == [] and "budget ended it at step" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"train\.minutes 0\.0001 is spent already"):
        train(_config(run, "train.minutes=0.0001", "train.steps=40"), resume=True)
    more = train(_config(run, "train.minutes=null", "train.steps=" + str(ended.step + 2)), resume=True)
    assert more.step == ended.step + 2 and len(more.losses) == 2
    assert [s["ended"] for s in read_history(run)] == ["budget", "schedule"]
    assert read_history(run)[-1]["changes"] == {"train.minutes": [0.0005, None], "train.steps": [40, ended.step + 2]}


def test_more_steps_for_a_run_whose_budget_is_spent_are_refused_naming_train_minutes(tmp_path, capsys):
    run = tmp_path / "run"
    ended = train(_config(run, "train.minutes=0.0005", "train.steps=40"))  # the first step ends it
    capsys.readouterr()
    before = _snapshot(run)
    assert main(["train", "--resume", str(run), "--set", f"train.steps={ended.step + 5}", "--no-progress"]) == 2
    line = _error_line(capsys)
    assert f"0.0005-minute budget (train.minutes) ended it at step {ended.step}" in line
    assert f"train.steps {ended.step + 5} alone trains no step" in line and "--set train.minutes=null" in line
    assert _snapshot(run) == before  # nothing trained, nothing written
    assert main(["train", "--resume", str(run), "--set", f"train.steps={ended.step + 1}", "--set",
                 "train.minutes=null", "--no-progress"]) == 0  # what the line says to do trains on
    assert json.loads((run / "metrics.json").read_text())["step"] == ended.step + 1


def test_fewer_steps_than_done_are_refused(run, capsys):
    assert main(["train", "--resume", str(run), "--set", "train.steps=3"]) == 2
    assert "train.steps 3 is fewer than the 4 steps the run has done" in _error_line(capsys)


# ----------------------------------------------------------------------------- model.init_from
def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.mark.parametrize("source", ["folder", "file"])
def test_init_from_starts_a_new_run_from_the_weights(finished, tmp_path, capsys, source):
    path = finished if source == "folder" else finished / "checkpoints" / "step_0000002" / "model.safetensors"
    checkpoint = finished / "best.safetensors" if source == "folder" else path
    # A learning rate so small that one step leaves the weights where they started.
    config = _config(tmp_path / "new", f"model.init_from={path}", "train.steps=1", "train.lr=1e-12",
                     "train.warmup_steps=0")
    result = train(config)
    assert f"  weights     from {checkpoint} (model.init_from)" in capsys.readouterr().out  # the start summary
    started_from = _weights(checkpoint)
    fresh = dict(build_model(config, build_tokenizer(config)).named_parameters())
    trained = dict(result.model.named_parameters())  # the weights; BatchNorm statistics move in any step
    assert all(torch.allclose(trained[k], started_from[k], atol=1e-6) for k in trained)
    assert not all(torch.allclose(fresh[k], started_from[k], atol=1e-3) for k in trained)
    assert yaml.safe_load((tmp_path / "new" / "config.yaml").read_text())["model"]["init_from"] == str(path)
    assert read_history(tmp_path / "new")[0]["init_from"] == str(checkpoint)
    optimizer = load_file(str(tmp_path / "new" / "checkpoints" / "step_0000001" / "trainer.safetensors"))
    steps = [tensor.item() for name, tensor in optimizer.items() if name.endswith(".step")]
    assert steps and set(steps) == {1.0}  # a fresh optimizer: one step taken, not the source run's four


def test_init_from_a_checkpoint_of_another_tokenizer_is_one_line(finished, tmp_path, capsys):
    config = _config_file(tmp_path, f"model.init_from={finished}", "data.patch.factor=2")
    assert main(["train", str(config)]) == 2
    line = _error_line(capsys)
    assert str(finished / "best.safetensors") in line and "its tokenizer differs" in line
    assert "mask_size [16, 16] vs [32, 32]" in line
    assert not (tmp_path / "new").exists()


def test_init_from_a_model_of_other_sizes_names_the_fields(finished, tmp_path):
    with pytest.raises(ValueError, match=r"weights do not fit this config's model .*dim 64 vs 32"):
        train(_config(tmp_path / "new", f"model.init_from={finished}", "model.dim=32"))


def test_a_missing_init_from_is_one_line_naming_the_key(tmp_path, capsys):
    config = _config_file(tmp_path, "model.init_from=null")
    missing = tmp_path / "nowhere.safetensors"
    assert main(["train", str(config), "--set", f"model.init_from={missing}"]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"rleseg: error: model.init_from: checkpoint {missing} does not exist")
    with pytest.raises(ConfigError, match=r"model\.init_from: .* without best\.safetensors"):
        load_config(None, [f"model.init_from={tmp_path}"])  # a folder without best.safetensors


# ----------------------------------------------------------------------------- class names and colours
def test_checkpoints_carry_the_class_names_and_colours_to_the_predictor(finished):
    colours = palette(3).tolist()
    for path in (finished / "best.safetensors", finished / "checkpoints" / "step_0000002" / "model.safetensors"):
        assert checkpoint_classes(path) == (NAMES, colours)
    predictor = rleseg.load(finished, device="cpu")
    assert predictor.class_names == NAMES and predictor.class_colours.tolist() == colours


def test_a_checkpoint_without_class_names_still_loads(finished, tmp_path):
    path = tmp_path / "old.safetensors"
    save_checkpoint(rleseg.load(finished, device="cpu").model, path, extra={"step": 4})
    assert checkpoint_classes(path) == (None, None)
    predictor = rleseg.load(path, device="cpu")
    assert predictor.class_names == ["class 0", "class 1", "class 2"] and predictor.class_colours is None


def test_a_dataset_colour_table_becomes_the_stored_colours(tmp_path):
    class Listed:
        classes = ClassList(("sky", "tree", "road"), np.array([[1, 2, 3], [40, 50, 60], [200, 100, 0]], np.uint8))

    listed = model_file_extra(load_config(None, [*TINY]), Listed())
    assert listed["class_names"] == ["sky", "tree", "road"]
    assert listed["class_colours"] == [[1, 2, 3], [40, 50, 60], [200, 100, 0]]
    named = model_file_extra(load_config(None, [*TINY, "data.class_names=[a, b, c]"]), object())
    assert named["class_names"] == ["a", "b", "c"] and named["class_colours"] == palette(3).tolist()


def test_with_legend_draws_every_class_colour_below_the_picture():
    picture = np.full((40, 150, 3), 128, np.uint8)
    colours = np.array([[0, 0, 0], [250, 10, 10], [10, 250, 10]], np.uint8)
    drawn = with_legend(picture, ["background", "red", "green"], colours)
    assert drawn.shape[0] > 40 and drawn.shape[1] == 150
    assert np.array_equal(drawn[:40], picture)
    legend = drawn[40:].reshape(-1, 3)
    for colour in colours[1:]:
        assert (legend == colour).all(axis=1).sum() >= 50  # a filled swatch, not a stray pixel


def test_predict_draws_in_the_checkpoint_colours_with_a_legend(finished, tmp_path):
    colours = [[0, 0, 0], [250, 20, 20], [20, 20, 250]]  # a dataset's colour table, as training stores it
    checkpoint = tmp_path / "coloured.safetensors"
    save_checkpoint(rleseg.load(finished, device="cpu").model, checkpoint,
                    extra={"class_names": NAMES, "class_colours": colours})
    image = (np.random.default_rng(0).random((64, 130, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "scene.png")
    out = tmp_path / "pred"
    assert main(["predict", str(checkpoint), str(tmp_path / "scene.png"), "--out", str(out), "--no-progress"]) == 0
    drawn = np.asarray(Image.open(out / "overlays" / "scene.png").convert("RGB"))
    labels = Image.open(out / "labels" / "scene.png")
    assert labels.getpalette()[:9] == np.ravel(colours).tolist()  # the label PNG's palette too
    assert drawn.shape[0] > 64 and drawn.shape[1] == 130
    assert np.array_equal(drawn[:64], overlay(image, np.asarray(labels), 3, colours=np.array(colours, np.uint8)))
    legend = drawn[64:].reshape(-1, 3)
    for colour in colours[1:]:
        assert (legend == colour).all(axis=1).sum() >= 50


def test_evaluate_names_the_classes_as_the_checkpoint_does(finished, tmp_path):
    from rleseg.evaluate import evaluate_checkpoint

    rng = np.random.default_rng(1)
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(rng.integers(0, 3, (64, 64), dtype=np.uint8)).save(tmp_path / "masks" / "a.png")
    results = evaluate_checkpoint(finished, tmp_path / "eval", images=tmp_path / "images", masks=tmp_path / "masks",
                                  pictures=1, progress=False)
    assert results["class_names"] == NAMES  # from the checkpoint: the images come without a config
    picture = np.asarray(Image.open(next((tmp_path / "eval" / "pictures").glob("0000_*.png"))).convert("RGB"))
    for colour in palette(3)[1:]:
        assert (picture.reshape(-1, 3) == colour).all(axis=1).sum() >= 50  # the legend's swatches at least
