"""docs/config.md is the generated reference of every key, and `rleseg config` prints a config that runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from rleseg.cli import main
from rleseg.cli.config import NOTE_TAGS, setting_notes
from rleseg.config_reference import field_notes, reference_markdown
from rleseg.experiment import BUNDLED_CONFIGS, ExperimentConfig, build_model_config, load_config
from rleseg.models import DenseConfig, ModelConfig, VideoModelConfig

DOCS = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_docs_config_md_is_current():
    assert DOCS.read_text() == reference_markdown(), "regenerate it: rleseg config --reference > docs/config.md"


def test_reference_names_every_key():
    text = reference_markdown()
    config = ExperimentConfig()
    for section in ("tokenizer", "data", "train", "eval", "output"):
        for field in dataclasses.fields(getattr(config, section)):
            assert f"`{section}.{field.name}`" in text
    for field in dataclasses.fields(config.data.patch):
        assert f"`data.patch.{field.name}`" in text
    for cls in (ModelConfig, VideoModelConfig, DenseConfig):
        for field in dataclasses.fields(cls):
            assert field.name == "tokenizer" or f"`model.{field.name}`" in text


def test_field_notes_read_the_comments_beside_and_above_fields():
    notes = field_notes(ModelConfig)
    assert notes["max_seq_len"].startswith("longest token sequence")
    assert notes["start_geometry"].startswith("Start tokens carry geometry")  # the comment lines above it


def test_config_command_prints_a_config_that_loads_to_the_same_experiment(tmp_path, capsys):
    for name, overrides in (("stardist-tiny", []), ("stardist-tiny", ["model.architecture=dense"]),
                            ("synthetic-video", ["train.steps=7"])):
        args = ["config", name] + [a for o in overrides for a in ("--set", o)]
        assert main(args) == 0
        printed = capsys.readouterr().out
        path = tmp_path / "resolved.yaml"
        path.write_text(printed)
        again = load_config(path)
        original = load_config(name, overrides)
        assert again.train == original.train and again.data == original.data
        assert build_model_config(again) == build_model_config(original)
        assert yaml.safe_load(printed)["model"]["preset"] == "tiny"
        assert main(["config", str(path)]) == 0 and capsys.readouterr().out == printed


def test_config_command_errors_are_one_line(capsys):
    assert main(["config", "no-such-config.yaml"]) == 2
    assert main(["config", "stardist-tiny", "--set", "train.nope=1"]) == 2
    assert main(["config", "stardist-tiny", "--reference"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and all(line.startswith("rleseg: error: ") for line in err.splitlines())
    assert "train.nope" in err
    assert main(["config", "--reference"]) == 0 and capsys.readouterr().out == reference_markdown()


def test_setting_notes_read_the_tag_at_the_end_of_a_key_line_or_right_above_it():
    text = """# A file's comment: its tag, paper: not at the start
top: 1
section:  # rleseg: the section's own
  # paper: a block right above the key,
  # over two lines
  nested: {a: 1}  # rleseg: and the line's
  plain: 2  # not a tag
  # assumption: a blank line ends the block

  after_blank: 3
  deeper:
    leaf: [1, 2]  # assumption: the leaf
back: x  # rleseg:x
"""
    assert setting_notes(text) == {
        "section": ("rleseg", "the section's own"),
        "section.nested": ("paper", "a block right above the key, over two lines and the line's"),
        "section.deeper.leaf": ("assumption", "the leaf"),
        "back": ("rleseg", "x"),
    }


def test_config_command_header_says_whose_each_noted_setting_is(tmp_path, capsys):
    notes = setting_notes((BUNDLED_CONFIGS / "paper-ipsc.yaml").read_text())
    assert main(["config", "paper-ipsc", "--set", "train.lr=1e-4"]) == 0
    printed = capsys.readouterr().out
    header, found, _ = printed.partition("\n\nmodel:")
    assert found
    assert all(line.startswith("# ") for line in header.splitlines())
    paper, _, rest = header.partition(NOTE_TAGS["rleseg"])
    listed_paper = {key.strip() for key in paper.partition(NOTE_TAGS["paper"])[2].replace("#", "").split(",")}
    assert listed_paper == {key for key, (tag, _) in notes.items() if tag == "paper"} - {"train.lr"}
    own, _, assumed = rest.partition(NOTE_TAGS["assumption"])
    for text, tag in ((own, "rleseg"), (assumed, "assumption")):
        firsts = [line for line in text.splitlines() if line.startswith("#   ") and not line.startswith("#    ")]
        listed = {line.split()[1].rstrip(":") for line in firsts}
        assert listed == {key for key, (t, _) in notes.items() if t == tag}
    assert header.splitlines()[-1] == "# Set by --set, so their notes no longer hold: train.lr"
    # The header is YAML comments: the output still loads to the experiment it describes.
    path = tmp_path / "resolved.yaml"
    path.write_text(printed)
    assert load_config(path).train == load_config("paper-ipsc", ["train.lr=1e-4"]).train
    assert main(["config", "stardist-tiny"]) == 0 and capsys.readouterr().out.startswith("model:\n")  # no notes
