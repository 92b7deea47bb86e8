"""Training checkpoints of a run folder: model file + trainer state, written atomically, last K kept.

    RUN_DIR/checkpoints/step_000500/model.safetensors    the model (rleseg.models format, self-describing)
                                    trainer.safetensors  optimizer and RNG tensors
                                    trainer.json         step, data position, schedule, optimizer skeleton
    RUN_DIR/best.safetensors                             the model of the best evaluation so far

A checkpoint folder is assembled under a temporary name and renamed into place, so a crash never leaves
a half-written ``step_*`` folder; readers ignore the temporary ones.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .models import save_checkpoint
from .training_state import load_training_state, save_training_state


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    return sorted(folder.glob("step_[0-9]*")) if folder.is_dir() else []


def save_run_checkpoint(
    run_dir: Path, model, optimizer: torch.optim.Optimizer, state: dict, keep_last: int
) -> Path:
    """Write ``checkpoints/step_N`` (N = state["step"]) and drop all but the newest ``keep_last``."""
    folder = Path(run_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{state['step']:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp_step_", dir=folder))
    try:
        save_checkpoint(model, tmp / "model.safetensors", extra={"step": state["step"]})
        tensors, info = save_training_state(optimizer, state)
        save_file(tensors, str(tmp / "trainer.safetensors"))
        (tmp / "trainer.json").write_text(json.dumps(info))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoint_dirs(run_dir)[: -max(1, keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_run_checkpoint(folder: Path, model, optimizer: torch.optim.Optimizer) -> dict:
    """Load weights, optimizer and RNG states from a ``step_N`` folder; returns the saved trainer state."""
    folder = Path(folder)
    try:
        info = json.loads((folder / "trainer.json").read_text())
        tensors = load_file(str(folder / "trainer.safetensors"))
        weights = load_file(str(folder / "model.safetensors"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{folder}: not a readable training checkpoint ({error})") from None
    model.load_state_dict(weights)
    return load_training_state(optimizer, tensors, info)


def save_best(run_dir: Path, model, extra: dict) -> Path:
    path = Path(run_dir) / "best.safetensors"
    save_checkpoint(model, path, extra=extra)
    return path
