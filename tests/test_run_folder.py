"""The run folder: a new run never mixes with an old one, a damaged or half-written checkpoint never stops
a resume, a kill leaves nothing that lingers, and a failed start leaves no run behind."""

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from helpers import TINY
from rleseg import train as train_module
from rleseg.cli import main
from rleseg.experiment import load_config
from rleseg.train import train
from rleseg.training_state import remove_leftovers
from rleseg.typed_yaml import to_dict

# Checkpoints at steps 2 and 4, all kept; deterministic, so that a resumed run can be compared bit for bit.
STEPS = ["train.steps=4", "output.save_every=2", "output.keep_last=3", "train.deterministic=true"]


def _config(run: Path, *extra: str):
    return load_config(None, [*TINY, *STEPS, f"output.dir={run}", *extra])


def _config_file(folder: Path, *extra: str) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(to_dict(_config(folder / "run", *extra))))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step run (checkpoints at steps 2 and 4) and the losses of its steps."""
    run = tmp_path_factory.mktemp("finished") / "run"
    return run, train(_config(run)).losses


@pytest.fixture
def run(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished[0], copy)
    return copy


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def rleseg(*args, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RLESEG_FAULT": fault or ""}
    return subprocess.run([sys.executable, "-m", "rleseg.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def _error(result: subprocess.CompletedProcess) -> str:
    """The one "rleseg: error: ..." line of a command that failed as a user error, without a traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("rleseg: error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


# ----------------------------------------------------------------------------- runs never mix
def test_a_new_run_refuses_a_folder_holding_a_run(run, tmp_path):
    before = _snapshot(run)
    line = _error(rleseg("train", _config_file(tmp_path), "--out", run))
    assert f"{run} holds a run already" in line
    assert f"rleseg train --resume {run}" in line and "--overwrite" in line
    assert _snapshot(run) == before


def test_overwrite_starts_afresh(run, tmp_path):
    result = rleseg("train", _config_file(tmp_path), "--out", run, "--overwrite", "--set", "train.steps=3",
                    "--set", "output.save_every=100")
    assert result.returncode == 0, result.stderr
    assert _checkpoints(run) == ["step_0000003"]  # the old run's step_0000004 is gone, not kept as newer
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"] == 3
    assert [json.loads(line)["step"] for line in (run / "eval_log.jsonl").read_text().splitlines()] == [3]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.stepz=3"], "unknown key 'train.stepz'"),  # fails when the config is read
        (["data.dataset=folder", "data.root=/no/such/folder"], "/no/such/folder"),  # when the data is built
    ],
)
def test_overwrite_keeps_the_old_run_when_the_new_config_fails(run, tmp_path, overrides, message):
    before = _snapshot(run)
    sets = [arg for item in overrides for arg in ("--set", item)]
    assert message in _error(rleseg("train", _config_file(tmp_path), "--out", run, "--overwrite", *sets))
    assert _snapshot(run) == before


def test_resume_and_overwrite_together_are_refused(run, capsys):
    assert main(["train", "--resume", str(run), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rleseg: error: --resume continues") and err.count("\n") == 1
    with pytest.raises(ValueError, match="choose one"):
        train(_config(run), resume=True, overwrite=True)


def test_train_function_refuses_a_run_folder_unless_told_to_overwrite(run, capsys):
    with pytest.raises(ValueError, match="holds a run already"):
        train(_config(run))
    result = train(_config(run, "train.steps=2"), overwrite=True)
    assert result.step == 2 and _checkpoints(run) == ["step_0000002"]
    assert "warning" not in capsys.readouterr().err  # 160 tokens hold every sequence of this data


def test_a_failed_start_leaves_no_run_behind(tmp_path):
    """Training masks that are cut short pass the header checks and fail in the first batch: after
    config.yaml is written. The folder is removed again, so a new start there is not refused."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir()
        for i in range(4):
            Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(root / split / "images" / f"{i}.png")
            png = io.BytesIO()
            Image.fromarray(rng.integers(0, 3, (64, 64), dtype=np.uint8)).save(png, format="PNG")
            data = png.getvalue()
            (root / split / "masks" / f"{i}.png").write_bytes(data[: len(data) // 2] if split == "train" else data)
    config = _config_file(tmp_path, "data.dataset=folder", f"data.root={root}", "data.train_options={}",
                          "data.val_options={}", "data.num_classes=3")
    assert "image file is truncated" in _error(rleseg("train", config))
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- resume
def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_marker_and_cut(folder: Path) -> None:  # a checkpoint of rleseg 0.1.0 (no marker) that is damaged
    (folder / "complete").unlink()
    _cut(folder / "model.safetensors")


DAMAGE = {
    "model cut short": lambda folder: _cut(folder / "model.safetensors"),
    "trainer.json torn": lambda folder: _cut(folder / "trainer.json"),
    "trainer.safetensors torn": lambda folder: _cut(folder / "trainer.safetensors"),
    "model missing": lambda folder: (folder / "model.safetensors").unlink(),  # 0.1.0 killed while pruning
    "no marker, model cut short": _drop_marker_and_cut,
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(finished, run, capsys, damage):
    DAMAGE[damage](run / "checkpoints" / "step_0000004")
    result = train(_config(run), resume=True)
    err = capsys.readouterr().err
    assert f"rleseg: warning: {run / 'checkpoints' / 'step_0000004'}:" in err
    assert result.step == 4 and result.losses == pytest.approx(finished[1][2:], abs=0, rel=0)  # from step 2
    # Moved aside (kept for a look, never read), so it cannot sort after the new checkpoints.
    assert _checkpoints(run) == ["damaged_step_0000004", "step_0000002", "step_0000004"]


def test_a_checkpoint_without_marker_from_rleseg_0_1_0_resumes(run, capsys):
    for folder in (run / "checkpoints").glob("step_*"):
        (folder / "complete").unlink()
    result = train(_config(run), resume=True)
    assert result.step == 4 and result.losses == []  # resumed from step 4: nothing left to train
    assert "warning" not in capsys.readouterr().err


def test_no_complete_checkpoint_is_one_error_and_moves_nothing(run):
    for folder in (run / "checkpoints").glob("step_*"):
        _cut(folder / "trainer.json")
    with pytest.raises(ValueError, match="none of its 2 checkpoints is complete"):
        train(_config(run), resume=True)
    assert _checkpoints(run) == ["step_0000002", "step_0000004"]


def test_a_checkpoint_of_another_model_is_one_line_naming_it(run):
    # A config.yaml edited by hand (a --set model.* on resume is refused before the checkpoint is read).
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["mlp_dim"] = 256
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    line = _error(rleseg("train", "--resume", run))
    assert f"{run / 'checkpoints' / 'step_0000004'}: its weights do not fit the model of this config" in line


@pytest.mark.parametrize(("content", "message"), [(b"", "is empty"), (b"\n\n", "is empty"),
                                                  (b"\x00\x01\xff binary", "is not a YAML text file")])
def test_an_empty_or_unreadable_run_config_is_one_line(run, content, message):
    (run / "config.yaml").write_bytes(content)
    line = _error(rleseg("train", "--resume", run))
    assert str(run / "config.yaml") in line and message in line


def test_leftovers_of_killed_runs_are_removed_and_nothing_else(run):
    folders = [run / "checkpoints" / ".step_0000006.x1y2.partial", run / "checkpoints" / ".pruned-step_0000002-99"]
    files = [run / ".config.abc.tmp.yaml", run / ".best.abc.tmp.safetensors", run / "pictures" / ".step.x.tmp.png"]
    for folder in folders:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
    for file in files:
        file.write_bytes(b"x")
    leftovers = folders + files
    (run / ".gitignore").write_text("*\n")
    remove_leftovers(run)
    assert not any(path.exists() for path in leftovers)
    assert (run / ".gitignore").exists() and _checkpoints(run) == ["step_0000002", "step_0000004"]


def test_a_checkpoint_killed_while_being_replaced_is_restored(run):
    """A SIGKILL while step N's folder is swapped for its new copy leaves only the old copy, hidden."""
    newest = run / "checkpoints" / "step_0000004"
    newest.rename(run / "checkpoints" / ".step_0000004.old-123")
    remove_leftovers(run)
    assert _checkpoints(run) == ["step_0000002", "step_0000004"] and (newest / "complete").is_file()


# ----------------------------------------------------------------------------- kills and faults
@pytest.mark.parametrize(
    ("fault", "keep_last", "left_behind", "after_resume"),
    [
        # killed while step 4's checkpoint was written: its temporary folder holds only the model
        ("checkpoint-write@4", 3, ".step_0000004.", ["step_0000002", "step_0000004", "step_0000006"]),
        # killed while pruning step 2 after step 4 was written
        ("checkpoint-prune@4", 1, ".pruned-step_0000002-", ["step_0000006"]),
    ],
    ids=["write", "prune"],
)
def test_a_kill_during_a_checkpoint_resumes_from_the_newest_complete_one(tmp_path, fault, keep_last, left_behind,
                                                                      after_resume):
    config = _config_file(tmp_path, "train.steps=6", f"output.keep_last={keep_last}")
    run = tmp_path / "run"
    killed = rleseg("train", config, fault=fault)
    assert killed.returncode == -9, killed.stderr  # SIGKILL: no handler, no cleanup
    names = _checkpoints(run)
    assert any(name.startswith(left_behind) for name in names), names
    newest = 4 if fault.startswith("checkpoint-prune") else 2
    assert [name for name in names if name.startswith("step_")][-1] == f"step_{newest:07d}"
    resumed = rleseg("train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr and "warning" not in resumed.stderr
    assert _checkpoints(run) == after_resume  # the leftovers are gone
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    assert json.loads((run / "checkpoints" / "step_0000006" / "trainer.json").read_text())["step"] == 6


# ----------------------------------------------------------------------------- after training
def test_the_final_checkpoint_is_written_before_the_final_validation(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("validation failed")

    monkeypatch.setattr(train_module, "validate", broken)
    with pytest.raises(RuntimeError, match="validation failed"):
        train(_config(tmp_path / "run", "train.steps=3", "eval.every=0"))
    assert _checkpoints(tmp_path / "run") == ["step_0000002", "step_0000003"]


def test_truncated_training_sequences_are_warned_about_once(tmp_path, capsys):
    train(_config(tmp_path / "run", "train.steps=3", "model.max_seq_len=8"))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rleseg: warning:")]
    assert len(warnings) == 1, warnings
    assert "of the 4 training sequences so far" in warnings[0] and "model.max_seq_len 8" in warnings[0]
