"""One folder of images and masks: validation never silently reads the training images; a seeded share of
the images is held out instead (data.options.val_fraction)."""

import numpy as np
import pytest
from PIL import Image

from rleseg.cli import main
from rleseg.data import build_dataset
from rleseg.experiment import build_datasets, build_tokenizer, load_config


def _folder(root, count):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        mask = rng.integers(0, 3, (32, 32)).astype(np.uint8)
        Image.fromarray(np.repeat(mask[..., None] * 80, 3, axis=-1)).save(root / "images" / f"img{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"img{i}.png")


def _config(root, *overrides):
    return load_config(None, ["data.dataset=folder", f"data.root={root}", "data.patch.patch_size=32",
                              "data.patch.factor=4", *overrides])


def _stems(dataset):
    return {stem for stem, _, _ in dataset.pairs}


def test_one_folder_without_a_held_out_share_is_refused(tmp_path):
    _folder(tmp_path, 4)
    config = _config(tmp_path)
    with pytest.raises(ValueError, match=r"no train/ folder, so training and validation would read the same images"):
        build_datasets(config, build_tokenizer(config))


def test_val_fraction_holds_out_a_seeded_share_by_image(tmp_path):
    _folder(tmp_path, 8)
    config = _config(tmp_path, "data.options={val_fraction: 0.25}")
    train, val = build_datasets(config, build_tokenizer(config))
    assert len(_stems(val)) == 2 and len(_stems(train)) == 6
    assert not _stems(train) & _stems(val) and len(_stems(train) | _stems(val)) == 8
    again = build_datasets(_config(tmp_path, "data.options={val_fraction: 0.25}", "train.seed=5"),
                           build_tokenizer(config))
    assert _stems(again[1]) == _stems(val)  # the split does not move with the training seed
    other = [_stems(build_datasets(_config(tmp_path, f"data.options={{val_fraction: 0.25, split_seed: {s}}}"),
                                   build_tokenizer(config))[1]) for s in range(1, 6)]
    assert any(stems != _stems(val) for stems in other)  # split_seed draws another share


def test_val_fraction_keeps_one_image_on_each_side_and_checks_its_range(tmp_path):
    _folder(tmp_path, 3)
    tokenizer = build_tokenizer(_config(tmp_path))
    tiny = build_dataset("folder", tokenizer, root=tmp_path, split="val", val_fraction=0.01)
    most = build_dataset("folder", tokenizer, root=tmp_path, split="train", val_fraction=0.99)
    assert tiny.num_images() == 1 and most.num_images() == 1
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\), got 1.5"):
        build_dataset("folder", tokenizer, root=tmp_path, split="val", val_fraction=1.5)


def test_split_folders_take_no_val_fraction(tmp_path):
    _folder(tmp_path / "train", 2)
    _folder(tmp_path / "val", 2)
    config = _config(tmp_path)
    train, val = build_datasets(config, build_tokenizer(config))
    assert train.root == tmp_path / "train" and val.root == tmp_path / "val"
    with pytest.raises(ValueError, match=r"has a train/ folder; val_fraction holds images out of a single folder"):
        build_datasets(_config(tmp_path, "data.options={val_fraction: 0.2}"), build_tokenizer(config))


def test_train_refuses_one_folder_in_one_line(tmp_path, capsys):
    _folder(tmp_path / "data", 4)
    code = main(["train", "synthetic-tiny", "--out", str(tmp_path / "run"), "--set", "data.dataset=folder",
                 "--set", f"data.root={tmp_path / 'data'}", "--set", "train.minutes=null", "--set", "train.steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "val_fraction" in err and "Traceback" not in err
