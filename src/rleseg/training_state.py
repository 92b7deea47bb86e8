"""Everything besides the weights that an exact resume needs: optimizer, scheduler, RNG and data position.

Stored as safetensors (tensors) + JSON (everything else), never pickle. ``save_training_state`` returns
the two payloads; ``rleseg.checkpoints`` writes them atomically beside the model weights.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def optimizer_to_flat(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
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


def optimizer_from_flat(tensors: dict[str, torch.Tensor], skeleton: dict) -> dict:
    state = {}
    for param_id, slots in skeleton["state"].items():
        state[int(param_id)] = {
            name: tensors[spec["tensor"]] if "tensor" in spec else spec["value"] for name, spec in slots.items()
        }
    return {"state": state, "param_groups": skeleton["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
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


def set_rng_state(tensors: dict[str, torch.Tensor], info: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = info["python"]
    random.setstate((version, tuple(internal), gauss))


def save_training_state(optimizer: torch.optim.Optimizer, extra: dict[str, Any]) -> tuple[dict, dict]:
    """(tensors, json) for the optimizer, the RNGs and ``extra`` (step, scheduler, data position...)."""
    opt_tensors, opt_skeleton = optimizer_to_flat(optimizer.state_dict())
    rng_tensors, rng_info = rng_state()
    return {**opt_tensors, **rng_tensors}, {"optimizer": opt_skeleton, "rng": rng_info, **extra}


def load_training_state(optimizer: torch.optim.Optimizer, tensors: dict, info: dict) -> dict:
    """Restore optimizer and RNGs; returns the ``extra`` entries given to :func:`save_training_state`."""
    optimizer.load_state_dict(optimizer_from_flat(tensors, info["optimizer"]))
    set_rng_state(tensors, info["rng"])
    return {k: v for k, v in info.items() if k not in ("optimizer", "rng")}
