"""Truncation counted in both decoding modes: an unconstrained sequence without EOS, and a constrained one
whose EOS the grammar forced because the length budget could not hold another run; ``rleseg predict``
and ``rleseg evaluate`` warn on the console above 1% of the sequences."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import micro_config
from rleseg.cli import main
from rleseg.inference import InferenceOptions, predict_batch
from rleseg.models import create_model, save_checkpoint
from rleseg.tokens import EOS, PanopticTokenizer, Tokenizer

SEMANTIC = np.array([[1, 1, 0, 2], [1, 0, 1, 2]])
INSTANCES = np.array([[5, 5, 0, 0], [5, 0, 7, 0]])


def feed(tok, sequences: list[np.ndarray], max_len: int) -> np.ndarray:
    """Run ``sequences`` through the tokenizer's grammar with ``max_len`` steps; its ``truncated``."""
    grammar = tok.grammar(len(sequences))
    for step in range(max_len):
        allowed = grammar.allowed(max_len - step)
        tokens = np.array([s[step] if step < len(s) else 0 for s in sequences])
        assert allowed[np.arange(len(sequences)), tokens].all(), f"step {step}"
        grammar.advance(tokens)
    assert grammar.done.all()
    return grammar.truncated


def test_image_grammar_marks_the_eos_that_the_budget_forced():
    tok = Tokenizer((2, 4), 3, "lac")  # 2 tokens a run
    tokens = tok.encode(np.array([[1, 1, 0, 2], [1, 0, 2, 0]]))  # 4 runs + EOS: 9 tokens, a pixel left after
    full = tok.encode(np.array([[0, 0, 0, 0], [0, 0, 1, 2]]))  # the last run ends on the last pixel
    empty = np.array([EOS])
    # At 9 steps EOS is the only token left after the 4th run: forced, although the mask may be complete.
    assert feed(tok, [tokens, full, empty], 9).tolist() == [True, False, False]
    assert feed(tok, [tokens, full, empty], 10).tolist() == [True, False, False]  # 2 steps: no run + EOS
    assert feed(tok, [tokens, full, empty], 11).tolist() == [False, False, False]  # room for one more run
    assert feed(tok, [[*tokens[:2].tolist(), EOS]], 3).tolist() == [True]  # --max-len 3: one run, then EOS


def test_panoptic_grammar_marks_the_eos_that_the_budget_forced():
    tok = PanopticTokenizer((2, 4), 3, thing_classes=[1])  # a run and its group's class token need 2 + 1
    tokens = tok.encode(SEMANTIC, INSTANCES)
    assert feed(tok, [tokens], len(tokens)).tolist() == [True]
    assert feed(tok, [tokens], len(tokens) + 3).tolist() == [False]  # a run, a class token and EOS fit


@pytest.fixture(scope="module")
def noisy_model():
    torch.manual_seed(0)
    model = create_model(micro_config(max_seq_len=48), Tokenizer((16, 16), 3))
    with torch.no_grad():  # an untrained decoder says "background" at once: make it write runs
        for p in model.decoder.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model.eval()


def test_predict_batch_counts_truncation_in_both_modes(noisy_model):
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    tok = noisy_model.tokenizer
    out = predict_batch(noisy_model, images, InferenceOptions.from_fields(max_len=3))
    # Under the grammar a run takes 2 tokens: a sequence of 3 is one run and a forced EOS (unless that run
    # reaches the last pixel), a sequence of 1 is an EOS the model chose.
    expected = [len(t) == 3 and tok.decode_runs(t).ends.max() < tok.num_pixels for t in out.tokens]
    assert out.truncated.tolist() == expected and any(expected)
    sampled = InferenceOptions.from_fields(max_len=3, constrained=False, temperature=1.0)
    free = predict_batch(noisy_model, images, sampled, torch.Generator().manual_seed(0))
    assert free.truncated.tolist() == [EOS not in t for t in free.tokens] and free.truncated.any()


@pytest.fixture(scope="module")
def checkpoint_and_data(tmp_path_factory, noisy_model):
    root = tmp_path_factory.mktemp("trunc")
    save_checkpoint(noisy_model, root / "model.safetensors")
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (root / folder).mkdir()
    for i in range(3):
        Image.fromarray((rng.random((64, 96, 3)) * 255).astype(np.uint8)).save(root / "images" / f"im{i}.png")
        Image.fromarray(rng.integers(0, 3, (64, 96)).astype(np.uint8)).save(root / "masks" / f"im{i}.png")
    return root


def one_warning(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rleseg: warning: ") and "Traceback" not in err, err
    return err


def test_predict_and_evaluate_warn_above_one_percent(checkpoint_and_data, tmp_path, capsys):
    root = checkpoint_and_data
    ckpt = root / "model.safetensors"
    assert main(["predict", str(ckpt), str(root / "images"), "--out", str(tmp_path / "p"), "--max-len", "3",
                 "--no-progress"]) == 0
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["truncated"] > 0.01 * summary["patches"]
    err = one_warning(capsys)
    assert f"{summary['truncated']} of {summary['patches']} sequences" in err and "--max-len 3" in err
    assert main(["evaluate", str(ckpt), "--images", str(root / "images"), "--masks", str(root / "masks"),
                 "--out", str(tmp_path / "e"), "--max-len", "3", "--no-progress"]) == 0
    generation = json.loads((tmp_path / "e" / "metrics.json").read_text())["generation"]
    assert generation["truncated"] > 0 and "--max-len 3" in one_warning(capsys)
    # Unconstrained sampling that never ends: cut at the model's max_seq_len.
    assert main(["predict", str(ckpt), str(root / "images"), "--out", str(tmp_path / "u"), "--unconstrained",
                 "--temperature", "1", "--seed", "0", "--no-progress"]) == 0
    assert json.loads((tmp_path / "u" / "summary.json").read_text())["truncated"] > 0
    assert "were cut at the model's max_seq_len" in one_warning(capsys)


def test_no_warning_without_truncation(checkpoint_and_data, tmp_path, capsys):
    root = checkpoint_and_data
    assert main(["predict", str(root / "model.safetensors"), str(root / "images"), "--out", str(tmp_path / "p"),
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "p" / "summary.json").read_text())["truncated"] == 0
    assert capsys.readouterr().err == ""
