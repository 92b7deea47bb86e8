"""Building models: the presets, ``create_model`` for every architecture, and configs read back from files.

The config's class picks the model (``MODELS``): a ModelConfig gives a :class:`Pix2Seq` (image tokens), a
VideoModelConfig a :class:`VideoPix2Seq` (the tokens of a window of frames), a DenseConfig the dense
baseline :class:`DenseModel` (per-pixel logits). A preset name stands for its ModelConfig, and a
ModelConfig meets a video tokenizer as the VideoModelConfig with the same fields::

    >>> model = create_model("tiny", Tokenizer((32, 32), num_classes=3))             # Pix2Seq
    >>> model = create_model("tiny", VideoTokenizer(2, (16, 16), 3), fusion="late")  # VideoPix2Seq
    >>> model = create_model(DENSE_PRESETS["tiny"], Tokenizer((32, 32), 3))         # DenseModel
"""

from __future__ import annotations

import dataclasses
import math

from rleseg.tokens import MaskTokenizer, from_dict
from rleseg.typed_yaml import ConfigError
from rleseg.typed_yaml import from_dict as typed_from_dict

from .backbone import check_backbone_kwargs
from .config import ModelConfig
from .dense import DenseConfig, DenseModel
from .pix2seq import Pix2Seq
from .video import VideoModelConfig, VideoPix2Seq

PRESETS = {
    "paper": ModelConfig(),
    "small": ModelConfig(
        backbone="resnet18", image_size=256, dim=256, heads=8, mlp_dim=1024, encoder_layers=2, decoder_layers=2
    ),
    "tiny": ModelConfig(
        backbone="resnet10t", image_size=128, dim=128, heads=4, mlp_dim=512, encoder_layers=2, decoder_layers=2,
        max_seq_len=256,
    ),
}
# The dense baseline of each preset: the same backbone and input size, the token model's width.
DENSE_PRESETS = {
    name: DenseConfig(backbone=c.backbone, image_size=c.image_size, width=c.dim) for name, c in PRESETS.items()
}

MODELS = {ModelConfig: Pix2Seq, VideoModelConfig: VideoPix2Seq, DenseConfig: DenseModel}
# Config fields of features retired because they measured no help (docs/results.md; commit a540f6c has them):
# a checkpoint that has one at this value loads without it, any other value is refused.
RETIRED_FIELDS = {"pyramid_memory": False}
AnyModelConfig = ModelConfig | VideoModelConfig | DenseConfig


def create_model(
    config: str | AnyModelConfig, tokenizer: MaskTokenizer | None = None, **changes
) -> Pix2Seq | DenseModel:
    """The model of a preset name ("tiny", "small", "paper") or a config, for ``tokenizer``.

    ``tokenizer`` may be omitted when the config already holds one (``config.tokenizer``, its
    ``to_dict()``); the model's config stores the tokenizer's ``to_dict()`` either way. ``changes``
    override config fields, e.g. ``fusion="late"`` for a video model.
    """
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown model preset {config!r}; choose one of {sorted(PRESETS)}")
        config = PRESETS[config]
    if type(config) not in MODELS:
        raise ValueError(f"config must be a preset name or one of {', '.join(c.__name__ for c in MODELS)}, "
                         f"got {type(config).__name__}")
    if tokenizer is None:
        if config.tokenizer is None:
            raise ValueError("no tokenizer: pass one, or a config whose tokenizer field is set")
        tokenizer = from_dict(config.tokenizer)
    if type(config) is ModelConfig and tokenizer.task == "video":
        config = VideoModelConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(ModelConfig)})
    config = dataclasses.replace(config, tokenizer=tokenizer.to_dict(), **changes)
    if isinstance(config, ModelConfig):
        config = resolve_start_head(config, tokenizer)
    return MODELS[type(config)](config, tokenizer)


def config_from_dict(config_class: str, fields: dict) -> AnyModelConfig:
    """The config a checkpoint describes: ``config_class`` names one of MODELS' configs, ``fields`` are its
    ``dataclasses.asdict``. Older files load too: a dense model saved as a ModelConfig with ``head``
    "dense" (its width in ``dim``), a token model with ``head`` "token", one saved before start heads
    existed (no ``start_head``: the plain table). Values are type-checked as a YAML config's are, and
    ``backbone_kwargs`` against the allow-list: a ValueError names the key ("config.dim must be an
    integer, got 'abc'")."""
    classes = {cls.__name__: cls for cls in MODELS}
    if config_class not in classes:
        raise ValueError(f"unknown model config class {config_class!r}; expected one of {', '.join(classes)}")
    fields = dict(fields)
    for name, off in RETIRED_FIELDS.items():
        if fields.pop(name, off) != off:
            raise ValueError(f"checkpoint config has {name} on, a feature retired after rleseg commit a540f6c "
                             "(it measured no help, docs/results.md); load it with that rleseg")
    if fields.pop("head", "token") == "dense":
        config_class, fields = "DenseConfig", dense_fields(fields)
    cls = classes[config_class]
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"checkpoint config has unknown fields {unknown}")
    if cls is not DenseConfig:
        fields.setdefault("start_head", "table")
    config = typed_from_dict(cls, fields, "config")
    try:
        check_backbone_kwargs(config.backbone_kwargs)
    except ValueError as err:
        raise ConfigError(f"config.{err}") from None
    return config


def dense_fields(fields: dict) -> dict:
    """A token model's config fields as a dense model's: ``dim`` becomes ``width`` (unless ``width`` is
    there too) and the fields only a token model has are left out. Fields neither has stay, for the
    caller to refuse."""
    token_only = token_only_fields()
    out = {k: v for k, v in fields.items() if k not in token_only}
    if "dim" in fields:
        out.setdefault("width", fields["dim"])
    return out


def token_only_fields() -> set[str]:
    """The fields of a token model's config (a video model's included) that a dense model's lacks: ``dim``
    (a dense model's ``width``) and what only tokens use (sequence length, start head, refiner, ...)."""
    return {f.name for f in dataclasses.fields(VideoModelConfig)} - {f.name for f in dataclasses.fields(DenseConfig)}


# ----------------------------------------------------------------------------- the start head
def start_cells(tokenizer: MaskTokenizer) -> int:
    """The cells a start token can point at: the mask's, and for a video volume every frame's (a start is
    a (frame, cell) pair; a TAC start is a cell of the one TAC map)."""
    frames = tokenizer.frames if getattr(tokenizer, "temporal", None) == "volume" else 1
    return frames * math.prod(tokenizer.mask_size)


def has_start_per_cell(tokenizer: MaskTokenizer) -> bool:
    """Whether a tokenizer writes one start token per start cell (1-D starts, :func:`start_cells`): what
    the pointer start head needs. Image, panoptic and video (TAC and volume) tokenizers can."""
    start = tokenizer.vocab.ranges.get("start")
    return start is not None and start.size == start_cells(tokenizer)


def resolve_start_head(config: ModelConfig, tokenizer: MaskTokenizer) -> ModelConfig:
    """start_head "auto" -> "pointer" where :func:`has_start_per_cell`, else "table"; then checks that the
    tokenizer suits the start head and the auxiliary loss. The resolved head is what a checkpoint stores,
    so a model saved with "auto" resolved to "table" (as every video model before the video pointer) loads
    as "table"."""
    if config.start_head == "auto":
        config = dataclasses.replace(config, start_head="pointer" if has_start_per_cell(tokenizer) else "table")
    if config.start_head == "pointer" and not has_start_per_cell(tokenizer):
        raise ValueError("start_head 'pointer' needs 1-D starts (one start token per mask cell); "
                         f"the tokenizer has starts={tokenizer.starts!r}")
    if config.aux_dense_weight > 0 and tokenizer.task not in ("semantic", "panoptic"):
        raise ValueError(f"aux_dense_weight needs an image tokenizer, got task {tokenizer.task!r}")
    return config
