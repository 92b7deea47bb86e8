"""Model checkpoints: one self-describing ``.safetensors`` file.

The file holds the weights as safetensors tensors and, in the safetensors header metadata, JSON strings:
``format`` ("rleseg.pix2seq"), ``format_version``, ``config_class`` ("ModelConfig", or
"VideoModelConfig" for the video models of models/video.py), ``config`` (its fields, the tokenizer's
``to_dict()`` included) and ``extra`` (whatever the caller passes, e.g. the training step). Nothing is
unpickled on load. Files are written to a temporary name in the target folder and renamed into place,
so an interrupted save never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .pix2seq import ModelConfig, create_model

FORMAT = "rleseg.pix2seq"
FORMAT_VERSION = 1


def save_checkpoint(model: nn.Module, path: str | Path, extra: dict | None = None) -> None:
    """Write ``model`` (weights + config + tokenizer) and the JSON-serialisable ``extra`` to ``path``."""
    path = Path(path)
    state = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config_class": type(model.config).__name__,
        "config": json.dumps(dataclasses.asdict(model.config)),
        "extra": json.dumps(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint_info(path: str | Path) -> tuple[ModelConfig, dict]:
    """(ModelConfig, extra) of a checkpoint, without reading its weights."""
    metadata = _open(Path(path))[1]
    return _config(Path(path), metadata)[0], json.loads(metadata.get("extra", "{}"))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model saved at ``path`` (tokenizer rebuilt from the file), on ``device``, in eval mode."""
    path = Path(path)
    handle, metadata = _open(path)
    config, build = _config(path, metadata)
    model = build(dataclasses.replace(config, pretrained=False))  # the weights come from the file
    with handle as f:
        state = {name: f.get_tensor(name) for name in f.keys()}
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [n for n in own if n in state and state[n].shape != own[n].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path}: weights do not fit the model its config describes (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, other shape {wrong[:3]})"
        )
    model.load_state_dict(state)
    return model.to(device).eval()


def _open(path: Path):
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        handle = safe_open(str(path), framework="pt")
        metadata = handle.metadata() or {}
    except Exception as err:
        raise ValueError(f"{path}: not a safetensors file, or a corrupt one ({err})") from err
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not an rleseg model checkpoint (no '{FORMAT}' format tag in its metadata)")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(
            f"{path}: checkpoint format version {metadata.get('format_version')!r}, this rleseg reads "
            f"version {FORMAT_VERSION}"
        )
    return handle, metadata


def _config(path: Path, metadata: dict):
    """(config, the function that builds a model from it)."""
    kind = metadata.get("config_class", "ModelConfig")
    if kind == "ModelConfig":
        cls, build = ModelConfig, create_model
    elif kind == "VideoModelConfig":
        from .video import VideoModelConfig as cls
        from .video import create_video_model as build
    else:
        raise ValueError(f"{path}: unknown model config class {kind!r}")
    try:
        fields = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: checkpoint config is missing or not valid JSON ({err})") from err
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{path}: checkpoint config has unknown fields {unknown}")
    if not fields.get("tokenizer"):
        raise ValueError(f"{path}: checkpoint config holds no tokenizer")
    fields.setdefault("start_head", "table")  # written before start heads existed: the plain table
    return cls(**fields), build
