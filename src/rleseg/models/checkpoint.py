"""Model checkpoints: one self-describing ``.safetensors`` file.

The file holds the weights as safetensors tensors and, in the safetensors header metadata, JSON strings:
``format`` ("rleseg.pix2seq"), ``format_version``, ``config_class`` (the config's class, which picks the
model: "ModelConfig", "VideoModelConfig" or "DenseConfig", see factory.py), ``config`` (its fields, the
tokenizer's ``to_dict()`` included) and ``extra`` (whatever the caller passes: training writes the step,
``class_names`` and ``class_colours``, which :func:`checkpoint_classes` reads back).
Nothing is unpickled on load. Files are written atomically (rleseg.atomic), so an interrupted save never
leaves a half-written checkpoint under the final name.

A model folder (``rleseg export --format hf``, :mod:`rleseg.models.hub`) holds such a file as
``model.safetensors`` beside ``config.json``, which repeats its config class, config and extra for the Hugging
Face Hub to show: :func:`resolve_checkpoint` takes the folder for its ``model.safetensors`` once the two agree.

The metadata is read as untrusted input: the config is type-checked (its ``backbone_kwargs`` against
the backbone's allow-list), the tokenizer rebuilt and checked against its stored vocabulary, and the
model sized from the config before anything is built (its largest tables, token embedding and positions
or the dense classifier, and its transformer layers): a config that claims more values than the file can
hold (an edited tokenizer claiming a 100000x100000 mask, a million decoder layers), more layers than the
file has tensors, or a model above :mod:`rleseg.limits`' memory limit is refused with the sizes instead of
exhausting memory. Every error is a ValueError whose message starts with the checkpoint's path.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from rleseg.atomic import atomic_path
from rleseg.limits import check_memory
from rleseg.tokens import MaskTokenizer, from_dict

from .dense import MIN_WIDTH, DenseConfig
from .factory import AnyModelConfig, config_from_dict, create_model

FORMAT = "rleseg.pix2seq"
FORMAT_VERSION = 1
FOLDER_CONFIG, FOLDER_WEIGHTS = "config.json", "model.safetensors"  # a model folder's (Hugging Face's names)
# Weights that moved when the model's features went into modules of their own (commit a540f6c has the old
# names): old prefix -> new. Files of either rleseg load.
RENAMED_WEIGHTS = {
    "decoder.pair_proj.": "run_step.pair_proj.",
    "decoder.end_query.": "run_step.end_query.",
    "decoder.end_ln.": "run_step.end_ln.",
    "start_proj.": "pointer.start_proj.",
    "end_head.": "pointer.end.",
    "aux_head.": "cell_head.classify.",
}


def renamed_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with the weights of :data:`RENAMED_WEIGHTS` under their current names."""
    out = {}
    for name, tensor in state.items():
        old = next((prefix for prefix in RENAMED_WEIGHTS if name.startswith(prefix)), None)
        out[name if old is None else RENAMED_WEIGHTS[old] + name[len(old):]] = tensor
    return out


def resolve_checkpoint(path: str | Path) -> Path:
    """A model file, a run folder (its ``best.safetensors``) or a model folder (its ``model.safetensors``,
    :func:`model_folder_weights`); ValueError naming ``path`` for none of them."""
    path = Path(path)
    if path.is_dir():
        best = path / "best.safetensors"
        if best.is_file():
            return best
        if (path / FOLDER_CONFIG).is_file():
            return model_folder_weights(path)
        raise ValueError(f"{path}: a folder without best.safetensors or {FOLDER_CONFIG}; expected a run folder, a "
                         "model folder (rleseg export) or a .safetensors file")
    if not path.exists():
        raise ValueError(f"checkpoint {path} does not exist")
    return path


def read_json_object(path: Path) -> dict:
    """A JSON file holding an object; ValueError naming the file otherwise."""
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: must be a JSON object, got {type(document).__name__}")
    return document


def model_folder_weights(folder: str | Path) -> Path:
    """The ``model.safetensors`` of a model folder, once its ``config.json`` is found to describe it: the same
    config class, config and extra as the weights' header (which is what loads, so an edited config.json
    would mislead whoever reads it). ValueError naming the file otherwise."""
    folder = Path(folder)
    weights, described = folder / FOLDER_WEIGHTS, folder / FOLDER_CONFIG
    for needed in (weights, described):
        if not needed.is_file():
            raise ValueError(f"{folder}: a model folder without its {needed.name}; copy or download the whole "
                             "folder that rleseg export wrote")
    description = read_json_object(described)
    header = checkpoint_description(weights)
    differ = [key for key in ("config_class", "config", "extra") if description.get(key) != header[key]]
    if differ:
        raise ValueError(f"{described}: its {', '.join(differ)} differ from the header of {weights}, which is what "
                         "loads; export the model again instead of editing config.json")
    return weights


def is_model_folder(folder: str | Path) -> bool:
    """Whether ``folder`` has the ``config.json`` of an rleseg model folder (its weights are not checked)."""
    try:
        description = json.loads((Path(folder) / FOLDER_CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(description, dict) and description.get("format") == FORMAT


def checkpoint_description(path: str | Path) -> dict:
    """What a model folder's ``config.json`` repeats of the checkpoint at ``path``: format and version, config
    class, config (its fields as the header's JSON holds them) and extra; checked as :func:`read_checkpoint_info`
    checks them."""
    config, extra = read_checkpoint_info(path)
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "config_class": type(config).__name__,
            "config": json.loads(_open(Path(path))[1]["config"]), "extra": extra}


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
    with atomic_path(path) as tmp:
        write_safetensors(state, tmp, metadata, path)


def write_safetensors(tensors: dict[str, torch.Tensor], tmp: Path, metadata: dict | None, path: Path) -> None:
    """safetensors' ``save_file`` of ``tensors`` to ``tmp``; its write errors (a full disk) become the OSError
    of the system's error, naming ``path`` (the file being written) as its file name."""
    try:
        save_file(tensors, str(tmp), metadata=metadata)
    except SafetensorError as err:  # "Error while serializing: I/O error: No space left on device (os error 28)"
        code = re.search(r"\(os error (\d+)\)", str(err))
        raise (OSError(int(code[1]), os.strerror(int(code[1])), str(path)) if code
               else OSError(errno.EIO, str(err), str(path))) from None


def read_checkpoint_info(path: str | Path) -> tuple[AnyModelConfig, dict]:
    """(config, extra) of a checkpoint, without reading its weights."""
    path = Path(path)
    handle, metadata = _open(path)
    config = _config(path, metadata, len(handle.keys()))[0]
    try:
        extra = json.loads(metadata.get("extra", "{}"))
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: checkpoint extra is not valid JSON ({err})") from None
    if not isinstance(extra, dict):
        raise ValueError(f"{path}: checkpoint extra must be a JSON object, got {type(extra).__name__}")
    return config, extra


def checkpoint_classes(path: str | Path) -> tuple[list[str] | None, list[list[int]] | None]:
    """(class names, (C, 3) colours) that a checkpoint stores in its ``extra``; None for what it lacks (a
    checkpoint of an older rleseg, or one saved without them: callers then name the classes "class 0" ..
    "class C-1" and draw them in the default palette)."""
    config, extra = read_checkpoint_info(path)
    count = from_dict(config.tokenizer).num_classes
    names, colours = extra.get("class_names"), extra.get("class_colours")
    if names is not None and not (isinstance(names, list) and len(names) == count
                                  and all(isinstance(n, str) for n in names)):
        raise ValueError(f"{path}: class_names in its extra must be a list of {count} names")
    if colours is not None and not (
        isinstance(colours, list) and len(colours) == count
        and all(isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
                for c in colours)):
        raise ValueError(f"{path}: class_colours in its extra must be {count} [r, g, b] triples of 0..255")
    return names, colours


def load_weights_into(model: nn.Module, path: str | Path) -> None:
    """Copy the weights of the checkpoint at ``path`` into ``model`` (what ``model.init_from`` does).

    ValueError naming ``path`` unless the checkpoint's tokenizer is the model's (the differing settings
    listed, e.g. "mask_size [16, 16] vs [32, 32]") and its weights fit the model (the differing config
    fields listed; fields that shape no weight, such as dropout, may differ)."""
    path = Path(path)
    config = read_checkpoint_info(path)[0]
    own, theirs = (json.loads(json.dumps(dataclasses.asdict(c))) for c in (model.config, config))  # tuples as lists
    if theirs["tokenizer"] != own["tokenizer"]:
        differences = _differences(theirs["tokenizer"], own["tokenizer"])
        raise ValueError(f"{path}: its tokenizer differs from this config's ({differences}, the checkpoint's "
                         "first), so its token ids would mean other things")
    source = load_checkpoint(path)
    mine = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    saved = {name: tuple(t.shape) for name, t in source.state_dict().items()}
    if type(config) is not type(model.config) or mine != saved:
        fields = _differences({k: v for k, v in theirs.items() if k != "tokenizer"},
                              {k: v for k, v in own.items() if k != "tokenizer"})
        kind = f"a {type(config).__name__}, this model a {type(model.config).__name__}; " if type(config) is not type(
            model.config) else ""
        raise ValueError(f"{path}: its weights do not fit this config's model ({kind}model fields differ: "
                         f"{fields or 'none'}, the checkpoint's first)")
    model.load_state_dict(source.state_dict())


def _differences(theirs: dict, own: dict) -> str:
    """"name a vs b, ..." for the keys whose values differ."""
    keys = sorted(k for k in theirs.keys() | own.keys() if theirs.get(k) != own.get(k))
    return ", ".join(f"{k} {theirs.get(k)} vs {own.get(k)}" for k in keys)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model saved at ``path`` (tokenizer rebuilt from the file), on ``device``, in eval mode."""
    path = Path(path)
    handle, metadata = _open(path)
    config, tokenizer = _config(path, metadata, len(handle.keys()))
    model = create_model(dataclasses.replace(config, pretrained=False), tokenizer)  # the weights come from the file
    with handle as f:
        state = renamed_weights({name: f.get_tensor(name) for name in f.keys()})
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


def _config(path: Path, metadata: dict, tensors: int) -> tuple[AnyModelConfig, MaskTokenizer]:
    """The checkpoint's config and tokenizer, checked (see the module doc); ``tensors``: how many the file
    holds."""
    try:
        return _checked_config(path, metadata, tensors)
    except RecursionError:  # JSON nested thousands of levels deep, in the config or the tokenizer within it
        raise ValueError(f"{path}: checkpoint config is nested too deeply to be a model's config") from None


def _checked_config(path: Path, metadata: dict, tensors: int) -> tuple[AnyModelConfig, MaskTokenizer]:
    try:
        fields = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: checkpoint config is missing or not valid JSON ({err})") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: checkpoint config must be a JSON object, got {type(fields).__name__}")
    try:
        config = config_from_dict(metadata.get("config_class", "ModelConfig"), fields)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if not config.tokenizer:
        raise ValueError(f"{path}: checkpoint config holds no tokenizer")
    try:
        tokenizer = from_dict(config.tokenizer)
    except (ValueError, TypeError) as err:  # the constructors' own checks, or a value of the wrong type
        raise ValueError(f"{path}: the tokenizer in its config is not valid: {err}") from None
    _check_claimed_size(path, config, tokenizer, tensors)
    return config, tokenizer


# Each transformer layer holds at least its attention's in- and out-projection and its MLP's two weights.
LAYER_TENSORS = 4


def _check_claimed_size(path: Path, config: AnyModelConfig, tokenizer: MaskTokenizer, tensors: int) -> None:
    """Refuse a config whose model would hold more values than the file can (every weight is in the file,
    and no stored value takes less than a byte), more transformer layers than the file has tensors for, or
    more memory than :func:`rleseg.limits.check_memory` allows. Counted are the tables that grow with the
    tokenizer and the sequence length (token embedding and output bias, positions) and the transformer
    layers (attention projections, 4 dim x dim, and the MLP, 2 dim x mlp_dim, each) or, for the dense model,
    the classifier (a bias and at least MIN_WIDTH weights per class), so the count is a lower bound."""
    if isinstance(config, DenseConfig):
        tables = {"classifier": (MIN_WIDTH + 1) * tokenizer.num_classes}
        claim = f"{tokenizer.num_classes:,} classes ({tokenizer!r})"
    else:
        vocab, layers = tokenizer.vocab.size, config.encoder_layers + config.decoder_layers
        tables = {"token embedding": vocab * (config.dim + 1), "positions": config.max_seq_len * config.dim,
                  "transformer layers": layers * (4 * config.dim * config.dim + 2 * config.dim * config.mlp_dim)}
        claim = (f"a vocabulary of {vocab:,} tokens ({tokenizer!r}), max_seq_len {config.max_seq_len:,}, "
                 f"dim {config.dim:,}, mlp_dim {config.mlp_dim:,} and {layers:,} transformer layers")
    values, size = sum(tables.values()), path.stat().st_size
    if values > size:
        parts = " + ".join(f"{count:,} {name}" for name, count in tables.items())
        raise ValueError(
            f"{path}: its config claims {claim}: at least {values:,} values ({parts}), "
            f"{values * 4 / 1e9:,.1f} GB as float32, more than the {size:,}-byte file can hold; the config "
            "does not belong to these weights"
        )
    if not isinstance(config, DenseConfig) and layers * LAYER_TENSORS > tensors:
        raise ValueError(f"{path}: its config claims {config.encoder_layers:,} encoder and {config.decoder_layers:,} "
                         f"decoder layers, at least {layers * LAYER_TENSORS:,} tensors, but the file holds "
                         f"{tensors:,}; the config does not belong to these weights")
    check_memory(f"{path}: the model its config describes ({claim})", values * 4)
