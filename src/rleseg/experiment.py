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

from .config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from .data.patches import PatchConfig
from .engine import EvalConfig, TrainConfig
from .tokens import PanopticTokenizer, Tokenizer, VideoTokenizer


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
    model: dict = field(default_factory=lambda: {"preset": "tiny"})  # a preset plus ModelConfig overrides
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


def build_meters(config: ExperimentConfig, tokenizer):
    from .engine import Meters

    return Meters(tokenizer.task, config.data.num_classes, config.data.ignore_index,
                  config.eval.boundary_tolerance, getattr(tokenizer, "thing_classes", ()),
                  getattr(tokenizer, "stuff_classes", ()))


def build_model_config(config: ExperimentConfig):
    """The ModelConfig of ``model.preset`` with the section's overrides; a VideoModelConfig (``fusion``,
    ``reference_frame``) for video tokenizers."""
    from .models import PRESETS, ModelConfig, VideoModelConfig

    section = dict(config.model)
    preset = section.pop("preset", "tiny")
    if preset not in PRESETS:
        raise ConfigError(f"model.preset must be one of {', '.join(sorted(PRESETS))}, got {preset!r}")
    base = to_dict(PRESETS[preset])
    base.update(section)
    kind = VideoModelConfig if config.tokenizer.task == "video" else ModelConfig
    model_config = from_dict(kind, base, "model")
    return dataclasses.replace(model_config, image_size=config.data.patch.patch_size)


def build_model(config: ExperimentConfig, tokenizer: Tokenizer):
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
