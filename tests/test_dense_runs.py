"""Dense runs are dense: a dense model's config refuses the settings only tokens use (naming the key), a
token config made dense leaves them out, older dense run folders that kept them still resume and evaluate,
and training, evaluation and prediction of a dense model say nothing of tokens."""

import contextlib
import csv
import io
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from rleseg.cli import main
from rleseg.experiment import config_to_dict, load_config, token_settings
from rleseg.train import train
from rleseg.typed_yaml import ConfigError

DENSE = ["model.architecture=dense", "model.backbone=test_resnet", "model.dim=16", "data.patch.patch_size=64",
         "data.patch.factor=4", "data.train_options={length: 8}", "data.val_options={length: 2}",
         "train.batch_size=4", "train.warmup_steps=1", "eval.max_samples=2", "eval.batch_size=2",
         "output.tensorboard=false", "output.log_every=1"]
# What an older rleseg kept in a dense run's config.yaml when the run came from a token config
# (--set model.architecture=dense on stardist-tiny and the like).
LEFTOVERS = {"model": {"refine_band": 1, "refine_batch": 4, "max_seq_len": 128}, "tokenizer": {"extent": "end"}}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("rleseg: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    """A 2-step dense run and what it printed on stdout."""
    run_dir = tmp_path_factory.mktemp("dense") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train(load_config(None, [*DENSE, "train.steps=2", f"output.dir={run_dir}"]), show_progress=False)
    return run_dir, printed.getvalue()


# ----------------------------------------------------------------------------- the config
@pytest.mark.parametrize(("override", "key"), [
    ("model.refine_band=1", "model.refine_band 1"),
    ("model.start_head=table", "model.start_head 'table'"),
    ("model.max_seq_len=100", "model.max_seq_len 100"),  # the tiny preset's is 256
    ("tokenizer.extent=end", "tokenizer.extent 'end'"),
    ("tokenizer.bands=2", "tokenizer.bands 2"),
    ("eval.decoding.top_p=0.4", "eval.decoding.top_p 0.4"),
])
def test_a_dense_model_refuses_token_settings_naming_the_key(tmp_path, capsys, override, key):
    with pytest.raises(ConfigError, match=rf"^{key} is a setting of token models, and model.architecture is dense"):
        load_config(None, ["model.architecture=dense", override])
    config = tmp_path / "dense.yaml"  # a dense config file that sets it: the same one line, exit 2
    section, name, value = override.split(".")[0], override.split("=")[0], override.split("=")[1]
    data = {"model": {"preset": "tiny", "architecture": "dense"}}
    node = data.setdefault(section, {})
    for part in name.split(".")[1:-1]:
        node = node.setdefault(part, {})
    node[name.split(".")[-1]] = yaml.safe_load(value)
    config.write_text(yaml.safe_dump(data))
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    assert key in _one_error_line(capsys) and not (tmp_path / "run").exists()


def test_token_settings_at_their_defaults_are_accepted():
    config = load_config(None, ["model.architecture=dense", "model.refine_band=0", "model.max_seq_len=256",
                                "tokenizer.extent=length", "eval.decoding.top_p=1.0"])
    assert token_settings(config) == {}


def test_a_token_config_made_dense_leaves_its_token_settings_out():
    token = load_config("stardist-tiny")
    assert token_settings(token) == {"model.refine_band": 1, "model.refine_batch": 4, "model.aux_dense_weight": 1.0,
                                     "tokenizer.extent": "end"}
    dense = load_config("stardist-tiny", ["model.architecture=dense"])
    assert token_settings(dense) == {} and "refine_band" not in dense.model and dense.tokenizer.extent == "length"
    assert dense.data == token.data and dense.train == token.train  # everything else is the token config's
    with pytest.raises(ConfigError, match=r"^model\.refine_band 2 is a setting of token models"):
        load_config("stardist-tiny", ["model.architecture=dense", "model.refine_band=2"])  # asked for with it


# ----------------------------------------------------------------------------- training, evaluation, prediction
def test_a_dense_run_logs_and_summarises_no_tokens(dense_run):
    run_dir, printed = dense_run
    header = next(csv.reader((run_dir / "metrics.csv").open()))
    assert header == ["step", "elapsed_s", "loss", "lr", "grad_norm", "images_per_s", "val_dice", "val_iou"]
    assert [row["step"] for row in csv.DictReader((run_dir / "metrics.csv").open())] == ["1", "2"]
    assert "rleseg train: run folder" in printed and "written to" in printed and "tokens" not in printed
    assert not list((run_dir / "pictures").glob("tokens_*"))
    assert "refinement" not in json.loads((run_dir / "metrics.json").read_text())


def test_an_older_dense_run_folder_with_token_settings_resumes_and_evaluates(dense_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for path in dense_run[0].rglob("*"):
        target = run_dir / path.relative_to(dense_run[0])
        target.mkdir(exist_ok=True) if path.is_dir() else target.write_bytes(path.read_bytes())
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    for section, values in LEFTOVERS.items():
        written[section].update(values)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(written, sort_keys=False))

    assert main(["evaluate", str(run_dir), "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    names = {path.name for path in (tmp_path / "eval").iterdir()}
    assert not [name for name in names if name.startswith("tokens_")] and "tokens" not in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "generation" not in metrics and "refinement" not in metrics
    assert not {"temperature", "top_p", "max_len", "method", "refined"} & set(metrics["settings"])
    row = next(csv.DictReader((tmp_path / "eval" / "per_image.csv").open()))
    assert not {"tokens", "generated_runs", "invalid_runs", "truncated", "passes"} & set(row)

    assert main(["train", "--resume", str(run_dir), "--set", "train.steps=3", "--no-progress"]) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 3
    capsys.readouterr()
    # The same file as a new run's config: its token settings are refused like any dense config's.
    assert main(["train", str(run_dir / "config.yaml"), "--out", str(tmp_path / "new")]) == 2
    assert "model.refine_band 1 is a setting of token models" in _one_error_line(capsys)


def test_dense_prediction_counts_no_tokens(dense_run, tmp_path, capsys):
    image = (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "scene.png")
    out = tmp_path / "pred"
    assert main(["predict", str(dense_run[0]), str(tmp_path / "scene.png"), "--out", str(out), "--no-progress"]) == 0
    line = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 1 and summary["patches"] == 2 and summary["images_per_s"] > 0
    assert not {"tokens", "tokens_per_s", "invalid_runs", "truncated", "passes"} & set(summary)
    assert "decoding" not in summary["options"]
    assert "1 images (2 patches) in" in line and "tokens" not in line


def test_a_dense_config_built_in_python_keeps_working():
    """Refusing is load_config's: code that builds a config keeps its own keys (left out of the model, as before)."""
    from rleseg.experiment import ExperimentConfig, build_model_config

    config = ExperimentConfig(model={"preset": "tiny", "architecture": "dense", "refine_band": 1})
    assert type(build_model_config(config)).__name__ == "DenseConfig"
    assert token_settings(config) == {"model.refine_band": 1}
    assert config_to_dict(config)["model"]["refine_band"] == 1
