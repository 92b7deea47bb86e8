"""The configs shipped in rleseg/configs: each loads, builds its tokenizer and datasets, and batches
within its max_seq_len; the panoptic configs train and report PQ."""

import numpy as np
import pytest
from PIL import Image

from rleseg.data import Collate
from rleseg.experiment import BUNDLED_CONFIGS, build_datasets, build_model_config, build_tokenizer, load_config
from rleseg.train import train
from rleseg.typed_yaml import ConfigError

CONFIGS = sorted(path.stem for path in BUNDLED_CONFIGS.glob("*.yaml"))


def test_the_expected_configs_ship():
    expected = {"paper-ipsc", "paper-video", "synthetic-tiny", "synthetic-panoptic", "synthetic-video",
                "stardist-tiny", "stardist-panoptic", "trackastra-tiny", "trackastra-video", "mni152-tiny"}
    assert expected <= set(CONFIGS)


def _ipsc_like_folder(root):
    """Two 96x96 RGB images with 3-class masks, in the folder layout paper-ipsc.yaml reads."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(2):
        mask = np.zeros((96, 96), np.uint8)
        mask[10:50, 20:70], mask[60:90, 5:40] = 1, 2
        image = (mask[..., None] * 80 + rng.integers(0, 40, (96, 96, 3))).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"cells_{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"cells_{i}.png")


def _video_like_folder(root, frames=10):
    """One sequence of 64x64 frames with 3-class masks of a moving square, in the video_folder layout."""
    for sub in ("images", "masks"):
        (root / sub / "seq0").mkdir(parents=True)
    for t in range(frames):
        mask = np.zeros((64, 64), np.uint8)
        mask[10:30, 5 + 2 * t : 25 + 2 * t], mask[40:60, 30:50] = 1, 2
        Image.fromarray((mask * 100).astype(np.uint8)).convert("RGB").save(root / "images" / "seq0" / f"f{t:03d}.png")
        Image.fromarray(mask).save(root / "masks" / "seq0" / f"f{t:03d}.png")


def _overrides(name, tmp_path):
    """What a config that reads files needs to run here (a config of files added later needs a line).
    The paper's 640-pixel patches are shrunk so that the test is fast; everything else is as shipped."""
    if name == "paper-ipsc":
        _ipsc_like_folder(tmp_path / "ipsc")
        # One folder for both splits: half of its two images held out for validation.
        return [f"data.root={tmp_path / 'ipsc'}", "data.patch.patch_size=64", "data.options={val_fraction: 0.5}"]
    if name == "paper-video":
        _video_like_folder(tmp_path / "videos")
        return [f"data.root={tmp_path / 'videos'}", "data.patch.patch_size=64", "data.patch.stride_range=null"]
    return []


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_and_batches_within_max_seq_len(name, tmp_path):
    config = load_config(name, _overrides(name, tmp_path))
    max_seq_len = build_model_config(config).max_seq_len
    tokenizer = build_tokenizer(config)
    assert tokenizer.num_classes == config.data.num_classes == len(config.class_names())
    train_set, val_set = build_datasets(config, tokenizer)
    assert len(train_set) > 0 and len(val_set) > 0
    # One training batch, its samples spread over the dataset (the first patches of a volume are its edge).
    spread = np.linspace(0, len(train_set) - 1, min(config.train.batch_size, len(train_set))).round().astype(int)
    batch = Collate(max_seq_len)([train_set[int(i)] for i in spread])
    assert batch["num_truncated"] == 0
    assert int(batch["lengths"].max()) <= max_seq_len
    side = config.data.patch.patch_size
    assert len(batch["image"]) == len(spread) and batch["image"].shape[-3:] == (3, side, side)  # [N,] 3, P, P
    # max_seq_len covers the p99 of the training sequences (what each config's comment says it measured).
    spread = np.linspace(0, len(train_set) - 1, min(200, len(train_set))).round().astype(int)
    lengths = [len(train_set[int(i)]["tokens"]) for i in spread]
    assert np.percentile(lengths, 99) <= max_seq_len
    print(f"{name}: batch lengths {int(batch['lengths'].min())}..{int(batch['lengths'].max())}, p99 of "
          f"{len(lengths)} training patches {np.percentile(lengths, 99):.0f}, max_seq_len {max_seq_len}")
    # The tokens are the masks: the first sample decodes to its subsampled mask (ignored pixels -> 0).
    decoded = tokenizer.decode(batch["tokens"][0][: int(batch["lengths"][0])].numpy())
    semantic = decoded[0] if isinstance(decoded, tuple) else decoded
    small = batch["mask_small"][0].numpy()
    np.testing.assert_array_equal(semantic, np.where(small == 255, 0, small))
    sample = val_set[0]
    assert len(sample["tokens"]) <= max_seq_len


@pytest.mark.parametrize(("name", "extra", "stuff"), [
    pytest.param("stardist-panoptic", ["data.patch.stride_range=[32, 64]"], [], id="stardist-panoptic"),
    pytest.param("synthetic-panoptic", ["data.train_options={length: 8}", "data.val_options={length: 4}"], [2],
                 id="synthetic-panoptic"),
])
def test_panoptic_config_trains_and_reports_pq(name, extra, stuff, tmp_path):
    # A model as small as tests/test_train.py's TINY, on 64-pixel patches, for two steps.
    tiny = [
        "model.dim=64", "model.heads=2", "model.mlp_dim=128", "model.encoder_layers=1", "model.decoder_layers=1",
        "data.patch.patch_size=64", "data.patch.factor=4", "train.steps=2", "train.minutes=null",
        "train.batch_size=4", "train.warmup_steps=1", "eval.max_samples=4", "eval.batch_size=4",
        "output.tensorboard=false", "output.pictures=1", f"output.dir={tmp_path / 'run'}", *extra,
    ]
    result = train(load_config(name, tiny))
    assert result.step == 2 and not result.interrupted
    panoptic = result.metrics["panoptic"]
    assert panoptic["num_images"] == 4
    assert (panoptic["config"]["thing_classes"], panoptic["config"]["stuff_classes"]) == ([1], stuff)
    for group in ("all", "things", *(["stuff"] if stuff else [])):
        assert 0.0 <= panoptic[group]["pq"] <= 1.0, group
    assert (result.run_dir / "metrics.json").is_file()


def test_bad_split_options_name_the_option():
    config = load_config("stardist-tiny", ["data.options={val_fraction: 0.25, nope: 1}"])
    with pytest.raises(ConfigError, match="nope"):
        build_datasets(config, build_tokenizer(config))
    config = load_config("stardist-tiny", ["data.options={val_side: middle}"])
    with pytest.raises(ValueError, match="val_side must be one of left, right, top, bottom"):
        build_datasets(config, build_tokenizer(config))


@pytest.mark.parametrize("name", ["synthetic-tiny", "stardist-tiny", "trackastra-tiny", "mni152-tiny"])
def test_cpu_configs_use_the_pointer_start_head(name):
    """The learning-efficiency settings (docs/results.md): 1-D starts, so that the default start head points."""
    from rleseg.experiment import build_model

    config = load_config(name)
    model = build_model(config, build_tokenizer(config))
    assert model.config.start_head == "pointer" and model.pointer is not None
    assert config.train.precision == "bf16" and config.data.patch.downsample == "mode"
