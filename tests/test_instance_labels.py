"""Instance label maps (one id per object, 0 background) in the folder layout: ``data.options.labels:
instances`` for semantic and panoptic models, class tables, and the lines that say what to do."""

import json

import numpy as np
import pytest
import tifffile
import yaml

from rleseg.cli import main
from rleseg.data import FolderDataset, PatchConfig, instance_semantic, read_class_table
from rleseg.experiment import load_config
from rleseg.tokens import Tokenizer
from rleseg.tokens.panoptic import PanopticTokenizer
from rleseg.train import train

SIDE = 64


def _instance_folder(root, count=4, objects=6):
    """16-bit TIFF images and TIFF instance maps (ids spread over 1..60000, as label tools number them)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    maps = {}
    for i in range(count):
        ids = np.zeros((SIDE, SIDE), np.uint16)
        for k, value in enumerate(rng.choice(np.arange(1, 60000), objects, replace=False)):
            y, x = 14 * (k // 3) + 4 + rng.integers(0, 4), 20 * (k % 3) + 2 + rng.integers(0, 6)
            ids[y : y + 8, x : x + 10] = value
        image = (ids > 0).astype(np.uint16) * 3000 + rng.integers(0, 800, ids.shape, dtype=np.uint16)
        tifffile.imwrite(root / "images" / f"cells{i}.tif", image)
        tifffile.imwrite(root / "masks" / f"cells{i}.tif", ids)
        maps[f"cells{i}"] = ids
    return maps


def _overrides(root, run, *extra):
    return [
        "data.dataset=folder", f"data.root={root}", "data.num_classes=2", "data.patch.patch_size=64",
        "data.patch.factor=4", "model.preset=tiny", "model.dim=32", "model.heads=2", "model.mlp_dim=64",
        "model.max_seq_len=160", "model.encoder_layers=1", "model.decoder_layers=1", "train.steps=3",
        "train.batch_size=2", "train.warmup_steps=1", "eval.max_samples=2", "eval.batch_size=2",
        "output.tensorboard=false", "output.pictures=0", f"output.dir={run}", *extra,
    ]


def test_a_sample_holds_the_objects_as_instances_and_their_union_as_class_1(tmp_path):
    maps = _instance_folder(tmp_path)
    tokenizer = PanopticTokenizer((SIDE, SIDE), 2, thing_classes=[1])
    patch = PatchConfig(patch_size=SIDE, factor=1, stride=SIDE, downsample="nearest")
    dataset = FolderDataset(tmp_path, tokenizer, patch=patch, labels="instances")
    for item in range(len(dataset)):
        sample = dataset[item]
        ids = maps[sample["name"]]
        assert np.array_equal(sample["instances"].numpy(), ids)
        assert np.array_equal(sample["mask"].numpy(), ids > 0)
    semantic, instances = tokenizer.decode(dataset[0]["tokens"].numpy())
    assert len(np.unique(instances[instances > 0])) == 6  # every object is one decoded instance
    assert np.array_equal(semantic, maps[dataset[0]["name"]] > 0)


@pytest.mark.parametrize("task", ["semantic", "panoptic"])
def test_a_folder_of_instance_tiffs_trains(tmp_path, task):
    _instance_folder(tmp_path / "data")
    options = "data.options={labels: instances, val_fraction: 0.5}"
    panoptic = ["tokenizer.task=panoptic", "tokenizer.thing_classes=[1]", "data.patch.downsample=nearest",
                "eval.best_metric=panoptic.all.pq"] if task == "panoptic" else []
    config = load_config(None, _overrides(tmp_path / "data", tmp_path / "run", options, *panoptic))
    result = train(config, show_progress=False)
    assert result.step == 3 and len(result.losses) == 3 and all(np.isfinite(result.losses))
    assert ("pq" in result.metrics["panoptic"]["all"]) if task == "panoptic" else "panoptic" not in result.metrics


def test_without_the_option_the_error_names_it(tmp_path, capsys):
    _instance_folder(tmp_path / "data")
    config = tmp_path / "my.yaml"
    config.write_text(yaml.safe_dump({"data": {"options": {"val_fraction": 0.5}}}))
    argv = ["train", str(config), "--no-progress", "--out", str(tmp_path / "run")]
    sets = [a for o in _overrides(tmp_path / "data", tmp_path / "run") for a in ("--set", o)]
    assert main(argv + sets) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("rleseg: error: ") and "\n" not in error
    assert "cells" in error and "is outside the classes 0..1" in error and "set data.options.labels: instances" in error
    assert main([*argv, *sets, "--set", "data.options={val_fraction: 0.5, labels: instance}"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == ("rleseg: error: data.options.labels must be classes (a class per pixel) or instances (an id per "
                     "object), got 'instance'")


def test_a_panoptic_model_refuses_class_masks_up_front(tmp_path):
    _instance_folder(tmp_path)
    patch = PatchConfig(patch_size=SIDE, factor=4, downsample="nearest")
    with pytest.raises(ValueError, match="a panoptic tokenizer needs objects, which class masks do not hold: give "
                                         r"instance label maps .* set data.options.labels: instances"):
        FolderDataset(tmp_path, PanopticTokenizer((16, 16), 2, [1]), patch=patch)
    with pytest.raises(ValueError, match="reduce_zero_label is for class masks"):
        FolderDataset(tmp_path, Tokenizer((16, 16), 2), labels="instances", reduce_zero_label=True)


def test_class_tables_give_each_object_its_class(tmp_path):
    maps = _instance_folder(tmp_path, count=2)
    tokenizer = PanopticTokenizer((SIDE, SIDE), 3, thing_classes=[1, 2])
    patch = PatchConfig(patch_size=SIDE, factor=1, stride=SIDE, downsample="nearest")
    with pytest.raises(ValueError, match=r"cells0.tif: no class table cells0.json; with 3 classes each instance mask "
                                         "needs one"):
        FolderDataset(tmp_path, tokenizer, patch=patch, labels="instances")
    tables = {}
    for stem, ids in maps.items():
        objects = np.unique(ids[ids > 0])
        tables[stem] = {int(i): 1 + k % 2 for k, i in enumerate(objects)}
        (tmp_path / "masks" / f"{stem}.json").write_text(json.dumps(tables[stem]))
    dataset = FolderDataset(tmp_path, tokenizer, patch=patch, labels="instances")
    for item in range(len(dataset)):
        sample = dataset[item]
        ids, table = maps[sample["name"]], tables[sample["name"]]
        expected = np.zeros(ids.shape, np.int64)
        for value, label in table.items():
            expected[ids == value] = label
        assert np.array_equal(sample["mask"].numpy(), expected) and set(np.unique(expected)) == {0, 1, 2}
        semantic, instances = tokenizer.decode(sample["tokens"].numpy())
        assert np.array_equal(semantic, expected) and len(np.unique(instances)) == 7
    first = min(tables["cells1"])
    del tables["cells1"][first]
    (tmp_path / "masks" / "cells1.json").write_text(json.dumps(tables["cells1"]))
    with pytest.raises(ValueError, match=rf"cells1.tif: instance id {first} is not in its class table"):
        FolderDataset(tmp_path, tokenizer, patch=patch, labels="instances")[1]


def test_class_table_entries_are_checked(tmp_path):
    path = tmp_path / "t.json"
    for text, what in (('{"1": 3}', r"entry '1': 3; expected an instance id >= 1 and a class in 1..2"),
                       ('{"0": 1}', r"entry '0': 1"), ('{"a": 1}', r"entry 'a': 1"),
                       ('{"2": true}', r"entry '2': True"),
                       ("[1, 2]", "holds a list; expected a JSON object"), ("{", "cannot read the class table")):
        path.write_text(text)
        with pytest.raises(ValueError, match=what):
            read_class_table(path, 3)
    path.write_text('{"7": 2, "40000": 1}')
    assert read_class_table(path, 3) == {7: 2, 40000: 1}
    ids = np.array([[0, 7], [40000, 7]], np.uint16)
    assert np.array_equal(instance_semantic(ids, read_class_table(path, 3)), [[0, 2], [1, 2]])
    assert np.array_equal(instance_semantic(ids), [[0, 1], [1, 1]])
