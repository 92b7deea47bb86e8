"""One experiment's configuration (a YAML file) and the ``build_*`` functions that read it.

Only the functions here read the whole config; everything they build takes plain arguments. A YAML file
has the sections of :class:`ExperimentConfig`; ``model`` may name a ``preset`` ("tiny", "small",
"paper") and override any of its fields, and ``init_from`` a checkpoint or run folder whose weights the
new run starts from (:func:`init_checkpoint`). (A little over 400 lines: every reader of the whole config
is here, so that no other module needs to know its shape.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .data.patches import PatchConfig
from .engine import EvalConfig, PatchScores, TrainConfig
from .imageio import Normalization
from .limits import check_memory
from .tokens import BandTokenizer, PanopticTokenizer, PerClassTokenizer, Tokenizer, VideoTokenizer
from .typed_yaml import ConfigError, apply_overrides, check_range, from_dict, load_yaml, to_dict


@dataclass
class TokenizerConfig:
    task: Literal["semantic", "panoptic", "video"] = "semantic"
    # per_class (semantic task): one binary sequence per foreground class, decoded in parallel. Panoptic
    # sequences always use "class" tokens.
    scheme: Literal["lac", "class", "binary", "per_class"] = "lac"
    starts: Literal["1d", "2d"] = "1d"
    # How a run's extent is written: its length (the paper) or "end", its last cell as a flat index, which
    # the pointer head chooses from the image like a start (needs 1-D starts; schemes lac, class, binary).
    extent: Literal["length", "end"] = "length"
    # Semantic task, 1-D starts: the scan lines cut into this many bands, one sequence each, decoded in
    # parallel as rows of one batch (about that many times fewer decoding steps an image; tokens/bands.py).
    bands: int = 1
    order: Literal["C", "F"] = "C"
    max_run: int | None = None  # default: one row of the mask
    thing_classes: list[int] = field(default_factory=list)  # panoptic: classes with instances
    frames: int = 1  # video: frames per window
    temporal: Literal["volume", "tac"] = "tac"  # video: one volume, or time-as-class ids
    # Refuse vocabularies (and masks of more cells) above this; None: the tokenizer's own limit, 262,144 for
    # video (stored with it), 2**28 for image and panoptic tokenizers (reloaded under that limit).
    max_vocab: int | None = None

    def __post_init__(self) -> None:
        check_range(self, 1, None, "max_run", "frames", "max_vocab", "bands")


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # a name of rleseg.data.DATASETS
    root: str | None = None  # folder of the file layouts; unused by synthetic and bundled data
    num_classes: int = 3  # background included
    class_names: list[str] | None = None  # default: class 0 .. C-1
    ignore_index: int = 255
    # The mask the tokens encode is patch_size / factor on a side (docs/method.md section 2).
    patch: PatchConfig = field(default_factory=lambda: PatchConfig(patch_size=128, factor=4, flip=True, rot90=True))
    train_split: str = "train"
    val_split: str = "val"
    options: dict = field(default_factory=dict)  # constructor options of the dataset, both splits
    train_options: dict = field(default_factory=dict)
    val_options: dict = field(default_factory=dict)
    num_workers: int = 0  # DataLoader worker processes; 0 loads in the training process
    # How image values become [0, 1] (folder and video_folder data); checkpoints store it for predict/evaluate
    normalize: Normalization = field(default_factory=Normalization)

    def __post_init__(self) -> None:
        check_range(self, 2, None, "num_classes")
        check_range(self, 0, None, "ignore_index", "num_workers")
        if self.ignore_index < self.num_classes:  # its pixels would be scored as that class's, or not at all
            raise ValueError(f"ignore_index must not be a class (0 .. {self.num_classes - 1}), got {self.ignore_index}")


@dataclass
class OutputConfig:
    dir: str = "runs/experiment"
    log_every: int = 10  # steps between progress/TensorBoard scalars
    save_every: int = 500  # steps between checkpoints (one is always written at the end)
    keep_last: int = 2  # checkpoints kept besides the best
    tensorboard: bool = True
    pictures: int = 4  # validation samples drawn at each evaluation

    def __post_init__(self) -> None:
        check_range(self, 1, None, "log_every", "save_every", "keep_last")
        check_range(self, 0, None, "pictures")


@dataclass
class ExperimentConfig:
    # A preset, an architecture ("token" or "dense") and overrides of that model's config fields; init_from: a
    # checkpoint or run folder (its best.safetensors) whose weights a new run starts from (same tokenizer).
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


# Keys of configs written before the decoding settings became eval.decoding and the features that measured
# no help were retired (commit a540f6c): (section, key) -> where it moved, or the only value it may still hold.
MOVED_KEYS = {("eval", key): "decoding" for key in ("temperature", "top_p", "constrained", "refine")}
RETIRED_KEYS = {("eval", "eos_by_mass"): False, ("model", "pyramid_memory"): False}


def upgraded(data: dict, source: str) -> dict:
    """A config file's mapping in the current layout: the keys of MOVED_KEYS moved, those of RETIRED_KEYS
    dropped at their only value and refused (ConfigError naming the key and ``source``) at any other."""
    data = {name: dict(section) if isinstance(section, dict) else section for name, section in data.items()}
    for (name, key), value in RETIRED_KEYS.items():
        section = data.get(name)
        if isinstance(section, dict) and key in section and section.pop(key) != value:
            raise ConfigError(f"{source}: {name}.{key} was retired after rleseg commit a540f6c (it measured no "
                              "help, docs/results.md); remove it, or run that rleseg")
    for (name, key), into in MOVED_KEYS.items():
        section = data.get(name)
        if isinstance(section, dict) and key in section:
            moved = section.setdefault(into, {})
            if isinstance(moved, dict):
                moved.setdefault(key, section.pop(key))
    return data


def load_config(path: str | Path | None, overrides: list[str] = (), keep_token_settings: bool = False
                ) -> ExperimentConfig:
    """The experiment of a YAML file or bundled config name (or the defaults, for ``None``), with dotted
    overrides applied, checked by :func:`validate_config`. A file in an older layout is read in the current
    one (:func:`upgraded`).

    A dense model (``model.architecture: dense``) writes no tokens: the overrides that turn a token config
    into a dense one leave out the file's :func:`token_settings`, and a token setting given with the dense
    architecture itself (in a dense file, or in the overrides) is refused, naming the key.
    ``keep_token_settings`` keeps and accepts the file's: a run folder's config.yaml, as older rleseg wrote
    it for dense runs, and configs read for their data only."""
    data = upgraded(load_yaml(resolve_config_path(path)), str(path)) if path is not None else {}
    config = from_dict(ExperimentConfig, apply_overrides(data, list(overrides)))
    if config.model.get("architecture") == "dense" and not keep_token_settings:
        switched = not isinstance(data.get("model"), dict) or data["model"].get("architecture") != "dense"
        if switched:
            data = _without_token_settings(data)
            config = from_dict(ExperimentConfig, apply_overrides(data, list(overrides)))
    validate_config(config)
    if config.model.get("architecture") == "dense":
        kept = token_settings(from_dict(ExperimentConfig, data)) if keep_token_settings else {}
        refused = [(key, value) for key, value in token_settings(config).items() if kept.get(key, ...) != value]
        if refused:
            key, value = refused[0]
            raise ConfigError(f"{key} {value!r} is a setting of token models, and model.architecture is dense (it "
                              "writes no tokens, so would ignore it): remove it")
    return config


# What only a token model reads besides the model keys a dense model lacks (:func:`token_settings`).
TOKEN_SETTINGS = {"tokenizer": ("scheme", "starts", "extent", "bands", "order", "max_run"), "eval": ("decoding",)}


def token_settings(config: ExperimentConfig) -> dict[str, object]:
    """``{dotted key: value}``: the token-model settings that ``config`` gives other than their defaults (model
    keys against the preset's values, the others against the dataclasses'): what a dense model would ignore.
    The model keys must be valid (:func:`validate_config` checks them first)."""
    from .models import PRESETS, VideoModelConfig
    from .models.factory import token_only_fields

    model = {key: value for key, value in config.model.items() if key in token_only_fields() - {"dim"}}
    preset = to_dict(PRESETS[config.model.get("preset", "tiny")])
    typed, default = from_dict(VideoModelConfig, {**preset, **model}), from_dict(VideoModelConfig, preset)
    found = {f"model.{key}": value for key, value in model.items() if getattr(typed, key) != getattr(default, key)}
    sections = [("tokenizer", config.tokenizer, TOKEN_SETTINGS["tokenizer"]),
                ("eval.decoding", config.eval.decoding, [f.name for f in dataclasses.fields(config.eval.decoding)])]
    for name, section, keys in sections:
        values, blank = vars(section), vars(type(section)())
        found |= {f"{name}.{key}": values[key] for key in keys if values[key] != blank[key]}
    return found


def _without_token_settings(data: dict) -> dict:
    """A config file's mapping without its token settings (:func:`token_settings`' keys): what is left of a
    token config when the overrides make its model dense."""
    from .models.factory import token_only_fields

    drop = {"model": token_only_fields() - {"dim"}, **TOKEN_SETTINGS}
    return {name: {key: value for key, value in section.items() if key not in drop.get(name, ())}
            if isinstance(section, dict) else section for name, section in data.items()}


def validate_config(config: ExperimentConfig) -> None:
    """ConfigError naming the key for what the dataclasses cannot check alone, so that a run stops on a typo
    before its first step, not after training: the model section, the tokenizer, the class names, the
    memory of the parts that grow with the sizes, and ``eval.best_metric`` against the metrics the
    validation reports. :func:`load_config` calls it; call it on a config built in Python."""
    model_config = build_model_config(config)
    init_checkpoint(config)
    classes = config.data.num_classes
    # First: the class names and a panoptic tokenizer's list of stuff classes take time in the classes too.
    _within_limit([(f"the validation's confusion matrix (data.num_classes {classes:,} squared)", 8 * classes**2)])
    config.class_names()
    tokenizer = build_tokenizer(config)
    if config.eval.decoding.earliest_instance and tokenizer.task != "panoptic":
        raise ConfigError("eval.decoding.earliest_instance is for panoptic models; tokenizer.task is "
                          f"{tokenizer.task!r}")
    _within_limit(memory_parts(config, model_config, tokenizer))
    names = metric_names(tokenizer.task)
    if config.eval.best_metric not in names:
        raise ConfigError(f"eval.best_metric {config.eval.best_metric!r} is not a metric of {tokenizer.task} "
                          f"validation; choose one of {', '.join(names)}")


def memory_parts(config: ExperimentConfig, model_config, tokenizer) -> list[tuple[str, int]]:
    """(what, bytes) of the parts of a training run whose size the config sets, for ``rleseg.limits``: a
    batch of images and masks (float32 RGB, int64 labels), the model's token and position tables with their
    gradients and AdamW moments (16 bytes a weight; the start geometry adds 4 a token), the float32 logits
    of a batch with their gradient and the loss's softmax (12 bytes a logit). Backbone and attention come
    on top."""

    batch, side, classes = config.train.batch_size, config.data.patch.patch_size, config.data.num_classes
    frames = tokenizer.frames if tokenizer.task == "video" else 1
    patches = f"train.batch_size {batch}{f' x {frames} frames' if frames > 1 else ''}"
    parts = [(f"a batch of {patches} patches of data.patch.patch_size {side}", 20 * batch * frames * side**2)]
    if model_config.max_seq_len is None:  # the dense model: logits per pixel, no tokens
        return [*parts, (f"the logits of a batch ({patches} x data.num_classes {classes:,} x {side}x{side} pixels)",
                         12 * batch * frames * classes * side**2)]
    vocab, dim, length = tokenizer.vocab.size, model_config.dim, model_config.max_seq_len
    rows = len(tokenizer.prompts)  # token rows a patch becomes: one, or one per foreground class / band
    sequences = f"train.batch_size {batch}{f' x {rows} sequences a patch' if rows > 1 else ''}"
    return [
        *parts,
        (f"the token table ({tokenizer!r} x model.dim {dim})", 20 * vocab * dim),
        (f"the position table (model.max_seq_len {length:,} x model.dim {dim})", 16 * length * dim),
        (f"the logits of a batch ({sequences} x model.max_seq_len {length:,} x {vocab:,} tokens)",
         12 * batch * rows * length * vocab),
    ]


def _within_limit(parts: list[tuple[str, int]]) -> None:
    try:
        for what, size in parts:
            check_memory(what, size)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def metric_names(task: str) -> list[str]:
    """The dotted names of the scores a validation of ``task`` reports (what ``eval.best_metric`` may name);
    they do not depend on the classes, so two stand in for them."""
    scores = PatchScores(task, 2, None, 0, [1] if task == "panoptic" else [], [])
    return sorted(_score_paths(scores.compute()))


def _score_paths(metrics: dict, prefix: str = "") -> list[str]:
    """The dotted paths of the scores in a metrics dict: its numbers, without the config and the counts."""
    paths = []
    for key, value in metrics.items():
        if isinstance(value, dict) and key != "config":
            paths += _score_paths(value, f"{prefix}{key}.")
        elif not isinstance(value, dict | list) and key not in ("num_images", "num_videos", "n", "pixel_pairs"):
            paths.append(prefix + key)
    return paths


def config_to_dict(config: ExperimentConfig) -> dict:
    return to_dict(config)


def build_tokenizer(config: ExperimentConfig):
    """The image (per-class with scheme "per_class", band sequences with bands > 1), panoptic or video
    tokenizer of ``tokenizer.task``, for the patch's mask size."""
    mask_size, num_classes, t = config.data.patch.mask_size, config.data.num_classes, config.tokenizer
    limit = {} if t.max_vocab is None else {"max_vocab": t.max_vocab}
    try:
        if t.extent != "length" and (t.task != "semantic" or t.scheme == "per_class"):
            raise ValueError(f"extent {t.extent!r} is for the semantic image tokenizer (schemes lac, class, binary), "
                             f"not task {t.task!r} with scheme {t.scheme!r}")
        if t.bands > 1 and (t.task != "semantic" or t.scheme == "per_class" or t.starts != "1d"):
            raise ValueError(f"bands > 1 is for the semantic image tokenizer with 1-D starts, not task {t.task!r} "
                             f"with scheme {t.scheme!r} and starts {t.starts!r}")
        if t.task == "panoptic":
            return PanopticTokenizer(mask_size, num_classes, t.thing_classes, t.starts, t.order, t.max_run, **limit)
        if t.task == "video":
            return VideoTokenizer(t.frames, mask_size, num_classes, t.temporal, t.scheme, t.starts, t.order, t.max_run,
                                  **limit)
        if t.scheme == "per_class":
            return PerClassTokenizer(mask_size, num_classes, t.starts, t.order, t.max_run, **limit)
        if t.bands > 1:
            return BandTokenizer(mask_size, num_classes, t.scheme, t.order, t.max_run, t.extent, t.bands, **limit)
        return Tokenizer(mask_size, num_classes, t.scheme, t.starts, t.order, t.max_run, t.extent, **limit)
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
    section.pop("init_from", None)  # not a field of the model: where its first weights come from
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
    patch = config.data.patch.patch_size
    if section.get("image_size", patch) != patch:
        raise ConfigError(f"model.image_size {section['image_size']} differs from data.patch.patch_size {patch}: "
                          "the model's input is the patch; leave model.image_size out")
    return dataclasses.replace(model_config, image_size=patch)


def init_checkpoint(config: ExperimentConfig) -> Path | None:
    """The checkpoint file that ``model.init_from`` names (a run folder gives its best.safetensors), or None.

    ConfigError naming the key when it is not a string or names no checkpoint."""
    from .models import resolve_checkpoint

    source = config.model.get("init_from")
    if source is None:
        return None
    if not isinstance(source, str) or not source:
        raise ConfigError(f"model.init_from must be the path of a checkpoint or run folder, got {source!r}")
    try:
        return resolve_checkpoint(source)
    except ValueError as error:
        raise ConfigError(f"model.init_from: {error}") from None


def build_model(config: ExperimentConfig, tokenizer: Tokenizer):
    """The model of the ``model`` section (:func:`build_model_config`) for ``tokenizer``, to train.

    ConfigError naming ``model.pretrained`` for a frozen backbone that no weights reach (neither
    ``pretrained`` nor ``init_from``): its random weights would stay fixed for the whole run."""
    from .models import create_model

    model_config = build_model_config(config)
    if model_config.freeze_backbone and not model_config.pretrained and config.model.get("init_from") is None:
        raise ConfigError("model.pretrained is false, so model.freeze_backbone: true would keep a randomly "
                          "initialised backbone fixed for the whole run; give model.pretrained (true: timm's "
                          "cache, packaged, or a weights file) or model.init_from, or set model.freeze_backbone: false")
    return create_model(model_config, tokenizer)


def build_datasets(config: ExperimentConfig, tokenizer: Tokenizer):
    """(train, validation) datasets. Validation patches keep size and factor but drop augmentation."""
    from .data import build_dataset

    data = config.data
    try:
        train = build_dataset(
            data.dataset, tokenizer, split=data.train_split, patch=data.patch, seed=config.train.seed,
            **_dataset_options(config), **data.train_options,
        )
    except TypeError as error:
        raise ConfigError(f"data.options: {error}") from None
    return train, build_plain_dataset(config, tokenizer, data.val_split, data.val_options)


def build_plain_dataset(config: ExperimentConfig, tokenizer: Tokenizer, split: str, options: dict | None = None):
    """The ``split`` of the config's dataset in patches of its size and factor, without augmentation (what
    validation reads; ``options``: that split's own data options)."""
    from .data import build_dataset

    data = config.data
    patch = dataclasses.replace(PatchConfig(), patch_size=data.patch.patch_size, factor=data.patch.factor,
                                downsample=data.patch.downsample, scale=data.patch.scale)
    try:
        # Another seed than training's: generated datasets would otherwise repeat the training scenes.
        return build_dataset(data.dataset, tokenizer, split=split, patch=patch, seed=config.train.seed + 7919,
                             **_dataset_options(config), **(options or {}))
    except TypeError as error:
        raise ConfigError(f"data.options: {error}") from None


def _dataset_options(config: ExperimentConfig) -> dict:
    data = config.data
    return {"root": data.root, "normalization": data.normalize, **data.options}
