"""Every config value is checked before anything runs (issue 17, items 3, 4, 5 and 7): ranges in the config
dataclasses, sizes against the memory limit, ``eval.best_metric`` against the metrics of the task, config
files that are no YAML text. Through ``rleseg train`` each refusal is one line naming the key or file, exit
status 2, and no run folder."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from rleseg.cli import main
from rleseg.data import PatchConfig
from rleseg.engine import EvalConfig, PatchScores, TrainConfig, lookup
from rleseg.experiment import DataConfig, OutputConfig, build_tokenizer, load_config, metric_names
from rleseg.models import DenseConfig, ModelConfig, VideoModelConfig
from rleseg.tokens import PanopticTokenizer, Tokenizer, VideoTokenizer, video_vocab_size
from rleseg.typed_yaml import ConfigError


@pytest.fixture(autouse=True)
def default_memory_limit(monkeypatch):
    monkeypatch.delenv("RLESEG_MEMORY_LIMIT_GB", raising=False)


def refused(capsys, tmp_path, config: str, *overrides: str) -> str:
    """``rleseg train config --set ...`` in this process: exit 2, one line on stderr and nothing else, no run
    folder. Returns the message."""
    before = sorted(tmp_path.iterdir())
    argv = ["train", config, "--out", str(tmp_path / "run")]
    for item in overrides:
        argv += ["--set", item]
    code = main(argv)
    out, err = capsys.readouterr()
    assert (code, out) == (2, ""), err
    assert len(err.splitlines()) == 1 and err.startswith("rleseg: error: ") and "Traceback" not in err, err
    assert sorted(tmp_path.iterdir()) == before  # no run folder, nothing else
    return err.strip().removeprefix("rleseg: error: ")


# ----------------------------------------------------------------------------- ranges (item 4)
RANGES = [
    ("output.save_every=0", "output.save_every must be >= 1, got 0"),
    ("train.accumulate=0", "train.accumulate must be >= 1, got 0"),
    ("output.log_every=0", "output.log_every must be >= 1, got 0"),
    ("train.steps=-5", "train.steps must be >= 1, got -5"),
    ("train.minutes=-1", "train.minutes must be > 0, got -1.0"),
    ("train.minutes=0", "train.minutes must be > 0, got 0.0"),  # null is the run without a time budget
    ("eval.every=-1", "eval.every must be >= 0, got -1"),
    ("eval.max_samples=0", "eval.max_samples must be >= 1, got 0"),
    ("train.warmup_steps=-10", "train.warmup_steps must be >= 0, got -10"),
    ("output.keep_last=-1", "output.keep_last must be >= 1, got -1"),
    ("train.lr=-1", "train.lr must be > 0, got -1.0"),
    ("train.lr=.nan", "train.lr must be a finite number, got nan"),
    ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
    ("train.betas=[0.9, 1]", "train.betas must be two numbers in [0, 1), got [0.9, 1.0]"),
    ("train.min_lr_ratio=2", "train.min_lr_ratio must be >= 0 and <= 1, got 2.0"),
    ("train.grad_clip=-1", "train.grad_clip must be >= 0, got -1.0"),
    ("eval.batch_size=0", "eval.batch_size must be >= 1, got 0"),
    ("eval.decoding.top_p=0", "eval.decoding.top_p must be > 0 and <= 1, got 0.0"),
    ("eval.decoding.temperature=-0.5", "eval.decoding.temperature must be >= 0, got -0.5"),
    ("data.num_classes=1", "data.num_classes must be >= 2, got 1"),
    ("data.num_workers=-1", "data.num_workers must be >= 0, got -1"),
    ("data.num_classes=300", "data.ignore_index must not be a class (0 .. 299), got 255"),
    ("data.patch.factor=0", "data.patch.factor must be >= 1, got 0"),
    ("data.patch.patch_size=66", "data.patch.patch_size must be a multiple of factor 4, got 66"),
    ("data.patch.scale=0", "data.patch.scale must be > 0, got 0.0"),
    ("data.patch.max_angle=-5", "data.patch.max_angle must be >= 0 and <= 180, got -5.0"),
    ("data.patch.downsample=average", "data.patch.downsample must be one of 'nearest', 'mode', got 'average'"),
    ("tokenizer.max_run=0", "tokenizer.max_run must be >= 1, got 0"),
    ("model.max_seq_len=0", "model.max_seq_len must be >= 1, got 0"),
    ("model.dim=0", "model.dim must be >= 1, got 0"),
    ("model.heads=3", "model.heads must divide dim 128, got 3"),
    ("model.dropout=1", "model.dropout must be >= 0 and < 1, got 1.0"),
    ("model.label_smoothing=-0.1", "model.label_smoothing must be >= 0 and < 1, got -0.1"),
    ("model.start_head=pointers", "model.start_head must be one of auto, table, pointer, got 'pointers'"),
]


@pytest.mark.parametrize(("override", "message"), RANGES, ids=[r[0] for r in RANGES])
def test_out_of_range_values_are_refused_naming_the_key(capsys, tmp_path, override, message):
    assert refused(capsys, tmp_path, "synthetic-tiny", override) == message


def test_the_dense_and_video_sections_are_checked_too(capsys, tmp_path):
    dense = ["model.architecture=dense", "model.width=0"]
    assert refused(capsys, tmp_path, "synthetic-tiny", *dense) == "model.width must be >= 1, got 0"
    assert refused(capsys, tmp_path, "synthetic-video", "model.fusion=early") == (
        "model.fusion must be one of middle, late, static, got 'early'")
    assert refused(capsys, tmp_path, "synthetic-video", "model.reference_frame=-1") == (
        "model.reference_frame must be >= 0, got -1")
    assert refused(capsys, tmp_path, "synthetic-video", "tokenizer.frames=0") == "tokenizer.frames must be >= 1, got 0"


def test_ranges_hold_for_configs_built_in_python():
    """The checks live in the dataclasses, so code that builds a config gets them too."""
    for build, message in [
        (lambda: TrainConfig(lr=-1), "lr must be > 0, got -1"),
        (lambda: TrainConfig(minutes=0), "minutes must be > 0, got 0"),
        (lambda: EvalConfig(every=-1), "every must be >= 0, got -1"),
        (lambda: OutputConfig(save_every=0), "save_every must be >= 1, got 0"),
        (lambda: DataConfig(num_classes=1), "num_classes must be >= 2, got 1"),
        (lambda: PatchConfig(patch_size=100, factor=8), "patch_size must be a multiple of factor 8, got 100"),
        (lambda: ModelConfig(max_seq_len=0), "max_seq_len must be >= 1, got 0"),
        (lambda: VideoModelConfig(fusion="early"), "fusion must be one of middle, late, static"),
        (lambda: DenseConfig(dropout=1.5), "dropout must be >= 0 and < 1, got 1.5"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            build()


def test_minutes_null_is_no_budget_and_integral_numbers_read_as_integers():
    config = load_config("synthetic-tiny", ["train.minutes=null", "train.steps=1e4", "data.patch.factor=2.0"])
    assert (config.train.minutes, config.train.steps, config.data.patch.factor) == (None, 10000, 2)
    with pytest.raises(ConfigError, match=re.escape("train.steps must be an integer, got 1.5")):
        load_config("synthetic-tiny", ["train.steps=1.5"])


def test_every_shipped_config_passes():
    from rleseg.experiment import BUNDLED_CONFIGS

    for path in sorted(BUNDLED_CONFIGS.glob("*.yaml")):
        load_config(path)


# ----------------------------------------------------------------------------- eval.best_metric (item 3)
def test_a_best_metric_typo_is_refused_before_training(capsys, tmp_path):
    message = refused(capsys, tmp_path, "synthetic-tiny", "eval.best_metric=pooled.mean.dic")
    assert message.startswith("eval.best_metric 'pooled.mean.dic' is not a metric of semantic validation; "
                              "choose one of per_image.mean.boundary_f, per_image.mean.dice")
    assert "pooled.mean_without_background.dice" in message
    # A panoptic score is a metric of panoptic validation only.
    assert load_config("synthetic-panoptic", ["eval.best_metric=panoptic.things.pq"]).eval.best_metric
    with pytest.raises(ConfigError, match="is not a metric of semantic validation"):
        load_config("synthetic-tiny", ["eval.best_metric=panoptic.things.pq"])


@pytest.mark.parametrize("task", ["semantic", "panoptic", "video"])
def test_metric_names_are_what_a_validation_reports(task):
    """Every name ``eval.best_metric`` may take is found in the metrics of a real validation with other classes."""
    scores = PatchScores(task, 5, 255, 2, [1, 3] if task == "panoptic" else [], [2, 4] if task == "panoptic" else [])
    truth = np.random.default_rng(0).integers(0, 5, (2, 3, 8, 8) if task == "video" else (2, 8, 8))
    batch = {"mask": truth, "instances": (truth % 2) * (1 + np.arange(truth.size).reshape(truth.shape))}
    predictions = list(zip(truth, batch["instances"], strict=True)) if task == "panoptic" else list(truth)
    scores.update(predictions, {key: _Tensor(value) for key, value in batch.items()})
    metrics = scores.compute()
    names = metric_names(task)
    assert "pooled.mean_without_background.dice" in names and ("panoptic.all.pq" in names) == (task == "panoptic")
    for name in names:
        assert isinstance(lookup(metrics, name), float), name


class _Tensor:
    """What PatchScores reads of a batch entry: ``.numpy()``."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def numpy(self) -> np.ndarray:
        return self.array


# ----------------------------------------------------------------------------- sizes (item 5)
def test_sizes_that_would_exhaust_memory_are_refused_naming_value_and_size(capsys, tmp_path):
    message = refused(capsys, tmp_path, "synthetic-tiny", "data.num_classes=100000000", "data.class_names=null")
    assert message == "data.ignore_index must not be a class (0 .. 99999999), got 255"
    message = refused(capsys, tmp_path, "synthetic-tiny", "data.num_classes=100000000", "data.class_names=null",
                      "data.ignore_index=100000000")
    assert message.startswith("the validation's confusion matrix (data.num_classes 100,000,000 squared) would take "
                              "about 80.0 PB, above the limit of 64.0 GB (set RLESEG_MEMORY_LIMIT_GB")
    message = refused(capsys, tmp_path, "synthetic-tiny", "tokenizer.extent=length", "tokenizer.max_run=1e9")
    assert message == (
        "tokenizer: Tokenizer(mask_size=(16, 16), num_classes=3, scheme='lac', starts='1d', max_run=1000000000) "
        "needs a vocabulary of 2,000,000,261 tokens (lac 2,000,000,000, start 256), above max_vocab=268,435,456")
    message = refused(capsys, tmp_path, "synthetic-tiny", "tokenizer.extent=length", "data.patch.patch_size=8192",
                      "data.patch.factor=1")
    assert message.startswith("the token table (Tokenizer(mask_size=(8192, 8192), num_classes=3")
    assert "vocab_size=67125253) x model.dim 128) would take about 171.8 GB, above the limit of 64.0 GB" in message
    message = refused(capsys, tmp_path, "synthetic-tiny", "model.max_seq_len=1e10")
    assert message.startswith("the position table (model.max_seq_len 10,000,000,000 x model.dim 128) would take "
                              "about 20.5 TB")
    message = refused(capsys, tmp_path, "synthetic-tiny", "model.architecture=dense", "data.num_classes=50000",
                      "data.class_names=null", "data.ignore_index=50000")
    assert message.startswith("the logits of a batch (train.batch_size 32 x data.num_classes 50,000 x 64x64 pixels)")


def test_the_memory_limit_is_the_environment_s(monkeypatch):
    # logits of a batch: 32 x 100,000 x 293 tokens x 12 bytes = 11 GB (run lengths: the lac vocabulary)
    longer = ["tokenizer.extent=length", "model.max_seq_len=100000"]
    assert load_config("synthetic-tiny", longer).model["max_seq_len"] == 100000
    monkeypatch.setenv("RLESEG_MEMORY_LIMIT_GB", "1")
    with pytest.raises(ConfigError, match=r"^the logits of a batch \(train.batch_size 32 x model.max_seq_len 100,000 "
                                          r"x 293 tokens\) would take about 11.3 GB, above the limit of 1.0 GB"):
        load_config("synthetic-tiny", longer)


def test_tokenizers_refuse_vocabularies_and_masks_beyond_max_vocab():
    with pytest.raises(ValueError, match=re.escape("Tokenizer(mask_size=(16, 16), num_classes=100000000, scheme='lac', "
                                                   "starts='1d', max_run=16) needs a vocabulary of 1,600,000,245")):
        Tokenizer((16, 16), 100_000_000)
    with pytest.raises(ValueError, match="needs a vocabulary of 1,000,000,276 tokens"):
        PanopticTokenizer((16, 16), 1_000_000_000, [1])
    with pytest.raises(ValueError, match="decodes masks of 10,000,000,000 cells, above max_vocab=268,435,456"):
        Tokenizer((100_000, 100_000), 3, starts="2d")
    stored = Tokenizer((16, 16), 3, starts="2d").to_dict() | {"mask_size": [100_000, 100_000]}
    with pytest.raises(ValueError, match="10,000,000,000 cells"):
        Tokenizer.from_dict(stored)  # a checkpoint that claims a huge mask
    assert Tokenizer((16, 16), 3, max_vocab=300).vocab.size == 293
    with pytest.raises(ValueError, match="above max_vocab=292"):
        Tokenizer((16, 16), 3, max_vocab=292)
    # Counting tools lift the ceiling: rleseg stats sizes video vocabularies far beyond any model's.
    huge = VideoTokenizer(8, (16, 16), 20, max_vocab=sys.maxsize)
    assert huge.vocab.size == video_vocab_size(8, (16, 16), 20) > 2**38


# ----------------------------------------------------------------------------- config files (item 7)
@pytest.mark.parametrize(("content", "message"), [
    (bytes(range(128, 256)), "is not a YAML text file: byte 0x80 at offset 0 is not UTF-8"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is not a YAML text file: byte 0x89 at offset 0 is not UTF-8"),
    (b"model: {preset: tiny}\n\x00\x01\x02", "is not a YAML text file: control character #x0000 at character 22"),
    (b"train:\n  lr: [1, 2\n", "is not valid YAML: line 3, column 1: expected ',' or ']', but got '<stream end>'"),
    (b"a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n" + b"".join(
        b"%c: &%c [%s]\n" % (c + 1, c + 1, b", ".join([b"*%c" % c] * 10)) for c in b"abcde"),
     "expands to more than 100,000 values (YAML aliases?)"),
    (b"a: &a [*a]\n", "expands to more than 100,000 values"),
    (b"# " + b"x" * 2**20, "is larger than 1 MiB: not a config"),
    (b"- just\n- a list\n", "must hold a mapping of sections, got list"),
], ids=["latin-1", "png", "nul", "yaml", "billion-laughs", "self-reference", "huge", "list"])
def test_config_files_that_are_no_yaml_text_are_named(capsys, tmp_path, content, message):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    assert refused(capsys, tmp_path, str(path)).startswith(f"{path} {message}")


def test_the_command_line_refuses_in_a_subprocess(tmp_path):
    """The same refusals from the installed entry point: status 2, one line, no traceback, no run folder."""
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(np.random.default_rng(0).bytes(4096))
    for argv, message in [
        (["synthetic-tiny", "--set", "eval.best_metric=pooled.mean.dic"], "eval.best_metric 'pooled.mean.dic'"),
        ([str(binary)], f"{binary} is not a YAML text file"),
    ]:
        done = subprocess.run([sys.executable, "-m", "rleseg.cli", "train", *argv, "--out", str(tmp_path / "run")],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
        assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(f"rleseg: error: {message}")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.yaml"]


def test_tokenizer_max_vocab_is_a_yaml_key(capsys, tmp_path):
    # LTAC windows of 9 frames of 3 classes need 314,933 tokens: above the video tokenizer's default limit.
    path = tmp_path / "video.yaml"
    text = ("tokenizer: {task: video, frames: 9, temporal: tac, scheme: lac, starts: 2d%s}\n"
            "data: {dataset: synthetic_video, num_classes: 3, patch: {patch_size: 64, factor: 4}}\n")
    path.write_text(text % ", max_vocab: 400000")
    tokenizer = build_tokenizer(load_config(path))
    assert (tokenizer.vocab.size, tokenizer.max_vocab) == (314_933, 400_000)
    assert VideoTokenizer.from_dict(tokenizer.to_dict()).max_vocab == 400_000  # stored with the tokenizer
    path.write_text(text % "")
    message = refused(capsys, tmp_path, str(path))
    assert "tokenizer: VideoTokenizer(LTAC, frames=9" in message and "above max_vocab=262,144" in message
    # Lowered, it guards image tokenizers too; it must be a positive count.
    assert "above max_vocab=100" in refused(capsys, tmp_path, "synthetic-tiny", "tokenizer.max_vocab=100")
    assert "tokenizer.max_vocab" in refused(capsys, tmp_path, "synthetic-tiny", "tokenizer.max_vocab=0")
