"""`rleseg stats --config`: the token lengths of the patches a training run sees, against its max_seq_len."""

import json

import numpy as np

from rleseg.cli import main
from rleseg.experiment import build_datasets, build_tokenizer, load_config
from rleseg.patch_stats import patch_lengths

OVERRIDES = ["data.train_options={length: 12}", "model.max_seq_len=40"]


def test_patch_lengths_count_every_training_patch_as_training_tokenizes_it():
    config = load_config("synthetic-tiny", OVERRIDES)
    result = patch_lengths(config, epochs=2, show_progress=False)
    train, _ = build_datasets(config, build_tokenizer(config))
    lengths = []
    for epoch in range(2):
        train.set_epoch(epoch)
        lengths += [int(train[i]["tokens"].numel()) for i in range(len(train))]
    assert result.patches == len(lengths) == 2 * len(train)
    assert result.max == max(lengths) and result.p50 == int(np.ceil(np.percentile(lengths, 50)))
    assert result.cut == np.mean(np.array(lengths) > 40) and result.max_seq_len == 40
    assert ("fits" in result.recommendation()) == (result.p99 <= 40)


def test_dense_models_have_no_max_seq_len():
    config = load_config("synthetic-tiny", [OVERRIDES[0], "model.architecture=dense"])  # no max_seq_len: no tokens
    result = patch_lengths(config, show_progress=False)
    assert result.max_seq_len is None and result.cut == 0.0 and "dense model" in result.recommendation()


def test_stats_config_on_the_command_line(tmp_path, capsys):
    args = ["stats", "--config", "synthetic-tiny", "--no-progress", "--json", "--out", str(tmp_path / "s.json")]
    assert main([*args, *(a for o in OVERRIDES for a in ("--set", o))]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "s.json").read_text())
    assert printed["max_seq_len"] == 40 and printed["p99"] <= printed["max"]
    assert "max_seq_len" in printed["recommendation"]
    assert main(["stats", str(tmp_path), "--config", "synthetic-tiny"]) == 2
    assert main(["stats"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "not both" in err[0] and "--config" in err[1]
