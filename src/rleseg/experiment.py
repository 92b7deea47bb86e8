"""One experiment's configuration (a YAML file) and the ``build_*`` functions that read it.

Only the functions here read the whole config; everything they build takes plain arguments. A YAML file
has the sections of :class:`ExperimentConfig`; ``model`` may name a ``preset`` ("tiny", "small",
"paper") and override any of its fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .data.patches import PatchConfig
from .engine import EvalConfig, PatchScores, TrainConfig
from .tokens import PanopticTokenizer, Tokenizer, VideoTokenizer
from .typed_yaml import ConfigError, apply_overrides, from_dict, load_yaml, to_dict


@dataclass
class TokenizerConfig:
    task: Literal["semantic", "panoptic", "video"] = "semantic"
    scheme: Literal["lac", "class", "binary"] = "lac"  # panoptic sequences always use "class" tokens
    starts: Literal["1d", "2d", "relative"] = "1d"  # relative: semantic task only
    order: Literal["C", "F"] = "C"
    max_run: int | None = None  # default: one row of the mask
    thing_classes: list[int] = field(default_factory=list)  # panoptic: classes with instances
    frames: int = 1  # video: frames per window
    temporal: Literal["volume", "tac"] = "tac"  # video: one volume, or time-as-class ids


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # a name of rleseg.data.DATASETS
    root: str | None = None  # folder of the file layouts; unused by synthetic and bundled data
    num_classes: int = 3  # background included
    class_names: list[str] | None = None  # default: class 0 .. C-1
    ignore_index: int = 255
    # The mask the tokens encode is patch_size / factor on a side (method.md section 2).
    patch: PatchConfig = field(default_factory=lambda: PatchConfig(patch_size=128, factor=4, flip=True, rot90=True))
    train_split: str = "train"
    val_split: str = "val"
    options: dict = field(default_factory=dict)  # constructor options of the dataset, both splits
    train_options: dict = field(default_factory=dict)
    val_options: dict = field(default_factory=dict)
    num_workers: int = 0


@dataclass
class OutputConfig:
    dir: str = "runs/experiment"
    log_every: int = 10  # steps between progress/TensorBoard scalars
    save_every: int = 500  # steps between checkpoints (one is always written at the end)
    keep_last: int = 2  # checkpoints kept besides the best
    tensorboard: bool = True
    pictures: int = 4  # validation samples drawn at each evaluation


@dataclass
class ExperimentConfig:
    # A preset, an architecture ("token" or "dense") and overrides of that model's config fields.
    model: dict = field(default_factory=lambda: {"preset": "tiny"})
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def class_names(self) -> list[str]:
        names = self.data.class_names or [f"class {c}" for c in range(self.data.num_classes)]
        if len(names) != self.data.num_classes:
            raise ConfigError(f"data.class_names has {len(names)} names for {self.data.num_classes} classes")
        return list(names)


BUNDLED_CONFIGS = Path(__file__).with_name("configs")


def resolve_config_path(path: str | Path) -> Path:
    """A YAML path, or the name of a config shipped with rleseg (``synthetic-tiny`` = configs/synthetic-tiny.yaml)."""
    path = Path(path)
    bundled = BUNDLED_CONFIGS / f"{path.name.removesuffix('.yaml')}.yaml"
    if not path.exists() and path.parent == Path(".") and bundled.is_file():
        return bundled
    return path


def load_config(path: str | Path | None, overrides: list[str] = ()) -> ExperimentConfig:
    """The experiment of a YAML file or bundled config name (or the defaults, for ``None``), with dotted
    overrides applied."""
    data = load_yaml(resolve_config_path(path)) if path is not None else {}
    config = from_dict(ExperimentConfig, apply_overrides(data, list(overrides)))
    build_model_config(config)  # validate the model section now, not after the data is built
    return config


def config_to_dict(config: ExperimentConfig) -> dict:
    return to_dict(config)


def build_tokenizer(config: ExperimentConfig):
    """The image, panoptic or video tokenizer of ``tokenizer.task``, for the patch's mask size."""
    mask_size, num_classes, t = config.data.patch.mask_size, config.data.num_classes, config.tokenizer
    try:
        if t.task == "panoptic":
            return PanopticTokenizer(mask_size, num_classes, t.thing_classes, t.starts, t.order, t.max_run)
        if t.task == "video":
            return VideoTokenizer(t.frames, mask_size, num_classes, t.temporal, t.scheme, t.starts, t.order, t.max_run)
        return Tokenizer(mask_size, num_classes, t.scheme, t.starts, t.order, t.max_run)
    except ValueError as error:
        raise ConfigError(f"tokenizer: {error}") from None


def build_patch_scores(config: ExperimentConfig, tokenizer) -> PatchScores:
    """The metrics of an in-training validation, for the tokenizer's task (PQ over its classes when panoptic)."""
    panoptic = tokenizer.task == "panoptic"
    return PatchScores(tokenizer.task, config.data.num_classes, config.data.ignore_index,
                       config.eval.boundary_tolerance, tokenizer.thing_classes if panoptic else (),
                       tokenizer.stuff_classes if panoptic else ())


def build_model_config(config: ExperimentConfig):
    """The config of the ``model`` section: ``architecture`` "token" (the default) gives the ModelConfig of
    ``preset`` with the section's overrides (a VideoModelConfig, with ``fusion`` and ``reference_frame``,
    for video tokenizers); "dense" gives the preset's DenseConfig with the overrides it has.

    A dense section may keep the token model's keys (``--set model.architecture=dense`` on any token
    config): they are checked as for a token model and then left out; ``dim``, if set, is the dense
    decoder's ``width``."""
    from .models import DENSE_PRESETS, PRESETS, DenseConfig, ModelConfig, VideoModelConfig
    from .models.factory import dense_fields

    section = dict(config.model)
    preset = section.pop("preset", "tiny")
    architecture = section.pop("architecture", "token")
    if preset not in PRESETS:
        raise ConfigError(f"model.preset must be one of {', '.join(sorted(PRESETS))}, got {preset!r}")
    if architecture not in ("token", "dense"):
        raise ConfigError(f"model.architecture must be 'token' or 'dense', got {architecture!r}")
    token_kind = VideoModelConfig if config.tokenizer.task == "video" else ModelConfig
    # Every key but a dense model's own is checked as a token model's, so a key neither knows is named.
    dense_only = {f.name for f in dataclasses.fields(DenseConfig)} - {f.name for f in dataclasses.fields(token_kind)}
    token_section = {k: v for k, v in section.items() if not (architecture == "dense" and k in dense_only)}
    model_config = from_dict(token_kind, {**to_dict(PRESETS[preset]), **token_section}, "model")
    if architecture == "dense":
        model_config = from_dict(DenseConfig, {**to_dict(DENSE_PRESETS[preset]), **dense_fields(section)}, "model")
    return dataclasses.replace(model_config, image_size=config.data.patch.patch_size)


def build_model(config: ExperimentConfig, tokenizer: Tokenizer):
    """The model of the ``model`` section (:func:`build_model_config`) for ``tokenizer``."""
    from .models import create_model

    return create_model(build_model_config(config), tokenizer)


def build_datasets(config: ExperimentConfig, tokenizer: Tokenizer):
    """(train, validation) datasets. Validation patches keep size and factor but drop augmentation."""
    from .data import build_dataset

    data, seed = config.data, config.train.seed
    val_patch = dataclasses.replace(PatchConfig(), patch_size=data.patch.patch_size, factor=data.patch.factor,
                                    downsample=data.patch.downsample, scale=data.patch.scale)
    common = {"root": data.root, **data.options}
    try:
        # Validation draws from another seed: generated datasets would otherwise repeat the training scenes.
        train = build_dataset(
            data.dataset, tokenizer, split=data.train_split, patch=data.patch, seed=seed,
            **common, **data.train_options,
        )
        val = build_dataset(
            data.dataset, tokenizer, split=data.val_split, patch=val_patch, seed=seed + 7919,
            **common, **data.val_options,
        )
    except TypeError as error:
        raise ConfigError(f"data.options: {error}") from None
    return train, val
