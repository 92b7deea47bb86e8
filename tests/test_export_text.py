"""`rleseg export-text`: records whose target texts decode back to exactly the masks the dataset's tokens encode."""

import json

import numpy as np
import pytest
from PIL import Image

from rleseg.cli import main
from rleseg.experiment import build_plain_dataset, build_tokenizer, load_config
from rleseg.export_text import class_words
from rleseg.tokens import from_dict
from rleseg.tokens.text import MaskText


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("config", "format"), [("synthetic-tiny", "jsonl"), ("synthetic-panoptic", "llava")])
def test_records_read_back_to_the_datasets_masks(tmp_path, capsys, config, format):
    out = tmp_path / "text"
    code, printed, _ = run(capsys, "export-text", config, "--out", out, "--format", format, "--limit", 3,
                           "--set", "data.patch.factor=8")
    assert code == 0 and "wrote 3" in printed
    form = json.loads((out / "text_form.json").read_text())
    text = MaskText(from_dict(form["tokenizer"]), form["class_words"])
    assert form["factor"] == 8 and form["mask_size"] == list(text.tokenizer.mask_size)
    if format == "jsonl":
        records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
        targets, prompts = [r["text"] for r in records], [r["prompt"] for r in records]
    else:
        records = json.loads((out / "llava.json").read_text())
        targets = [r["conversations"][1]["value"] for r in records]
        prompts = [r["conversations"][0]["value"] for r in records]
        assert all(p.startswith("<image>\n") for p in prompts)
    experiment = load_config(config, ["data.patch.factor=8"])
    dataset = build_plain_dataset(experiment, build_tokenizer(experiment), experiment.data.train_split)
    for i, (record, target) in enumerate(zip(records, targets, strict=True)):
        item = dataset[i]
        assert np.array_equal(text.from_text(target), item["tokens"].numpy())
        assert Image.open(out / record["image"]).size == (item["image"].shape[-1], item["image"].shape[-2])
        assert 0 <= record["meta"]["fidelity_miou"] <= 1
    assert all(word in prompts[0] for word in form["class_words"][1:])


def test_class_names_become_words():
    assert class_words(["background", "road sign", "3d cell", ""]) == ["background", "road_sign", "c3d_cell", "class3"]


def test_bad_requests_are_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "export-text", "synthetic-video", "--out", tmp_path / "a")
    assert code == 2 and "VideoTokenizer" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    code, _, err = run(capsys, "export-text", "synthetic-tiny", "--out", tmp_path / "full", "--limit", 1)
    assert code == 2 and "--overwrite" in err
    assert (tmp_path / "full" / "x").read_text() == "keep"
