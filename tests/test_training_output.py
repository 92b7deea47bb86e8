"""What training tells its user: the start-up and end summaries, progress bars on a terminal and plain lines
elsewhere, the validation pictures, the --seed/--device/--no-progress flags, and one metrics.json layout
for in-training validation and ``rleseg evaluate``."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import rleseg.train as train_module
import rleseg.training_output as training_output
from helpers import TINY
from rleseg.cli import main
from rleseg.evaluate import evaluate_checkpoint, score_folders
from rleseg.experiment import build_datasets, build_tokenizer, load_config
from rleseg.patch_stats import summarise
from rleseg.progress import ProgressLines, progress
from rleseg.report import METRICS_SCHEMA
from rleseg.tokens import Tokenizer
from rleseg.train import train
from rleseg.training_output import ValidationPictures
from rleseg.typed_yaml import to_dict

SHARED_KEYS = {"schema", "task", "what", "class_names", "num_images", "num_patches", "semantic"}


def _config(run: Path, *extra: str):
    return load_config(None, [*TINY, f"output.dir={run}", *extra])


# ----------------------------------------------------------------------------- progress displays
def test_off_a_terminal_progress_prints_a_line_every_n_updates_and_one_at_the_end(capsys):
    bar = progress(desc="train", unit="step", total=5, every=2)  # pytest's stderr is not a terminal
    assert isinstance(bar, ProgressLines)
    with bar:
        for step in range(5):
            bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
            bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["train: 2/5 (40%) step", "train: 4/5 (80%) step",
                                                      "train: 5/5 (100%) step"]
    assert "loss 0.500" in lines[0] and "loss 0.200" in lines[2]
    assert all("step/s" in line and "elapsed 0:0" in line for line in lines)


def test_progress_is_a_bar_only_on_a_terminal_and_quiet_lines_stay_quiet(capsys, monkeypatch):
    assert list(progress(range(3), desc="inner", unit="item", terminal_only=True)) == [0, 1, 2]
    assert list(progress(range(3), desc="off", unit="item", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
    assert list(progress(range(3), desc="evaluate", unit="image")) == [0, 1, 2]
    assert capsys.readouterr().err.startswith("evaluate: 3/3 (100%) image, ")  # one line, at the end
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = progress(desc="train", unit="step", total=3, every=1)
    assert type(bar).__name__ == "tqdm"
    bar.close()


# ----------------------------------------------------------------------------- a run's summaries
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step run validating every 2 steps on all validation patches, with what it printed."""
    folder = tmp_path_factory.mktemp("output") / "run"
    config = _config(folder, "train.steps=4", "output.log_every=2", "eval.every=2", "eval.max_samples=null",
                     "data.val_options={length: 2, config: {size: [128, 96]}}")  # 2 images of 4 patches each
    printed_before_first_step = []
    step = train_module.train_step
    capture = pytest.MonkeyPatch()

    def first_step_sees_the_summary(*args, **kwargs):
        if not printed_before_first_step:
            printed_before_first_step.append(sys.stdout.getvalue() if hasattr(sys.stdout, "getvalue") else "")
        return step(*args, **kwargs)

    capture.setattr(train_module, "train_step", first_step_sees_the_summary)
    capture.setattr(training_output, "TOKEN_SAMPLE_SECONDS", 60.0)  # a contended machine still samples them all
    out, err = _captured(lambda: train(config))
    capture.undo()
    return folder, config, out, err, printed_before_first_step[0]


def _captured(call):
    """(stdout, stderr) of ``call`` (StringIO streams, so not terminals)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        call()
    return out.getvalue(), err.getvalue()


def test_the_start_summary_comes_before_the_first_step_and_tells_the_truth(run):
    folder, config, _, _, before_first_step = run
    assert before_first_step.startswith(f"rleseg train: run folder {folder}\n")
    tokenizer = build_tokenizer(config)
    train_set, val_set = build_datasets(config, tokenizer)
    model = train_module.build_model(config, tokenizer)
    parameters = sum(p.numel() for p in model.parameters())
    lines = {line.split()[0]: line for line in before_first_step.splitlines()[1:]}
    assert lines["device"].split()[1:] == ["cpu,", "float32", "(fp32)"]
    assert f"{parameters:,} parameters, {parameters:,} trainable" in lines["model"]
    assert f"{train_set.num_images()} images, {len(train_set)} patches: " in before_first_step
    assert f"{len(train_set) // 4:g} steps per epoch of 4 patches" in before_first_step
    assert f"{val_set.num_images()} images, {len(val_set)} patches: {len(val_set)} patches scored every 2 steps" \
        in before_first_step
    assert "ends        at step 4 (now 0)" in before_first_step
    assert len(train_set) < training_output.TOKEN_SAMPLE  # so the sample is the whole set
    found = summarise([int(train_set[i]["tokens"].numel()) for i in range(len(train_set))], 1, 160)
    assert lines["tokens"].endswith(f"p50 {found.p50}, p99 {found.p99}, max {found.max} ({len(train_set)} sequences "
                                    "sampled); model.max_seq_len 160 fits")


def test_the_end_summary_gives_the_final_scores_and_the_files(run):
    folder, _, out, _, _ = run
    metrics = json.loads((folder / "metrics.json").read_text())
    dice = metrics["semantic"]["pooled"]["mean_without_background"]["dice"]
    end = out.split("validation at step 4")[1]
    assert f"Dice {dice:.3f} pooled" in end
    written = end.split(f"written to {folder}: ")[1]
    for name in ("checkpoints/step_0000004 (last)", "best.safetensors", "metrics.json", "metrics.csv",
                 "pictures/step_0000004.png", "pictures/tokens_step_0000004.png"):
        assert name in written and (folder / name.split(" ")[0]).exists(), name


def test_off_a_terminal_training_and_validation_print_plain_lines(run):
    _, config, _, err, _ = run
    patches = len(build_datasets(config, build_tokenizer(config))[1])
    lines = err.splitlines()
    assert "\r" not in err
    assert [line.split(",")[0] for line in lines if line.startswith("train:")] == ["train: 2/4 (50%) step",
                                                                                  "train: 4/4 (100%) step"]
    assert all(" lr " in line and "step/s" in line for line in lines if line.startswith("train:"))
    validations = [line for line in lines if line.startswith("validate:")]
    assert [line.split(",")[0] for line in validations] == [f"validate: {patches}/{patches} (100%) patch"] * 2


def test_metrics_csv_is_the_training_log_with_each_validation_on_its_row(run):
    from rleseg.engine import learning_rate

    folder, config, _, err, _ = run
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    assert list(rows[0]) == ["step", "elapsed_s", "loss", "lr", "grad_norm", "images_per_s", "truncated", "val_dice",
                             "val_iou"]
    assert [int(row["step"]) for row in rows] == [2, 4]  # output.log_every 2, validations at 2 and 4: one row each
    assert [float(row["lr"]) for row in rows] == pytest.approx([learning_rate(s - 1, 4, config.train) for s in (2, 4)])
    assert all(float(row["loss"]) > 0 and float(row["images_per_s"]) > 0 for row in rows)
    assert float(rows[0]["elapsed_s"]) < float(rows[1]["elapsed_s"])
    lines = (folder / "eval_log.jsonl").read_text().splitlines()
    logged = [json.loads(line)[config.eval.best_metric] for line in lines]
    assert [float(row["val_dice"]) for row in rows] == pytest.approx(logged)
    final = json.loads((folder / "metrics.json").read_text())["semantic"]["pooled"]["mean_without_background"]
    assert float(rows[-1]["val_iou"]) == pytest.approx(final["iou"])
    assert "warning" not in err  # warm-up 2 of 4 steps, no refiner: nothing to warn about


# ----------------------------------------------------------------------------- one metrics.json layout
def test_training_and_evaluate_write_one_metrics_layout(run, tmp_path):
    folder, config, _, _, _ = run
    _, val_set = build_datasets(config, build_tokenizer(config))
    trained = json.loads((folder / "metrics.json").read_text())
    evaluated = evaluate_checkpoint(folder, tmp_path / "eval", progress=False)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == json.loads(json.dumps(evaluated))
    assert SHARED_KEYS <= set(trained) and SHARED_KEYS <= set(evaluated)
    assert trained["schema"] == evaluated["schema"] == METRICS_SCHEMA and trained["task"] == evaluated["task"]
    assert (trained["what"], evaluated["what"]) == ("patches", "stitched images")
    assert trained["num_images"] == evaluated["num_images"] == val_set.num_images()  # images, not patches
    assert trained["num_patches"] == len(val_set) > val_set.num_images()
    assert set(trained["semantic"]) == set(evaluated["semantic"])
    assert set(trained["semantic"]["pooled"]["mean"]) == set(evaluated["semantic"]["pooled"]["mean"])
    assert trained["step"] == 4 and trained["value"] == trained["semantic"]["pooled"]["mean_without_background"][
        "dice"]


def test_a_video_run_and_its_evaluation_write_one_metrics_layout(tmp_path):
    config = _config(tmp_path / "run", "train.steps=1", "tokenizer.task=video", "tokenizer.frames=2",
                     "data.dataset=synthetic_video", "model.max_seq_len=256", "output.pictures=1")
    train(config)
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    evaluated = evaluate_checkpoint(tmp_path / "run", tmp_path / "eval", progress=False, pictures=0)
    shared = SHARED_KEYS | {"num_videos", "temporal"}
    assert shared <= set(trained) and shared <= set(evaluated) and trained["task"] == evaluated["task"] == "video"
    assert trained["num_images"] == 2 * trained["num_patches"] == 2 * 4  # frames: 4 windows of 2 frames
    assert set(trained["semantic"]) == set(evaluated["semantic"]) and "temporal" not in trained["semantic"]
    assert set(trained["temporal"]["pooled"]) == set(evaluated["temporal"]["pooled"])


def test_scoring_label_maps_writes_the_same_layout(tmp_path):
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.eye(4, dtype=np.uint8)).save(tmp_path / folder / "a.png")
    results = score_folders(tmp_path / "pred", tmp_path / "gt", 2, tmp_path / "out", progress=False)
    assert SHARED_KEYS - {"num_patches"} <= set(results) and "num_patches" not in results
    assert (results["what"], results["task"], results["num_images"]) == ("label maps", "semantic", 1)


# ----------------------------------------------------------------------------- pictures
def _batch(masks: list[np.ndarray], tokenizer: Tokenizer) -> dict:
    tokens = [torch.as_tensor(tokenizer.encode(np.where(m == 255, 0, m)[::4, ::4])) for m in masks]
    width = max(len(t) for t in tokens)
    return {"image": torch.rand(len(masks), 3, 64, 64), "mask": torch.as_tensor(np.stack(masks)),
            "name": [f"im{i}" for i in range(len(masks))], "box": torch.tensor([[i * 8, 16, 0, 0] for i in
                                                                                 range(len(masks))]),
            "tokens": torch.stack([torch.nn.functional.pad(t, (0, width - len(t))) for t in tokens]),
            "lengths": torch.tensor([len(t) for t in tokens])}


def test_pictures_draw_patches_with_foreground_titled_by_image_and_position(tmp_path, monkeypatch):
    titles = []
    monkeypatch.setattr(training_output, "comparison_panel",
                        lambda *args, colours=None: titles.append(args[-1]) or Image.new("RGB", (8, 8)))
    tokenizer = Tokenizer((16, 16), 3)
    empty, shape = np.zeros((64, 64), np.int64), np.zeros((64, 64), np.int64)
    shape[20:40, 8:30] = 2
    ignored = np.full((64, 64), 255, np.int64)  # ignored pixels are not foreground
    pictures = ValidationPictures(2, ["bg", "a", "b"], 255, tokenizer)
    batch = _batch([empty, ignored, shape, empty], tokenizer)
    pictures.add(batch, batch["mask"].numpy(), [np.array([0])] * 4)
    written = pictures.save(tmp_path, 7, None)
    assert titles[-1] == "im2 at y 16, x 16" and [p.name for p in written] == ["step_0000007.png",
                                                                                 "tokens_step_0000007.png"]
    assert Image.open(written[0]).height == 8  # one panel: only the patch with foreground
    assert pictures.tokens[0] == "im2 at y 16, x 16"  # the token picture shows a patch that has runs

    titles.clear()
    background = ValidationPictures(2, ["bg", "a", "b"], 255, tokenizer)
    batch = _batch([empty, ignored, empty], tokenizer)
    background.add(batch, batch["mask"].numpy(), [np.array([0])] * 3)
    assert titles == ["im0 at y 0, x 16", "im1 at y 8, x 16"]  # none has foreground: any patch will do
    assert [p.name for p in background.save(tmp_path, 8, None)] == ["step_0000008.png"]  # no runs, no tokens


# ----------------------------------------------------------------------------- the flags of rleseg train
def _config_file(folder: Path, *extra: str) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(to_dict(_config(folder / "run", *extra))))
    return path


def test_seed_device_and_no_progress_flags(tmp_path, capsys):
    config = _config_file(tmp_path, "train.steps=2", "output.log_every=1")
    assert main(["train", str(config), "--seed", "11", "--device", "cpu", "--no-progress"]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["seed"] == 11
    out, err = capsys.readouterr()
    assert "device      cpu," in out and "train:" not in err and "validate:" not in err
    assert main(["train", "--resume", str(tmp_path / "run"), "--seed", "12"]) == 2
    assert capsys.readouterr().err.startswith("rleseg: error: --seed is for a new run")


@pytest.mark.parametrize("device", ["cuda:63", "nonsense"])
def test_an_unavailable_device_is_one_line_and_no_run(tmp_path, capsys, device):
    config = _config_file(tmp_path)
    assert main(["train", str(config), "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rleseg: error: device {device!r}" if device == "nonsense" else
                          f"rleseg: error: device {device} asked for, but ") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
