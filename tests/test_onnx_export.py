"""``rleseg export --format onnx`` and ``rleseg.onnx_runtime``: the exported parts, run by onnxruntime from a
numpy decoding loop, give rleseg's own greedy tokens and label maps (the refiner's too); a decoder window
through the cache gives the teacher-forced logits at each row's position (draft verification's form); the
dense head gives its logits' label maps; the runtime imports no torch; what is not covered is refused in one
line. Noisy micro models (random init), CPU."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import micro_config
from rleseg.cli import main
from rleseg.models import DecodingOptions, DenseConfig, create_model, save_checkpoint
from rleseg.onnx_runtime import DESCRIPTION, load
from rleseg.tokens import EOS, PanopticTokenizer, PerClassTokenizer, Tokenizer

EXTRA = {"class_names": ["background", "cell", "debris"], "normalize": {"mode": "percentile", "low": 2.0, "high": 99.0}}


def images(count: int = 6, seed: int = 1) -> torch.Tensor:
    """``count`` random 64 x 64 patches of rising contrast, so that a noisy model's rows differ in length."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, 64, 64, generator=generator) * torch.linspace(0, 1, count).view(count, 1, 1, 1)


@pytest.fixture(scope="module")
def token_model():
    """A token model with the pointer start head, run ends and the refiner; seeded noise on every weight and EOS
    made less likely, so that its rows write runs, end at different steps and the refiner redraws pixels."""
    torch.manual_seed(2)
    model = create_model(micro_config(refine_band=1, max_seq_len=40), Tokenizer((16, 16), 3, "lac", extent="end"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        model.decoder.output_bias[EOS] -= 4.0
    assert model.config.start_head == "pointer"
    return model.eval()


@pytest.fixture(scope="module")
def exported(token_model, tmp_path_factory):
    """The token model's checkpoint through ``rleseg export --format onnx``."""
    folder = tmp_path_factory.mktemp("onnx")
    save_checkpoint(token_model, folder / "model.safetensors", EXTRA)
    assert main(["export", str(folder / "model.safetensors"), "--format", "onnx", "--out", str(folder / "out")]) == 0
    return folder / "out"


def test_the_command_writes_the_parts_and_a_description_of_them(exported, token_model):
    assert sorted(p.name for p in exported.iterdir()) == ["decoder.onnx", "encoder.onnx", "refiner.onnx", DESCRIPTION]
    description = json.loads((exported / DESCRIPTION).read_text())
    assert description["model"] == "token" and description["tokenizer"] == token_model.tokenizer.to_dict()
    assert description["images"]["patch_size"] == 64 and description["images"]["normalize"] == EXTRA["normalize"]
    assert description["class_names"] == EXTRA["class_names"] and description["labels"]["output_factor"] == 1
    assert description["decoding"]["first_token"] == token_model.tokenizer.bos
    decoder = {t["name"]: t for t in description["files"]["decoder"]["inputs"]}
    assert decoder["tokens"]["shape"] == ["rows", "window"] and decoder["tokens"]["dtype"] == "int64"
    assert decoder["self_k"]["shape"] == [2, "rows", 4, 40, 8]  # layers, rows, heads, max_seq_len, head width
    encoder = [t["name"] for t in description["files"]["encoder"]["outputs"]]
    assert encoder == ["cross_k", "cross_v", "table", "cells"]


def test_onnxruntime_writes_rlesegs_greedy_tokens_and_label_maps(exported, token_model):
    model, patches = load(exported, threads=1), images()
    tokens = model.generate(model.encode(patches.numpy()))
    theirs = token_model.generate(patches)  # rleseg's default: greedy, under the grammar, step by step, fp32
    assert np.array_equal(tokens, theirs.tokens.numpy())
    lengths = (tokens != 0).sum(1)
    assert lengths.min() < lengths.max() and lengths.mean() > 5  # rows write runs and end at different steps
    refined = token_model.predict(patches)
    assert refined.redrawn.sum() > 0  # the refiner changes pixels, so its export is put to the test
    assert np.array_equal(model.predict(patches.numpy()), np.stack(refined.masks))
    coarse = token_model.predict(patches, DecodingOptions(refine=False)).masks
    assert np.array_equal(model.predict(patches.numpy(), refine=False), np.stack(coarse))


def test_a_decoder_window_reads_the_cache_at_each_rows_own_position(exported, token_model):
    """Draft verification's form: a first window writes each row's tokens up to its own position and a draft
    past it, which the row then rejects; the next window starts at that position and overwrites the draft.
    Both give the teacher-forced logits of the tokens they hold."""
    model, patches = load(exported, threads=1), images()
    generated = token_model.generate(patches).tokens
    inputs = torch.cat([torch.full((len(patches), 1), token_model.tokenizer.bos), generated[:, :-1]], dim=1)
    with torch.no_grad():
        expected = token_model(patches, inputs).numpy()  # (R, T, V)
    own = np.array([1, 2, 3, 4, 5, 2])  # each row's position after the first window
    first = inputs.numpy()[:, : own.max() + 2].copy()
    draft = np.random.default_rng(0).integers(2, token_model.tokenizer.vocab.size, first.shape)
    first = np.where(np.arange(first.shape[1]) < own[:, None], first, draft)
    state = model.start(model.encode(patches.numpy()))
    logits, state = model.window(first, np.zeros(len(first), np.int64), state)
    for r, p in enumerate(own):
        np.testing.assert_allclose(logits[r, :p], expected[r, :p], atol=1e-4, rtol=1e-4)
    width = inputs.shape[1] - own.max()
    second = np.stack([inputs.numpy()[r, p : p + width] for r, p in enumerate(own)])
    logits, _ = model.window(second, own, state)
    for r, p in enumerate(own):
        np.testing.assert_allclose(logits[r], expected[r, p : p + width], atol=1e-4, rtol=1e-4)


def test_the_runtime_runs_without_torch(exported, tmp_path):
    np.save(tmp_path / "patches.npy", images(2).numpy())
    code = (f"import sys, numpy as np; from rleseg.onnx_runtime import load; "
            f"labels = load({str(exported)!r}, threads=1).predict(np.load({str(tmp_path / 'patches.npy')!r})); "
            "assert labels.shape == (2, 64, 64), labels.shape; sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_dense_head_gives_its_label_maps_and_overwriting_it_exports_a_shared_table(tmp_path, capsys):
    """Two contracts in one test, as exports take seconds each: the dense head's label maps, then --overwrite
    replacing that export with a token model whose table all images share (start_head table, no refiner)."""
    torch.manual_seed(0)
    dense = create_model(DenseConfig(backbone="test_resnet", image_size=64, width=32), Tokenizer((16, 16), 3)).eval()
    save_checkpoint(dense, tmp_path / "dense.safetensors", EXTRA)
    out = tmp_path / "out"
    assert main(["export", str(tmp_path / "dense.safetensors"), "--format", "onnx", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["dense.onnx", DESCRIPTION]
    assert capsys.readouterr().out.endswith(f"(onnx): dense.onnx, {DESCRIPTION}\n")
    model, patches = load(out, threads=1), images(4)
    (logits,) = model.sessions["dense"].run(None, {"images": patches.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, dense(patches).numpy(), atol=1e-4, rtol=1e-4)
    labels = model.predict(patches.numpy())
    assert np.array_equal(labels, np.stack(dense.predict(patches).masks)) and len(np.unique(labels)) > 1

    torch.manual_seed(2)
    table = create_model(micro_config(max_seq_len=40), Tokenizer((16, 16), 3, "lac"), start_head="table")
    with torch.no_grad():
        for p in table.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        table.decoder.output_bias[EOS] -= 4.0
    save_checkpoint(table.eval(), tmp_path / "table.safetensors")
    assert main(["export", str(tmp_path / "table.safetensors"), "--format", "onnx", "--out", str(out),
                 "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["decoder.onnx", "encoder.onnx", DESCRIPTION]
    model, patches = load(out, threads=1), images()
    encoded = model.encode(patches.numpy())
    assert encoded["table"].shape == (table.tokenizer.vocab.size, 32)  # one table, whatever the batch
    tokens, theirs = model.generate(encoded), table.generate(patches).tokens.numpy()
    lengths = (theirs != 0).sum(1)
    assert np.array_equal(tokens, theirs) and lengths.min() < lengths.max()
    assert np.array_equal(model.predict(patches.numpy()), np.stack(table.predict(patches).masks))


REFUSED = {
    "model.run_step": lambda: create_model(micro_config(run_step=True), Tokenizer((6, 10), 4, "lac", extent="end")),
    "tokenizer type 'per_class'": lambda: create_model(micro_config(), PerClassTokenizer((6, 10), 4, max_run=6)),
    "model.instances 'components'": lambda: create_model(
        DenseConfig(backbone="test_resnet", image_size=64, width=32, instances="components"),
        PanopticTokenizer((16, 16), 3, thing_classes=[1])),
}


@pytest.mark.parametrize("setting", REFUSED)
def test_what_the_onnx_path_does_not_cover_is_refused_in_one_line(setting, tmp_path, capsys):
    save_checkpoint(REFUSED[setting](), tmp_path / "model.safetensors")
    capsys.readouterr()
    assert main(["export", str(tmp_path / "model.safetensors"), "--format", "onnx", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rleseg: error: {tmp_path / 'model.safetensors'}: {setting}") and err.count("\n") == 1
    assert "is not covered by --format onnx yet" in err and not (tmp_path / "x").exists()


def test_a_folder_that_is_not_an_export_and_scores_are_refused(exported, tmp_path, capsys):
    with pytest.raises(ValueError, match=f"{DESCRIPTION}: not readable .* rleseg export --format onnx wrote"):
        load(tmp_path)
    (tmp_path / DESCRIPTION).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not the description of an rleseg ONNX export"):
        load(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    capsys.readouterr()
    source, scores = exported.parent / "model.safetensors", tmp_path / "metrics.json"
    assert main(["export", str(source), "--format", "onnx", "--out", str(tmp_path / "x"), "--scores", str(scores)]) == 2
    assert "--format onnx writes no card" in capsys.readouterr().err
