"""Shareable model folders (``rleseg export --format hf``, ``rleseg.models.SharedModel``): a trained run round
trips through the folder to the same model and the same predictions, the model card holds the data, the config
and the scores, and broken or mismatched folders are refused in one line. Offline throughout: the Hub is the
download cache laid out by hand, and push_to_hub's upload is caught."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import rleseg
from helpers import TINY, noisy_checkpoint
from rleseg.cli import main
from rleseg.experiment import init_checkpoint, load_config
from rleseg.models import SharedModel, load_checkpoint, read_checkpoint_info
from rleseg.tokens import Tokenizer
from rleseg.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run trained for a few steps: config.yaml, best.safetensors, metrics.json of its last step."""
    folder = tmp_path_factory.mktemp("shared") / "run"
    train(load_config(None, [*TINY, f"output.dir={folder}", "train.steps=4", "data.num_classes=3",
                             "data.class_names=[background, cell, debris]"]))
    return folder


@pytest.fixture(scope="module")
def exported(run):
    folder = run.parent / "model"
    assert main(["export", str(run), "--out", str(folder)]) == 0
    return folder


def image(seed: int = 0) -> np.ndarray:
    """A 16-bit grey image larger than the patch: what the stored normalisation has to stretch as in training."""
    return (np.random.default_rng(seed).random((80, 100)) * 4000 + 500).astype(np.uint16)


def test_a_run_round_trips_through_the_folder_to_the_same_model_and_predictions(run, exported):
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "config.yaml",
                                                          "model.safetensors"]
    original = load_checkpoint(run / "best.safetensors")
    shared = SharedModel.from_pretrained(exported)
    assert type(shared.model) is type(original) and shared.model.config == original.config
    assert shared.model.tokenizer.to_dict() == original.tokenizer.to_dict()
    mine, theirs = shared.model.state_dict(), original.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert shared.extra == read_checkpoint_info(run / "best.safetensors")[1]  # class names, normalize, step
    assert shared.extra["normalize"]["mode"] == "auto" and shared.extra["class_names"][0] == "background"
    # rleseg.load of the folder: the same Predictor, normalisation and class names included.
    a, b = (next(rleseg.load(source, device="cpu").run([image()])) for source in (run, exported))
    assert np.array_equal(a.labels, b.labels) and a.labels.shape == (80, 100)
    assert all(np.array_equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True)) and a.num_tokens > 0
    np.testing.assert_array_equal(a.scores, b.scores)  # NaN where no run paints, in the same places
    assert rleseg.load(exported).class_names == rleseg.load(run).class_names


def test_predict_and_init_from_take_the_folder(run, exported, tmp_path):
    from PIL import Image

    Image.fromarray((image(1) // 16).astype(np.uint8)).save(tmp_path / "a.png")
    outs = [tmp_path / "from_run", tmp_path / "from_folder"]
    for source, out in zip((run, exported), outs, strict=True):
        assert main(["predict", str(source), str(tmp_path / "a.png"), "--out", str(out), "--no-progress"]) == 0
    assert np.array_equal(*(np.array(Image.open(out / "labels" / "a.png")) for out in outs))
    assert init_checkpoint(load_config(None, [f"model.init_from={exported}"])) == exported / "model.safetensors"


def test_the_model_card_names_the_data_the_config_and_the_evaluate_scores(run, exported, tmp_path):
    evaluation = tmp_path / "eval"
    # evaluate reads the folder's config.yaml for its data, as it reads a run folder's
    assert main(["evaluate", str(exported), "--out", str(evaluation), "--limit", "2", "--no-progress"]) == 0
    scored = json.loads((evaluation / "metrics.json").read_text())
    folder = tmp_path / "card"
    assert main(["export", str(run), "--out", str(folder), "--scores", str(evaluation)]) == 0
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: rleseg" in card and "pipeline_tag: image-segmentation" in card
    assert "dataset `synthetic`" in card and "| 1 | cell |" in card
    assert "```yaml\nmodel:\n  preset: tiny" in card  # the run's config, as config.yaml in the folder holds it
    assert (folder / "config.yaml").read_text() == (run / "config.yaml").read_text()
    stitched = next(line for line in card.splitlines() if line.startswith("| rleseg evaluate: whole images, "))
    means = scored["semantic"]["pooled"]["mean_without_background"]
    assert f"| {scored['num_images']} |" in stitched and f"| {means['dice']:.3f} | {means['iou']:.3f} |" in stitched
    step = json.loads((run / "metrics.json").read_text())["step"]
    assert f"in-training validation: patches scored at patch resolution, step {step}" in card
    # config.json holds the same record, and a folder exported from the folder keeps it.
    record = json.loads((folder / "config.json").read_text())["training"]
    assert [s["what"] for s in record["scores"]] == ["patches", scored["what"]]
    again = tmp_path / "again"
    assert main(["export", str(folder), "--out", str(again)]) == 0
    assert (again / "README.md").read_text() == card


def test_a_folder_without_its_weights_is_one_line(exported, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / "model.safetensors").unlink()
    (broken / "pytorch_model.bin").write_bytes(b"not loaded: rleseg never unpickles")
    capsys.readouterr()
    assert main(["predict", str(broken), str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"rleseg: error: {broken}: a model folder without its model.safetensors; copy or download the " \
                  "whole folder that rleseg export wrote\n"
    for load in (rleseg.load, SharedModel.from_pretrained):
        with pytest.raises(ValueError, match=r"without its model\.safetensors"):
            load(broken)


def test_an_edited_config_json_is_refused_naming_it(exported, tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(exported, edited)
    description = json.loads((edited / "config.json").read_text())
    description["config"]["dim"] *= 2
    (edited / "config.json").write_text(json.dumps(description))
    with pytest.raises(ValueError, match=r"config\.json: its config differ from the header of .*model\.safetensors"):
        rleseg.load(edited)


def test_loading_never_unpickles(exported, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", refuse)
    assert SharedModel.from_pretrained(exported).model is not None
    assert rleseg.load(exported) is not None


def test_a_hub_repository_loads_from_the_download_cache_and_push_to_hub_uploads_the_folder(exported, tmp_path,
                                                                                           monkeypatch):
    # The layout huggingface_hub's cache gives a downloaded repository: refs/main -> snapshots/<commit>/files.
    commit, repo = "0" * 40, tmp_path / "cache" / "models--someone--tiny-rleseg"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(exported, repo / "snapshots" / commit)
    shared = SharedModel.from_pretrained("someone/tiny-rleseg", cache_dir=tmp_path / "cache")
    assert shared.extra == SharedModel.from_pretrained(exported).extra and shared.training["scores"]
    uploaded = {}

    class Api:  # the network side of push_to_hub: the folder it would upload is what save_pretrained wrote
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, repo_id, folder_path, **options):
            uploaded.update({p.name: p.read_bytes() for p in Path(folder_path).iterdir()})
            return f"https://example.invalid/{repo_id}"

    monkeypatch.setattr("huggingface_hub.hub_mixin.HfApi", Api)
    shared.push_to_hub("someone/copy")
    assert sorted(uploaded) == ["README.md", "config.json", "config.yaml", "model.safetensors"]
    assert uploaded["README.md"] == (exported / "README.md").read_bytes()
    assert json.loads(uploaded["config.json"]) == json.loads((exported / "config.json").read_text())


def test_scores_of_other_weights_and_bad_outputs_are_refused(run, exported, tmp_path, capsys):
    other = noisy_checkpoint(tmp_path / "other.safetensors", Tokenizer((16, 16), 3))
    fake = tmp_path / "fake"
    fake.mkdir()
    metrics = json.loads((run / "metrics.json").read_text())
    (fake / "metrics.json").write_text(json.dumps({**metrics, "source": {"checkpoint": str(other)}}))
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "x"), "--scores", str(fake)]) == 2
    assert "whose weights differ from" in capsys.readouterr().err and not (tmp_path / "x").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("mine")
    assert main(["export", str(run), "--out", str(elsewhere), "--overwrite"]) == 2
    assert "not a model folder that rleseg export wrote" in capsys.readouterr().err
    assert (elsewhere / "notes.txt").read_text() == "mine"
    assert main(["export", str(run), "--out", str(exported), "--overwrite"]) == 0  # an earlier export is replaced


def test_the_command_offers_the_formats_the_exporter_has():
    from rleseg.cli.export import FORMATS as offered
    from rleseg.export import FORMATS

    assert set(offered) == set(FORMATS) == {"hf", "onnx"}
