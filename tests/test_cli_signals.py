"""Ctrl-C and SIGTERM: every command stops with one line, exit status 130 / 143, no traceback, and
leaves neither its output folder nor a temporary one behind."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import micro_config
from rleseg.cli import main
from rleseg.models import create_model, save_checkpoint
from rleseg.tokens import Tokenizer

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A checkpoint and images enough for many seconds of prediction (batches of one patch)."""
    root = tmp_path_factory.mktemp("signals")
    torch.manual_seed(0)
    save_checkpoint(create_model(micro_config(), Tokenizer((16, 16), 3)), root / "model.safetensors")
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (root / folder).mkdir()
    for i in range(12):  # 64 patches each
        Image.fromarray((rng.random((512, 512, 3)) * 255).astype(np.uint8)).save(root / "images" / f"im{i}.png")
        Image.fromarray(rng.integers(0, 3, (512, 512)).astype(np.uint8)).save(root / "masks" / f"im{i}.png")
    return root


def _default_signals() -> None:
    """In the child, before it runs: SIGINT and SIGTERM as a terminal's Ctrl-C finds them. A suite started
    from a shell that ignores SIGINT (a background job: `make test &`) would hand the ignored signal down,
    and rleseg rightly leaves a signal it was started ignoring ignored (nohup)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture
def ignoring_sigint():
    """This process ignores SIGINT, as one started in the background does, for the length of a test."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGINT, previous)


def interrupt(argv: list[str], out, sig: int) -> subprocess.CompletedProcess:
    """Start ``python -m rleseg.cli argv``, send ``sig`` once it writes into its temporary output folder."""
    process = subprocess.Popen([sys.executable, "-m", "rleseg.cli", *argv, "--out", str(out), "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    deadline = time.monotonic() + 240
    while not list(out.parent.glob(f".{out.name}.*.partial")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the command never started writing"
        time.sleep(0.05)
    time.sleep(0.3)  # well inside the prediction loop
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_signal_stops_the_command_and_leaves_nothing(work, tmp_path, command, sig, ignoring_sigint):
    """Run with SIGINT ignored here, as under `make test &`: the children still get the default handlers."""
    ckpt = str(work / "model.safetensors")
    argv = ([command, ckpt, str(work / "images")] if command == "predict" else
            [command, ckpt, "--images", str(work / "images"), "--masks", str(work / "masks")])
    done = interrupt([*argv, "--batch-size", "1"], tmp_path / "out", sig)
    assert done.returncode == EXIT[sig], done.stderr
    assert done.stderr == f"rleseg: interrupted by {signal.Signals(sig).name}\n"
    assert list(tmp_path.iterdir()) == []  # no output folder, no .partial one
    assert len(list((work / "images").iterdir())) == 12


def test_every_command_turns_a_signal_into_its_exit_status(tmp_path, capsys, monkeypatch):
    """In process: a torch-free command, the handlers of the caller restored afterwards."""
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "m.png")

    def signalled(path, *args, **kwargs):
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr("rleseg.cli.masks.read_label_map", signalled)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert main(["tokenize", str(tmp_path / "m.png")]) == 143
    out, err = capsys.readouterr()
    assert out == "" and err == "rleseg: interrupted by SIGTERM\n"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
