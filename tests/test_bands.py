"""Band sequences (tokens/bands.py): one run sequence per band of scan lines, decoded as rows of one batch.
Round trips, layout, strict errors, the grammar keeping each row to its band, the model and the config. The
model contracts (cache, strict decoding of joined rows, rows together == alone, ...) run over the "bands" and
"run step bands" variants in tests/test_model_contracts.py."""

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import labelled_masks, overfit_rows, random_masks, sample_under_grammar
from rleseg.data import Collate
from rleseg.experiment import build_model, build_tokenizer, load_config
from rleseg.models import load_checkpoint, save_checkpoint
from rleseg.tokens import EOS, BandTokenizer, MaskTokenizer, Tokenizer, from_dict, split_sequences


@settings(max_examples=60, deadline=None)
@given(labelled_masks(max_side=12), st.sampled_from(["lac", "class", "binary"]), st.sampled_from(["length", "end"]),
       st.sampled_from(["C", "F"]), st.integers(1, 12))
def test_random_masks_round_trip_band_by_band(masked, scheme, extent, order, bands):
    mask, num_classes = masked
    if scheme == "binary":
        mask, num_classes = (mask > 0).astype(np.uint8), 2
    lines = mask.shape[order == "F"]
    tok = BandTokenizer(mask.shape, num_classes, scheme, order, extent=extent, bands=min(bands, lines))
    tokens = tok.encode(mask)
    assert np.array_equal(tok.decode(tokens), mask)
    sequences = split_sequences(tokens)
    assert len(sequences) == tok.bands and all(s[-1] == EOS for s in sequences)
    flat = mask.reshape(-1, order=order)
    for (first, stop), seq in zip(tok.cells, sequences, strict=True):  # each band's runs paint its cells only
        painted = tok.image.decode(seq).reshape(-1, order=order)
        assert np.array_equal(painted[first:stop], flat[first:stop]) and not painted[:first].any()
        assert not painted[stop:].any()


def test_layout_keeps_the_image_tokens_and_bands_are_whole_scan_lines():
    tok = BandTokenizer((5, 4), 3, extent="end", order="F", bands=3)  # 4 columns in scan order: 1, 1, 2
    image = Tokenizer((5, 4), 3, extent="end", order="F")
    assert [(r.name, r.first, r.size) for r in image.vocab.ranges.values()] == \
        [(r.name, r.first, r.size) for r in tok.vocab.ranges.values()][:-1]
    assert tok.prompts == tuple(range(image.vocab.size, tok.vocab.size)) == tuple(tok.vocab["prompt"].token(range(3)))
    assert tok.cells.tolist() == [[0, 5], [5, 10], [10, 20]]
    mask = np.zeros((5, 4), np.uint8)
    mask[:, 0] = 1  # one run filling column 0: band 0 only
    mask[4, 1:] = 2  # (4, 1) ends band 1; (4, 2), (4, 3) in band 2
    sequences = split_sequences(tok.encode(mask))
    assert [len(s) for s in sequences] == [3, 3, 5]
    assert sequences[0][:2].tolist() == image.encode(mask * (np.arange(4) == 0))[:2].tolist()
    assert isinstance(tok, MaskTokenizer) and tok.task == "semantic"
    again = from_dict(tok.to_dict())
    assert isinstance(again, BandTokenizer) and again.to_dict() == tok.to_dict() and again.prompts == tok.prompts


def outside(tokens, tok):
    """Band 1's run (cell 7, class 1) made to end at cell 8, in band 2."""
    tokens = tokens.copy()
    tokens[6] = tok.vocab["end_class"].token(8)
    return tokens


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t, tok: t[:-1], "2 EOS token(s) in a sequence of 10 tokens; these sequences need one per band, 3"),
        (lambda t, tok: np.append(t, 7), "follows the EOS of the last band's sequence (3)"),
        (lambda t, tok: np.insert(t, 2, tok.prompts[1]), "is the prompt of band 1"),
        (outside, "sequence of band 1: run 0 covers cells 7 .. 8, outside the band's cells 4 .. 7"),
        (lambda t, tok: np.insert(t, 5, tok.vocab["start"].token(5)), "sequence of band 1 (positions count from 5"),
    ],
)
def test_strict_decoding_names_the_fault_and_lenient_decoding_keeps_the_rest(change, message):
    tok = BandTokenizer((3, 4), 3, bands=3, extent="end")
    mask = np.array([[0, 1, 1, 2], [0, 0, 0, 1], [2, 2, 0, 0]])
    bad = change(tok.encode(mask), tok)
    with pytest.raises(ValueError, match=re.escape(message)):
        tok.decode(bad)
    lenient = tok.decode(bad, errors="ignore")
    assert (lenient.shape == mask.shape and (lenient[1:] == mask[1:]).all()) or message.startswith("sequence of band 1")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=re.escape("bands must be in 1 .. 3 (the mask's scan lines), got 4")):
        BandTokenizer((3, 5), 3, bands=4)
    with pytest.raises(ValueError, match="rows are not whole images of 2 band sequences"):
        BandTokenizer((4, 4), 3, bands=2).grammar(3)
    with pytest.raises(ValueError, match="not a bands tokenizer"):
        BandTokenizer.from_dict(Tokenizer((3, 4), 3).to_dict())


# ----------------------------------------------------------------------------- grammar
def band_tokenizer(shape, max_run, scheme="lac", extent="end"):
    return BandTokenizer(shape, 4, scheme, max_run=max_run, extent=extent, bands=min(3, shape[0]))


@pytest.mark.parametrize("extent", ["length", "end"])
def test_grammar_samples_decode_strictly_and_stay_in_their_band(extent):
    """Rows drawn under the grammar (row r writes band r % bands), joined per image, decode strictly: every
    run inside its row's band, every sequence ended, also when the budget cuts them short."""
    rng = np.random.default_rng(3)
    for shape, max_run, max_len in [((5, 7), None, 40), ((4, 4), 3, 9), ((1, 9), 2, 25), ((3, 3), 9, 6)]:
        tok = band_tokenizer(shape, max_run, extent=extent)
        for _ in range(5):
            rows = sample_under_grammar(tok, rng, 2 * tok.bands, max_len)
            for image in rows.reshape(2, tok.bands, -1):
                flat = np.concatenate([row[: int(np.flatnonzero(row == EOS)[0]) + 1] for row in image])
                tok.decode(flat, errors="strict")


@pytest.mark.parametrize("scheme", ["lac", "class"])
def test_grammar_allows_every_encoded_band(scheme):
    tok = band_tokenizer((7, 6), 4, scheme)
    rng = np.random.default_rng(1)
    masks = [rng.integers(0, 4, (7, 6)), np.kron(rng.integers(0, 4, (4, 3)), np.ones((2, 2), int))[:7]]
    rows = [s for m in masks for s in split_sequences(tok.encode(m))]  # each image's bands adjacent
    width = max(map(len, rows))
    batch = np.array([np.pad(s, (0, width - len(s))) for s in rows])
    grammar = tok.grammar(len(rows))
    for step in range(width):
        assert grammar.allowed(width - step)[np.arange(len(batch)), batch[:, step]].all(), f"step {step}"
        grammar.advance(batch[:, step])
    assert grammar.done.all()


# ----------------------------------------------------------------------------- model and config
def test_micro_model_overfits_band_sequences_exactly():
    overfit_rows(BandTokenizer((8, 8), 3, extent="end", bands=4), random_masks(np.random.default_rng(0), 3, 8, 3))


def test_collate_splits_each_sample_into_its_bands():
    tok = BandTokenizer((4, 4), 3, bands=2)
    masks = [np.eye(4, dtype=int), 2 * np.eye(4, dtype=int)[::-1]]
    batch = Collate()([{"tokens": torch.from_numpy(tok.encode(m))} for m in masks])
    assert batch["tokens"].shape[0] == 4  # 2 images x 2 bands, each image's rows adjacent


def test_config_builds_bands_and_refuses_them_elsewhere(tmp_path):
    config = load_config("stardist-tiny", ["tokenizer.bands=4", "model.max_seq_len=64"])
    tok = build_tokenizer(config)
    assert isinstance(tok, BandTokenizer) and tok.bands == 4 and tok.extent == "end" and tok.mask_size == (32, 32)
    model = build_model(config, tok)
    assert model.config.start_head == "pointer" and model.refiner is not None
    save_checkpoint(model, tmp_path / "model.safetensors")
    loaded = load_checkpoint(tmp_path / "model.safetensors")
    assert isinstance(loaded.tokenizer, BandTokenizer) and loaded.tokenizer.to_dict() == tok.to_dict()
    for overrides in (["tokenizer.starts=2d", "tokenizer.extent=length"],
                      ["tokenizer.scheme=per_class", "tokenizer.extent=length"],
                      ["tokenizer.task=panoptic", "tokenizer.thing_classes=[1]", "tokenizer.extent=length"]):
        with pytest.raises(Exception, match="bands > 1 is for the semantic image tokenizer with 1-D starts"):
            build_tokenizer(load_config("stardist-tiny", ["tokenizer.bands=2", "model.refine_band=0", *overrides]))
