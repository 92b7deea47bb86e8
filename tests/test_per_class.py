"""Per-class sequences (issue 16, lever 6): one binary run sequence per foreground class, each after its
class's prompt token, decoded as rows of one batch."""

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import labelled_masks, micro_config, overfit_rows, random_masks, sample_under_grammar
from rleseg.data import Collate
from rleseg.experiment import build_model, build_tokenizer, load_config
from rleseg.models import create_model, load_checkpoint, save_checkpoint
from rleseg.tokens import EOS, PAD, MaskTokenizer, PerClassTokenizer, Tokenizer, from_dict, split_sequences


# ----------------------------------------------------------------------------- tokenizer
@settings(max_examples=60, deadline=None)
@given(labelled_masks(max_side=12), st.sampled_from(["1d", "2d"]), st.sampled_from(["C", "F"]))
def test_random_masks_round_trip(masked, starts, order):
    mask, num_classes = masked
    tok = PerClassTokenizer(mask.shape, num_classes, starts=starts, order=order)
    tokens = tok.encode(mask)
    assert np.array_equal(tok.decode(tokens), mask)
    sequences = split_sequences(tokens)
    assert len(sequences) == num_classes - 1 and all(s[-1] == EOS for s in sequences)
    binary = Tokenizer(mask.shape, 2, "binary", starts, order)
    for c, seq in enumerate(sequences, start=1):  # each class's sequence is the binary one of its mask
        assert np.array_equal(seq, binary.encode(mask == c))
    runs = tok.decode_runs(tokens)
    assert tok.count_runs(tokens) == (len(runs), len(runs))
    assert np.array_equal(np.unique(runs.classes), np.unique(mask[mask > 0]))


def test_layout_keeps_the_binary_tokens_and_adds_one_prompt_per_class():
    tok = PerClassTokenizer((3, 4), 4)
    binary = Tokenizer((3, 4), 2, "binary")
    assert tok.vocab.size == binary.vocab.size + 3
    assert tok.prompts == (binary.vocab.size, binary.vocab.size + 1, binary.vocab.size + 2)
    assert Tokenizer((3, 4), 4).prompts == (Tokenizer((3, 4), 4).bos,)
    mask = np.array([[0, 1, 1, 2], [3, 3, 0, 1], [0, 0, 2, 2]])
    start, length = tok.vocab["start"], tok.vocab["length"]
    expected = [start.token(1), length.token(2), start.token(7), length.token(1), EOS,
                start.token(3), length.token(1), start.token(10), length.token(2), EOS,
                start.token(4), length.token(2), EOS]
    assert tok.encode(mask).tolist() == [int(t) for t in expected]


def test_overlapping_classes_paint_the_later_class():
    tok = PerClassTokenizer((1, 5), 3)
    ones = Tokenizer((1, 5), 2, "binary").encode(np.array([[1, 1, 1, 0, 0]]))
    twos = Tokenizer((1, 5), 2, "binary").encode(np.array([[0, 1, 1, 1, 0]]))
    assert tok.decode(np.concatenate([ones, twos])).tolist() == [[1, 2, 2, 2, 0]]


@pytest.mark.parametrize("starts", ["1d", "2d"])
def test_grammar_samples_decode_strictly_and_encoded_sequences_are_allowed(starts):
    rng = np.random.default_rng(0)
    tok = PerClassTokenizer((4, 5), 4, starts=starts, max_run=3)
    rows = sample_under_grammar(tok, rng, 3 * 8, 30)  # 8 images x 3 classes
    assert not np.isin(rows, tok.prompts).any()  # prompts are input only
    for image in rows.reshape(8, 3, -1):
        flat = np.concatenate([row[: np.flatnonzero(row == EOS)[0] + 1] for row in image])
        mask = tok.decode(flat)
        assert np.array_equal(tok.decode(tok.encode(mask)), mask)
    masks = random_masks(rng, 6, 5, 4)
    sequences = [seq for m in masks for seq in split_sequences(tok.encode(m[:4]))]
    grammar, width = tok.grammar(len(sequences)), max(map(len, sequences))
    batch = np.array([np.pad(s, (0, width - len(s))) for s in sequences])
    for step in range(width):
        assert grammar.allowed(width - step)[np.arange(len(batch)), batch[:, step]].all()
        grammar.advance(batch[:, step])
    assert grammar.done.all()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t, tok: t[:-1], "2 EOS token"),
        (lambda t, tok: np.append(t, 7), "follows the EOS of the last class's sequence"),
        (lambda t, tok: np.insert(t, 2, tok.prompts[0]), "is the prompt of class 1"),
        (lambda t, tok: np.insert(t, 0, tok.vocab["length"].token(1)),
         "sequence of class 1 (positions count from 0, where it starts): token 5 at position 0"),
        (lambda t, tok: np.insert(t, 5, tok.vocab["start"].token(0)), "sequence of class 2 (positions count from 5"),
        (lambda t, tok: t.astype(float), "must be integers"),
    ],
)
def test_strict_decoding_names_the_fault_and_lenient_decoding_keeps_the_rest(change, message):
    tok = PerClassTokenizer((3, 4), 4)
    mask = np.array([[0, 1, 1, 2], [3, 3, 0, 1], [0, 0, 2, 2]])
    bad = change(tok.encode(mask), tok)
    with pytest.raises(ValueError, match=re.escape(message)):
        tok.decode(bad)
    if bad.dtype.kind == "i":
        lenient = tok.decode(bad, errors="ignore")
        assert lenient.shape == mask.shape and set(np.unique(lenient)) <= {0, 1, 2, 3}


def test_bad_arguments_and_masks_are_refused():
    with pytest.raises(ValueError, match="num_classes"):
        PerClassTokenizer((3, 4), 1)
    tok = PerClassTokenizer((3, 4), 3)
    with pytest.raises(ValueError, match="label 3"):
        tok.encode(np.full((3, 4), 3))
    with pytest.raises(ValueError, match="shape"):
        tok.encode(np.zeros((4, 3), int))
    with pytest.raises(ValueError, match="errors must be"):
        tok.decode(tok.encode(np.zeros((3, 4), int)), errors="replace")
    with pytest.raises(ValueError, match="not a per_class tokenizer"):
        PerClassTokenizer.from_dict(Tokenizer((3, 4), 3).to_dict())


def test_to_dict_round_trips():
    tok = PerClassTokenizer((6, 5), 4, starts="2d", order="F", max_run=3)
    assert isinstance(tok, MaskTokenizer) and tok.task == "semantic" and tok.bos == tok.vocab.bos["semantic"]
    again = from_dict(tok.to_dict())
    assert isinstance(again, PerClassTokenizer) and again.to_dict() == tok.to_dict()
    assert again.prompts == tok.prompts


# ----------------------------------------------------------------------------- model
def test_collate_splits_each_sample_into_its_class_rows():
    tok = PerClassTokenizer((4, 4), 3)
    masks = [np.eye(4, dtype=int), 2 * np.eye(4, dtype=int)[::-1]]
    batch = Collate()([{"tokens": torch.from_numpy(tok.encode(m))} for m in masks])
    assert batch["tokens"].shape[0] == 4  # 2 images x 2 classes, each image's rows adjacent
    for row, lengths in zip(batch["tokens"], batch["lengths"], strict=True):
        assert row[lengths - 1] == EOS and (row[lengths:] == PAD).all()
    joined = [np.concatenate([r[:n] for r, n in zip(batch["tokens"][i : i + 2], batch["lengths"][i : i + 2],
                                                   strict=True)]) for i in (0, 2)]
    assert all(np.array_equal(tok.decode(j), m) for j, m in zip(joined, masks, strict=True))
    # The auxiliary loss decodes an image's padded rows side by side: lenient decoding skips the PADs.
    padded_rows = batch["tokens"].reshape(2, -1).numpy()
    assert all(np.array_equal(tok.decode(r, errors="ignore"), m) for r, m in zip(padded_rows, masks, strict=True))


def test_micro_model_overfits_three_class_patches_exactly():
    """Teacher forcing over the class rows, then grammar-constrained greedy decoding of all rows in one batch
    (predict_batch joins them), must reproduce every mask; the pointer start head reads each start cell."""
    tok = PerClassTokenizer((8, 8), 3)
    model, images, batch = overfit_rows(tok, random_masks(np.random.default_rng(0), 3, 8, 3))
    with pytest.raises(ValueError, match="3 token sequences for 3 images; the tokenizer writes 2 per image"):
        model.loss(images, batch["tokens"][:3])


def test_each_image_writes_a_row_per_class_after_its_prompt():
    """Row r of the batch reads the prompt of class r % (C-1) + 1, an image's rows adjacent, and they differ.
    The model contracts (cache, strict decoding of joined rows, ...) run over the "per class" variant in
    tests/test_model_contracts.py."""
    torch.manual_seed(0)
    tok = PerClassTokenizer((6, 6), 4)
    model = create_model(micro_config(), tok)
    with torch.no_grad():  # an untrained decoder writes EOS at once: noise makes the rows differ
        for p in model.decoder.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    out = model.generate(torch.rand(2, 3, 64, 64), max_len=30, temperature=1.0,
                         generator=torch.Generator().manual_seed(7))
    assert out.tokens.shape[0] == 2 * 3
    assert len({tuple(row.tolist()) for row in out.tokens}) > 1
    assert model.first_tokens(6).tolist() == [*tok.prompts] * 2


def test_config_round_trip_yaml_tokenizer_checkpoint(tmp_path):
    config = load_config("mni152-tiny", ["tokenizer.scheme=per_class", "tokenizer.extent=length", "model.refine_band=0",
                                         "model.run_step=false", "model.max_seq_len=64"])
    tok = build_tokenizer(config)
    assert isinstance(tok, PerClassTokenizer) and tok.num_classes == 4 and tok.mask_size == (24, 24)
    model = build_model(config, tok)
    save_checkpoint(model, tmp_path / "model.safetensors")
    loaded = load_checkpoint(tmp_path / "model.safetensors")
    assert isinstance(loaded.tokenizer, PerClassTokenizer) and loaded.tokenizer.to_dict() == tok.to_dict()
    images = torch.rand(1, 3, 96, 96)
    generated = [m.eval().generate(images, max_len=8, temperature=0).tokens for m in (model, loaded)]
    assert generated[0].shape[0] == 3 and torch.equal(*generated)
