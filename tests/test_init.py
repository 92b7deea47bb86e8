"""``rleseg init``: what it reads from a data folder, the config it writes, and a fresh folder of instance-labelled
TIFFs through init, train, evaluate and predict with no edits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from rleseg.cli import main
from rleseg.experiment import load_config
from rleseg.init import find_layout, label_shapes, survey

SIZE = (96, 128)


def write_folder(root: Path, files: int = 5, instances: bool = True, seed: int = 0, suffix: str = "_mask") -> Path:
    """16-bit TIFF images of bright discs; masks with one id per disc (or two classes of discs)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[: SIZE[0], : SIZE[1]]
    for f in range(files):
        labels = np.zeros(SIZE, np.uint16)
        for obj in range(1, 9):
            cy, cx, r = rng.integers(8, SIZE[0] - 8), rng.integers(8, SIZE[1] - 8), rng.integers(4, 8)
            labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (labels == 0)] = 40 + obj if instances else 1 + obj % 2
        image = (rng.normal(800, 60, SIZE) + 2000 * (labels > 0)).clip(0, 65535).astype(np.uint16)
        tifffile.imwrite(root / "images" / f"cell_{f:03d}.tif", image)
        tifffile.imwrite(root / "masks" / f"cell_{f:03d}{suffix}.tif", labels)
    return root


def test_label_shapes_measures_ids_fills_and_row_runs():
    mask = np.zeros((6, 8), np.int64)
    mask[1:3, 1:4] = 7  # a full 2x3 box
    mask[4, 0:2] = 9  # an L: 3 of the 2x2 box
    mask[5, 0] = 9
    present, fill, widths = label_shapes(mask)
    assert present.tolist() == [7, 9]
    assert fill.tolist() == [1.0, 0.75]
    assert sorted(widths.tolist()) == [1, 2, 3, 3]
    assert [a.size for a in label_shapes(np.zeros((3, 3), np.int64))] == [0, 0, 0]


def test_survey_tells_instance_ids_from_classes(tmp_path):
    found = survey(write_folder(tmp_path / "ids"))
    assert found.instances and found.num_classes == 2 and "object ids" in found.evidence
    assert found.layout.mask_suffix == "_mask" and len(found.layout.pairs) == 5 and not found.layout.splits
    assert found.dtype == "uint16" and found.sides == (96, 128) and found.frames == 5
    assert 5 <= found.object_width <= 14
    assert set(found.fidelity) == {2, 4, 8} and found.fidelity[2] > found.fidelity[8]

    classes = survey(write_folder(tmp_path / "classes", instances=False))
    assert not classes.instances and classes.num_classes == 3 and "classes" in classes.evidence
    assert survey(tmp_path / "classes", labels="instances").instances


def test_find_layout_reads_splits_and_names_what_is_missing(tmp_path):
    write_folder(tmp_path / "split" / "train", suffix="")
    with pytest.raises(ValueError, match="has train/ but no val/"):
        find_layout(tmp_path / "split")
    write_folder(tmp_path / "split" / "val", files=2, suffix="")
    layout = find_layout(tmp_path / "split")
    assert layout.splits and layout.mask_suffix == "" and len(layout.pairs) == 5

    root = write_folder(tmp_path / "gap")
    (root / "masks" / "cell_002_mask.tif").unlink()
    with pytest.raises(ValueError, match=r"cell_002.tif: no mask .* \(1 of 5 images lack one\)"):
        find_layout(root)
    with pytest.raises(ValueError, match="expected images/ and masks/"):
        find_layout(tmp_path / "nowhere")


def test_written_config_loads_as_written_with_a_reason_on_each_choice(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_folder(tmp_path / "cells")
    assert main(["init", "cells", "--minutes", "2"]) == 0
    assert "wrote cells.yaml" in capsys.readouterr().out
    text = (tmp_path / "cells.yaml").read_text()
    data = yaml.safe_load(text)
    assert list(data) == ["model", "tokenizer", "data", "train", "eval", "output"]
    config = load_config(tmp_path / "cells.yaml")
    assert config.data.options == {"val_fraction": 0.2, "mask_suffix": "_mask", "labels": "instances"}
    assert config.data.num_classes == 2 and config.tokenizer.task == "semantic" and config.train.minutes == 2
    assert data["model"]["refine_band"] == 1 and data["tokenizer"]["extent"] == "end"
    assert config.data.patch.patch_size in (96, 128) and config.data.patch.factor in (2, 4, 8)
    assert data["model"]["max_seq_len"] % 32 == 0 and data["train"]["steps"] >= 50
    for key in ("max_seq_len:", "patch:", "steps:", "num_classes:", "normalize:"):
        line = next(line for line in text.splitlines() if line.strip().startswith(key))
        assert "  # " in line, line
    assert main(["init", "cells"]) == 2
    assert "cells.yaml: exists" in capsys.readouterr().err
    # README's "Your own data" shows what init writes for instance label maps: the same keys.
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("```yaml\n# Written by `rleseg init", 1)[1].split("```", 1)[0]
    shown = yaml.safe_load(block.split("\n", 1)[1])
    assert _keys(shown) == _keys(data)


def _keys(mapping: dict, prefix: str = "") -> set[str]:
    return {k for key, value in mapping.items() for k in (_keys(value, f"{prefix}{key}.") if isinstance(value, dict)
                                                          and key != "options" else {f"{prefix}{key}"})}


def test_panoptic_needs_instance_ids(tmp_path, capsys):
    write_folder(tmp_path / "classes", instances=False)
    assert main(["init", str(tmp_path / "classes"), "--task", "panoptic", "--out", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert "task panoptic needs instance label maps" in err and "--labels instances" in err
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.parametrize(("task", "architecture"),
                         [("semantic", "token"), ("panoptic", "token"), ("semantic", "dense")])
def test_instance_tiffs_go_through_init_train_evaluate_predict_unedited(tmp_path, monkeypatch, task, architecture):
    monkeypatch.chdir(tmp_path)
    write_folder(tmp_path / "cells", files=4)
    assert main(["init", "cells", "--task", task, "--architecture", architecture, "--minutes", "1"]) == 0
    assert ("max_seq_len" in (tmp_path / "cells.yaml").read_text()) == (architecture == "token")
    # Only the step count is cut, from the command line: the file is used as init wrote it.
    assert main(["train", "cells.yaml", "--set", "train.steps=2", "--set", "train.warmup_steps=1"]) == 0
    run = tmp_path / "runs" / "cells"
    assert (run / "best.safetensors").is_file()
    assert main(["evaluate", str(run), "--out", "scores"]) == 0
    metrics = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    assert ("panoptic" in metrics) == (task == "panoptic")
    assert main(["predict", str(run), "cells/images", "--out", "predicted"]) == 0
    written = sorted(p.stem for p in (tmp_path / "predicted").rglob("*.png"))
    assert {f"cell_{f:03d}" for f in range(4)} <= set(written)
