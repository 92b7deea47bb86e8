"""Everything an exact resume needs, and the run folder's checkpoints that hold it.

    RUN_DIR/checkpoints/step_000500/model.safetensors    the model (rleseg.models format, self-describing)
                                    trainer.safetensors  optimizer and RNG tensors
                                    trainer.json         TrainingState's fields, RNG states, optimizer skeleton
    RUN_DIR/best.safetensors                             the model of the best evaluation so far

Stored as safetensors (tensors) + JSON (everything else), never pickle. A checkpoint folder is assembled
under a temporary name (starting with a dot) and renamed into place, so a crash never leaves a
half-written ``step_*`` folder; readers look only at ``step_[0-9]*``. The newest ``keep_last`` are kept.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_folder
from .models import save_checkpoint


@dataclass
class TrainingState:
    """Where a run stands after ``step`` optimizer steps; trainer.json holds these fields by name."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # samples of ``epoch`` this rank has drawn: a resumed run continues from there
    total_steps: int = 0  # the schedule's length; a wall-clock budget shortens it as the run goes
    elapsed: float = 0.0  # seconds of training, over every call of a resumed run
    best: float | None = None  # the best validation score so far (None before the first)


# ----------------------------------------------------------------------------- optimizer and RNGs
def _optimizer_to_flat(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into named tensors and a JSON-able skeleton."""
    tensors, skeleton = {}, {"param_groups": state["param_groups"], "state": {}}
    for param_id, slots in state["state"].items():
        entry = {}
        for name, value in slots.items():
            if torch.is_tensor(value):
                key = f"optimizer.{param_id}.{name}"
                tensors[key] = value.detach().cpu().contiguous()
                entry[name] = {"tensor": key}
            else:
                entry[name] = {"value": value}
        skeleton["state"][str(param_id)] = entry
    return tensors, skeleton


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], skeleton: dict) -> dict:
    state = {}
    for param_id, slots in skeleton["state"].items():
        state[int(param_id)] = {
            name: tensors[spec["tensor"]] if "tensor" in spec else spec["value"] for name, spec in slots.items()
        }
    return {"state": state, "param_groups": skeleton["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    # The legacy global generator too: user augmentations may draw from it.
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    version, internal, gauss = random.getstate()
    return tensors, {
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }


def _set_rng_state(tensors: dict[str, torch.Tensor], info: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = info["python"]
    random.setstate((version, tuple(internal), gauss))


# ----------------------------------------------------------------------------- run checkpoints
def save_run_checkpoint(
    run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainingState, keep_last: int
) -> Path:
    """Write ``checkpoints/step_N`` (N = ``state.step``) and drop all but the newest ``keep_last``."""
    final = Path(run_dir) / "checkpoints" / f"step_{state.step:07d}"
    opt_tensors, opt_skeleton = _optimizer_to_flat(optimizer.state_dict())
    rng_tensors, rng_info = _rng_state()
    info = {"optimizer": opt_skeleton, "rng": rng_info, **dataclasses.asdict(state)}
    with atomic_folder(final, overwrite=True) as tmp:
        save_checkpoint(model, tmp / "model.safetensors", extra={"step": state.step})
        save_file({**opt_tensors, **rng_tensors}, str(tmp / "trainer.safetensors"))
        (tmp / "trainer.json").write_text(json.dumps(info))
    for old in _step_folders(run_dir)[: -max(1, keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_run_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TrainingState:
    """Load weights, optimizer and RNG states from a ``step_N`` folder; returns its training state."""
    folder = Path(folder)
    try:
        info = json.loads((folder / "trainer.json").read_text())
        state = TrainingState(**{field.name: info[field.name] for field in dataclasses.fields(TrainingState)})
        tensors = load_file(str(folder / "trainer.safetensors"))
        weights = load_file(str(folder / "model.safetensors"))
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{folder}: not a readable training checkpoint ({error})") from None
    model.load_state_dict(weights)
    optimizer.load_state_dict(_optimizer_from_flat(tensors, info["optimizer"]))
    _set_rng_state(tensors, info["rng"])
    return state


def load_latest_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TrainingState:
    """:func:`load_run_checkpoint` of the newest ``step_N`` folder of ``run_dir``."""
    found = _step_folders(run_dir)
    if not found:
        raise ValueError(f"{run_dir}: no checkpoint to resume from (looked in {Path(run_dir) / 'checkpoints'})")
    return load_run_checkpoint(found[-1], model, optimizer)


def save_best(run_dir: Path, model: torch.nn.Module, extra: dict) -> Path:
    path = Path(run_dir) / "best.safetensors"
    save_checkpoint(model, path, extra=extra)
    return path


def _step_folders(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    return sorted(folder.glob("step_[0-9]*")) if folder.is_dir() else []
