"""``rleseg evaluate``: model evaluation in both modes, prediction-folder scoring, reports, bad input."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from helpers import RUN_MODEL, write_run_config
from rleseg.cli import main
from rleseg.experiment import config_to_dict, load_config
from rleseg.inference import Predictor, predict_batch
from rleseg.metrics import SegmentationMeter
from rleseg.models import ModelConfig, create_model, save_checkpoint
from rleseg.tokens import Tokenizer
from rleseg.tokens.panoptic import PanopticTokenizer

SIZES = [(64, 64), (100, 150), (40, 70)]  # larger and smaller than the 64 px patch


def make_checkpoint(path, tokenizer):
    torch.manual_seed(0)
    save_checkpoint(create_model(ModelConfig(**RUN_MODEL), tokenizer), path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.safetensors", Tokenizer((16, 16), 3))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (root / folder).mkdir()
    for i, (h, w) in enumerate(SIZES):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(root / "images" / f"im{i}.png")
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : h // 2, w // 4 :] = 1
        mask[h // 2 :, : w // 3] = 2
        mask[0, :5] = 255
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")
    return root


def run(*argv):
    return main([str(a) for a in argv] + ["--no-progress"])


def evaluate_folder(checkpoint, data, out, *extra):
    return run("evaluate", checkpoint, "--images", data / "images", "--masks", data / "masks", "--out", out, *extra)


@pytest.mark.parametrize("mode", ["patches", "whole"])
def test_evaluate_writes_every_output(checkpoint, data, tmp_path, mode):
    out = tmp_path / "eval"
    assert evaluate_folder(checkpoint, data, out, "--mode", mode, "--stride", 48, "--pictures", 2) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"metrics.json", "metrics.md", "per_image.csv", "confusion.png", "pictures", "tokens_im0.png",
                     "rleseg-output.json"}
    assert len(list((out / "pictures").iterdir())) == 2
    assert not [p for p in tmp_path.iterdir() if p.name != "eval"]  # no temporary folder left
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 3 and metrics["class_names"] == ["class 0", "class 1", "class 2"]
    assert set(metrics["semantic"]) >= {"per_image", "pooled", "confusion"}
    assert metrics["settings"]["mode"] == mode and metrics["settings"]["ignore_index"] == 255
    gen = metrics["generation"]
    assert gen["invalid_runs"] == 0 and gen["truncated"] == 0 and gen["constrained"]  # the grammar guarantees it
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert [(int(r["height"]), int(r["width"])) for r in rows] == SIZES
    windows = [1, 6, 2] if mode == "patches" else [1, 1, 1]  # 100x150 at stride 48 -> 2 x 3 windows
    assert [int(r["patches"]) for r in rows] == windows
    assert sum(int(r["tokens"]) for r in rows) == gen["tokens"] and gen["patches"] == sum(windows)
    assert int(np.sum(metrics["semantic"]["confusion"])) == sum(h * w for h, w in SIZES) - 3 * 5  # 255 ignored
    assert "| per_image | mean |" in (out / "metrics.md").read_text()
    for picture in ("confusion.png", "tokens_im0.png"):
        assert Image.open(out / picture).size[0] > 100


def test_model_evaluation_equals_scoring_its_predicted_pngs(checkpoint, data, tmp_path):
    """Evaluate scores exactly what predict writes: both go through one image-level inference path."""
    assert evaluate_folder(checkpoint, data, tmp_path / "eval", "--pictures", 0) == 0
    assert run("predict", checkpoint, data / "images", "--out", tmp_path / "pred", "--no-overlays") == 0
    assert run("evaluate", "--pred-dir", tmp_path / "pred" / "labels" / "images", "--gt-dir", data / "masks",
               "--num-classes", 3, "--ignore-index", 255, "--out", tmp_path / "scored") == 0
    model_eval = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    scored = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    assert model_eval["semantic"] == scored["semantic"]


def test_unconstrained_sampling_counts_invalid_and_truncated(checkpoint, data, tmp_path):
    out = tmp_path / "eval"
    assert evaluate_folder(checkpoint, data, out, "--unconstrained", "--temperature", 1, "--seed", 0,
                           "--pictures", 0) == 0
    gen = json.loads((out / "metrics.json").read_text())["generation"]
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    # An untrained model sampling freely writes malformed runs and runs into max_len.
    assert gen["invalid_runs"] > 0 and gen["truncated"] > 0 and not gen["constrained"]
    assert gen["invalid_runs"] == sum(int(r["invalid_runs"]) for r in rows)
    assert gen["invalid_runs"] <= gen["generated_runs"]


def write_maps(folder, maps):
    folder.mkdir()
    for name, labels in maps.items():
        Image.fromarray(labels.astype(np.uint8)).save(folder / f"{name}.png")


def test_pred_dir_scoring_equals_a_direct_meter(tmp_path):
    rng = np.random.default_rng(1)
    gts = {f"s{i}": rng.integers(0, 4, (30 + i, 40)) for i in range(3)}
    gts["s0"][:3] = 255
    preds = {k: np.where(rng.random(v.shape) < 0.7, np.minimum(v, 3), rng.integers(0, 4, v.shape))
             for k, v in gts.items()}
    write_maps(tmp_path / "gt", gts)
    write_maps(tmp_path / "pred", preds)
    assert run("evaluate", "--pred-dir", tmp_path / "pred", "--gt-dir", tmp_path / "gt", "--num-classes", 4,
               "--ignore-index", 255, "--class-names", "bg,a,b,c", "--out", tmp_path / "out") == 0
    meter = SegmentationMeter(4, ignore_index=255)
    for name in sorted(gts):
        meter.update(preds[name], gts[name])
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["semantic"] == json.loads(json.dumps(meter.compute()))
    assert metrics["class_names"] == ["bg", "a", "b", "c"]
    assert [r["name"] for r in csv.DictReader((tmp_path / "out" / "per_image.csv").open())] == ["s0", "s1", "s2"]


def test_pred_dir_scoring_does_not_import_torch(tmp_path):
    maps = {"a": np.eye(8, dtype=np.uint8)}
    write_maps(tmp_path / "gt", maps)
    write_maps(tmp_path / "pred", maps)
    code = (
        "import sys\nfrom rleseg.cli import main\n"
        f"code = main(['evaluate', '--pred-dir', {str(tmp_path / 'pred')!r}, '--gt-dir', {str(tmp_path / 'gt')!r},"
        f" '--num-classes', '2', '--out', {str(tmp_path / 'out')!r}, '--no-progress'])\n"
        "print(code, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[-2:] == ["0", "False"], done.stderr
    assert (tmp_path / "out" / "confusion.png").is_file()


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run folder as ``rleseg train`` leaves it: config.yaml and best.safetensors (untrained here)."""
    run_dir = tmp_path_factory.mktemp("run")
    write_run_config(run_dir, "data.val_options={length: 3}", "data.train_options={length: 3}",
                     "tokenizer.task=panoptic", "tokenizer.thing_classes=[1]")
    make_checkpoint(run_dir / "best.safetensors", PanopticTokenizer((16, 16), 3, thing_classes=[1]))
    return run_dir


def test_evaluate_run_folder_with_its_config_gives_panoptic_quality(run_folder, tmp_path):
    out = tmp_path / "eval"
    assert run("evaluate", run_folder, "--out", out, "--limit", 2, "--temperature", 1, "--seed", 0) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["source"]["split"] == "val"
    assert metrics["panoptic"]["config"]["thing_classes"] == [1] and metrics["panoptic"]["num_images"] == 2
    assert "## Panoptic quality" in (out / "metrics.md").read_text()
    assert "pq" in next(csv.DictReader((out / "per_image.csv").open()))
    assert (out / "tokens_synthetic_0.png").is_file()


def test_evaluate_takes_the_earliest_instance_rule_for_panoptic_models_only(run_folder, checkpoint, data, tmp_path,
                                                                           capsys):
    for flag, share in [([], 0.5), (["--earliest-instance", 0.2], 0.2), (["--earliest-instance", 0], 0.0)]:
        out = tmp_path / f"eval{share}"
        assert run("evaluate", run_folder, "--out", out, "--limit", 2, *flag, "--no-progress") == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["panoptic"]["num_images"] == 2 and metrics["settings"]["earliest_instance"] == share
    capsys.readouterr()
    assert run("evaluate", checkpoint, "--images", data / "images", "--masks", data / "masks", "--out",
               tmp_path / "semantic", "--earliest-instance", 0.5, "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "earliest_instance is for greedy, constrained decoding of panoptic models" in err
    assert not (tmp_path / "semantic").exists()


def test_stitched_prediction_equals_its_patches(checkpoint):
    """No overlap: each window of the full-size label map is its patch's decoded mask, upsampled."""
    from rleseg.models import load_checkpoint
    from rleseg.tokens import upsample_mask

    model = load_checkpoint(checkpoint)
    torch.manual_seed(0)  # the noise must not depend on what tests ran before in this process
    with torch.no_grad():
        for p in model.decoder.parameters():  # an untrained model says "background" everywhere: vary it
            p.add_(torch.randn_like(p) * 0.5)
    image = np.random.default_rng(3).random((128, 192, 3)).astype(np.float32)
    labels = Predictor(model).predict(image)
    assert labels.shape == (128, 192)
    crops = torch.from_numpy(np.stack([image[y : y + 64, x : x + 64] for y in (0, 64) for x in (0, 64, 128)]))
    masks = predict_batch(model, crops.permute(0, 3, 1, 2)).masks
    expected = np.block([[upsample_mask(masks[3 * r + c], 4) for c in range(3)] for r in range(2)])
    assert np.array_equal(labels, expected) and len(np.unique(expected)) > 1


# ----------------------------------------------------------------------------- bad input
def expect_user_error(capsys, argv, out, match):
    assert run(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("rleseg: error:") and match in err, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no temporary left


def test_bad_checkpoints(capsys, data, tmp_path):
    out = tmp_path / "out"
    alien = tmp_path / "alien.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, alien)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01garbage" * 10)
    for path, match in ((alien, "not an rleseg model checkpoint"), (corrupt, "corrupt"),
                        (tmp_path / "none.safetensors", "does not exist"), (tmp_path, "without best.safetensors")):
        expect_user_error(capsys, ["evaluate", path, "--images", data / "images", "--masks", data / "masks",
                                   "--out", out], out, match)


def test_class_count_mismatch(capsys, checkpoint, data, tmp_path):
    out = tmp_path / "out"
    expect_user_error(capsys, ["evaluate", checkpoint, "--images", data / "images", "--masks", data / "masks",
                               "--num-classes", 5, "--out", out], out, "does not match the checkpoint's 3 classes")
    expect_user_error(capsys, ["evaluate", checkpoint, "--images", data / "images", "--masks", data / "masks",
                               "--class-names", "bg,fg", "--out", out], out, "2 class names given for 3 classes")


def test_bad_label_midway_leaves_nothing(capsys, checkpoint, data, tmp_path):
    """An error after some images were scored and pictures written still leaves no output folder."""
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("im0", "im1"):
        (root / "images" / f"{name}.png").write_bytes((data / "images" / "im0.png").read_bytes())
    mask = np.zeros((64, 64), np.uint8)
    Image.fromarray(mask).save(root / "masks" / "im0.png")
    mask[5, 5] = 7
    Image.fromarray(mask).save(root / "masks" / "im1.png")
    out = tmp_path / "out"
    # Batches of one patch: im0 is scored and drawn before im1 is read.
    expect_user_error(capsys, ["evaluate", checkpoint, "--images", root / "images", "--masks", root / "masks",
                               "--batch-size", 1, "--out", out], out, "label 7 is outside the classes")


def test_pred_dir_size_mismatch_and_missing_pairs(capsys, tmp_path):
    write_maps(tmp_path / "gt", {"a": np.zeros((8, 8)), "b": np.zeros((8, 8))})
    write_maps(tmp_path / "pred", {"a": np.zeros((8, 9))})
    out = tmp_path / "out"
    argv = ["evaluate", "--pred-dir", tmp_path / "pred", "--gt-dir", tmp_path / "gt", "--num-classes", 2, "--out", out]
    expect_user_error(capsys, argv, out, "has no partner with stem 'b'")
    write_maps(tmp_path / "pred2", {"a": np.zeros((8, 9)), "b": np.zeros((8, 8))})
    argv[2] = tmp_path / "pred2"
    expect_user_error(capsys, argv, out, "expected equal sizes")
    write_maps(tmp_path / "pred3", {"a": np.full((8, 8), 3), "b": np.zeros((8, 8))})
    argv[2] = tmp_path / "pred3"
    expect_user_error(capsys, argv, out, "label 3 outside [0, 2)")


def test_existing_output_is_kept_without_overwrite(capsys, tmp_path):
    write_maps(tmp_path / "gt", {"a": np.eye(4)})
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["evaluate", "--pred-dir", tmp_path / "gt", "--gt-dir", tmp_path / "gt", "--num-classes", 2, "--out", out]
    assert run(*argv) == 2 and "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert run(*argv, "--overwrite") == 2 and "not an output folder of rleseg" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"  # --overwrite replaces only what rleseg wrote
    (out / "keep.txt").unlink()
    assert run(*argv) == 0 and (out / "metrics.json").is_file()
    (out / "metrics.json").write_text("stale")
    assert run(*argv, "--overwrite") == 0 and (out / "metrics.json").read_text() != "stale"


# ----------------------------------------------------------------------------- the output folder
def tree(folder):
    return sorted((p.relative_to(folder), p.is_file() and p.read_bytes()) for p in folder.rglob("*"))


def test_out_that_is_or_holds_the_run_or_the_data_is_refused(capsys, run_folder, data, checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("config.yaml", "best.safetensors"):
        (run_dir / name).write_bytes((run_folder / name).read_bytes())
    (run_dir / "checkpoints").mkdir()
    data_copy = tmp_path / "data"
    for folder in ("images", "masks"):
        (data_copy / folder).mkdir(parents=True)
        for path in (data / folder).iterdir():
            (data_copy / folder / path.name).write_bytes(path.read_bytes())
    config = load_config(None, ["data.dataset=folder", f"data.root={data_copy}", "data.options={val_fraction: 0.5}",
                                "data.patch.patch_size=64", "data.patch.factor=4"])
    (tmp_path / "folder.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    (tmp_path / "file.txt").write_text("mine")
    folder_data = ["--images", data_copy / "images", "--masks", data_copy / "masks"]
    before = tree(tmp_path)
    for argv, match in (
        (["evaluate", run_dir, "--out", run_dir], f"holds the input {run_dir / 'best.safetensors'}"),
        (["evaluate", run_dir / "best.safetensors", "--out", run_dir / "checkpoints" / ".."], "holds the input"),
        (["evaluate", checkpoint, *folder_data, "--out", data_copy], "holds the input"),
        (["evaluate", checkpoint, *folder_data, "--out", data_copy / "masks"], "is the input"),
        (["evaluate", checkpoint, *folder_data, "--out", data_copy / "images" / "x"], "lies inside the data folder"),
        (["evaluate", checkpoint, "--config", tmp_path / "folder.yaml", "--out", data_copy / "images"],
         f"lies inside the data folder {data_copy}"),
        (["evaluate", checkpoint, "--config", tmp_path / "folder.yaml", "--out", tmp_path], "holds the input"),
        (["evaluate", checkpoint, *folder_data, "--out", tmp_path / "file.txt"], "is a file, not a folder"),
        (["evaluate", "--pred-dir", data_copy / "masks", "--gt-dir", data_copy / "masks", "--num-classes", 3,
          "--out", data_copy / "masks"], "is the input"),
    ):
        assert run(*argv, "--overwrite") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("rleseg: error: ") and match in err, err
        assert tree(tmp_path) == before


def test_evaluate_into_its_own_run_folder_as_a_program(run_folder, tmp_path):
    """The case of the issue, through the installed command line: the run survives."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("config.yaml", "best.safetensors"):
        (run_dir / name).write_bytes((run_folder / name).read_bytes())
    before = tree(run_dir)
    done = subprocess.run([sys.executable, "-m", "rleseg.cli", "evaluate", str(run_dir), "--out", str(run_dir),
                           "--overwrite", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"rleseg: error: {run_dir}: the output folder")
    assert tree(run_dir) == before


# ----------------------------------------------------------------------------- what the reports say
def test_per_image_mean_dice_leaves_out_background_as_the_headline_does(tmp_path):
    gt = np.zeros((20, 20), np.uint8)
    gt[2:10, 2:10], gt[12:18, 5:15] = 1, 2
    pred = gt.copy()
    pred[2:10, 2:6] = 0  # half of class 1 missed; background almost perfect, class 2 perfect
    write_maps(tmp_path / "gt", {"a": gt})
    write_maps(tmp_path / "pred", {"a": pred})
    assert run("evaluate", "--pred-dir", tmp_path / "pred", "--gt-dir", tmp_path / "gt", "--num-classes", 3,
               "--out", tmp_path / "out") == 0
    row = next(csv.DictReader((tmp_path / "out" / "per_image.csv").open()))
    assert "mean_dice" not in row and "mean_iou" not in row  # the old names, which counted background
    foreground = [float(row["dice_1"]), float(row["dice_2"])]
    assert float(row["mean_dice_without_background"]) == pytest.approx(np.mean(foreground), abs=1e-6)
    assert float(row["mean_dice_without_background"]) < np.mean([float(row["dice_0"]), *foreground])
    headline = json.loads((tmp_path / "out" / "metrics.json").read_text())["semantic"]["per_image"]
    assert float(row["mean_dice_without_background"]) == pytest.approx(headline["mean_without_background"]["dice"],
                                                                       abs=1e-6)  # one image: the same figure
    assert float(row["mean_iou_without_background"]) == pytest.approx(headline["mean_without_background"]["iou"],
                                                                      abs=1e-6)


@pytest.fixture(scope="module")
def refining_checkpoint(tmp_path_factory):
    """An untrained token model with a refiner: the refiner's last layer starts at zero, so it changes nothing."""
    torch.manual_seed(0)
    model = create_model(ModelConfig(**RUN_MODEL, refine_band=1), Tokenizer((16, 16), 3))
    path = tmp_path_factory.mktemp("refining") / "model.safetensors"
    save_checkpoint(model, path)
    return path


def test_evaluate_says_that_a_refiner_changed_nothing(refining_checkpoint, data, tmp_path, capsys):
    out = tmp_path / "eval"
    assert evaluate_folder(refining_checkpoint, data, out, "--pictures", 0) == 0
    printed = capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    patches = metrics["generation"]["patches"]
    assert metrics["settings"]["refined"] is True
    assert metrics["refinement"] == {"changed_pixels": 0, "patch_pixels": patches * 64 * 64, "changed_share": 0.0}
    assert f"The refiner changed 0 of {patches * 64 * 64:,} patch pixels (0.00%)" in printed.out
    assert "rleseg: warning: the refiner changed (almost) nothing" in printed.err
    assert "## Boundary refinement" in (out / "metrics.md").read_text()
    assert evaluate_folder(refining_checkpoint, data, tmp_path / "tokens", "--pictures", 0, "--token-only") == 0
    token_only = json.loads((tmp_path / "tokens" / "metrics.json").read_text())
    assert token_only["settings"]["refined"] is False and "refinement" not in token_only
    assert "refiner" not in capsys.readouterr().err


def test_the_refined_share_counts_the_pixels_the_refiner_changed(refining_checkpoint):
    """Counted against the same model's token-only masks, predicted independently."""
    from rleseg.inference import InferenceOptions
    from rleseg.models import load_checkpoint

    model = load_checkpoint(refining_checkpoint)
    with torch.no_grad():
        model.refiner.head[-1].bias.copy_(torch.tensor([0.0, 0.0, 10.0]))  # class 2 wherever it may redraw
    image = np.random.default_rng(0).random((64, 128, 3)).astype(np.float32)  # two whole patches, no overlap
    refined = next(Predictor(model).run([image]))
    token_only = next(Predictor(model, InferenceOptions.from_fields(refine=False)).run([image]))
    assert token_only.redrawn is None
    assert refined.redrawn == int((refined.labels != token_only.labels).sum()) > 0
