"""Run ends as tokens (tokenizer extent "end"): a run written as its start and its last cell, both flat
indices that the pointer head chooses from the image; "lac" fuses the end with the class. And one decoder
step per run (``model.run_step``), which these runs allow: the decoder reads a run's start and end as one
input and writes both from one state. That generation matches training's teacher forcing, cached ==
uncached and the rest is tests/test_model_contracts.py's ("lac ends", "run step" ... variants)."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import (
    assert_grammar_allows,
    assert_grammar_allows_blocky_masks,
    assert_grammar_samples_decode,
    labelled_masks,
    micro_config,
    overfit_exactly,
    padded,
    random_masks,
    stardist_mask,
    variant_images,
    variant_model,
)
from rleseg.experiment import load_config
from rleseg.models import create_model
from rleseg.tokens import EOS, PerClassTokenizer, Tokenizer, downsample_mask
from rleseg.typed_yaml import ConfigError

SCHEMES = ["lac", "class", "binary"]
COMBOS = list(itertools.product(SCHEMES, ["C", "F"]))


def ends_tokenizer(scheme, shape, num_classes, order="C", max_run=None):
    return Tokenizer(shape, 2 if scheme == "binary" else num_classes, scheme, "1d", order, max_run, extent="end")


def lengths_tokenizer(tok):
    return Tokenizer(tok.mask_size, tok.num_classes, tok.scheme, "1d", tok.order, tok.max_run)


# ------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize(("scheme", "order"), COMBOS)
@settings(max_examples=60, deadline=None)
@given(sample=labelled_masks(), max_run=st.one_of(st.none(), st.integers(1, 40)))
def test_round_trip_random_masks_as_the_same_runs(scheme, order, sample, max_run):
    mask, num_classes = sample
    if scheme == "binary":
        mask = (mask > 0).astype(np.uint8)
    tok = ends_tokenizer(scheme, mask.shape, num_classes, order, max_run)
    tokens = tok.encode(mask)
    assert tokens[-1] == EOS and np.sum(tokens == EOS) == 1
    assert np.array_equal(tok.decode(tokens), mask)
    assert np.array_equal(tok.decode(tokens, errors="ignore"), mask)
    lengths = lengths_tokenizer(tok)  # the runs (and so the sequence length) are those of extent "length"
    expected, runs = lengths.decode_runs(lengths.encode(mask)), tok.decode_runs(tokens)
    assert tokens.size == lengths.encode(mask).size
    for name in ("starts", "lengths", "classes"):
        assert np.array_equal(getattr(runs, name), getattr(expected, name))


def test_layout_and_values_by_hand():
    tok = ends_tokenizer("lac", (2, 3), 3)
    # class 1 over cells 1..3 (across the row boundary), class 2 at cell 5
    mask = np.array([[0, 1, 1], [1, 0, 2]])
    start, fused = tok.vocab["start"], tok.vocab["end_class"]
    assert list(tok.vocab.ranges) == ["end_class", "start"] and fused.stop == start.first
    assert fused.size == 6 * 2 and start.size == 6
    assert tok.encode(mask).tolist() == [start.token(1), fused.token(3), start.token(5), fused.token(6 + 5), EOS]
    binary = ends_tokenizer("binary", (2, 3), 2)
    assert list(binary.vocab.ranges) == ["end", "start"] and binary.slots == ("start", "end")
    classes = ends_tokenizer("class", (2, 3), 3)
    assert classes.slots == ("start", "end", "class")
    assert classes.encode(mask).tolist()[:3] == [classes.vocab["start"].token(1), classes.vocab["end"].token(3),
                                                 classes.vocab["class"].token(1)]


def test_serialisation_and_checkpoints_from_before_extents():
    tok = ends_tokenizer("class", (8, 8), 4)
    data = tok.to_dict()
    assert data["extent"] == "end" and Tokenizer.from_dict(data).vocab.to_dict() == tok.vocab.to_dict()
    old = lengths_tokenizer(tok).to_dict()
    del old["extent"]  # written before the argument existed: run lengths
    assert Tokenizer.from_dict(old).extent == "length"


def test_real_masks_round_trip_and_stay_within_the_grammar():
    semantic = (stardist_mask() > 0).astype(np.uint8)
    patches = [downsample_mask(semantic[r : r + 128, c : c + 128], 4, "mode") for r in (0, 256) for c in (0, 384)]
    tok = ends_tokenizer("binary", (32, 32), 2)
    sequences = [tok.encode(p) for p in patches]
    assert all(np.array_equal(tok.decode(s), p) for s, p in zip(sequences, patches, strict=True))
    assert_grammar_allows(tok, sequences)


# ------------------------------------------------------------------------------------------ decoding errors
def _valid(scheme):
    tok = ends_tokenizer(scheme, (6, 7), 4, max_run=5)
    mask = np.zeros((6, 7), np.uint8)
    mask[1, 1:4] = 1
    mask[3, 2:6] = tok.num_classes - 1
    return tok, tok.encode(mask)


def _with_end(tok, tokens, run, last):
    """``tokens`` with run ``run``'s end token saying cell ``last`` (its class kept)."""
    out, slot = tokens.copy(), tok.slots.index("end_class" if tok.scheme == "lac" else "end")
    position = run * tok.tokens_per_run + slot
    span = tok.vocab[tok.slots[slot]]
    cls = span.value(out[position]) // tok.num_pixels if tok.scheme == "lac" else 0
    out[position] = span.token(cls * tok.num_pixels + last)
    return out


@pytest.mark.parametrize("scheme", SCHEMES)
def test_strict_names_each_malformation_and_ignore_drops_it(scheme):
    tok, tokens = _valid(scheme)
    k, body = tok.tokens_per_run, tokens[:-1]
    first_start = tok.vocab["start"].value(tokens[0])  # cell 8; the run ends at cell 10
    overlapping = _with_end(tok, tokens, 1, 12)
    overlapping[k] = tok.vocab["start"].token(10)
    cases = {
        rf"run 0 \(tokens at position 0\) ends at cell {first_start - 1}, before its start {first_start}":
            _with_end(tok, tokens, 0, first_start - 1),
        rf"from cell {first_start} to {first_start + 5} is 6 cells long, above max_run 5":
            _with_end(tok, tokens, 0, first_start + 5),
        "run 1 .* starts at 10, before the end 11 of the previous run": overlapping,
        "expected an end": np.concatenate([body[:1], body[:1], body[2:], [EOS]]),
        "partial run": np.concatenate([body, body[: k - 1], [EOS]]),
    }
    for message, sequence in cases.items():
        with pytest.raises(ValueError, match=message):
            tok.decode(sequence)
        decoded = tok.decode(sequence, errors="ignore")
        assert decoded.shape == tok.mask_size and decoded.max() < tok.num_classes
    # Lenient decoding drops a run that ends before its start and keeps the other one.
    kept = tok.decode(_with_end(tok, tokens, 0, first_start - 1), errors="ignore")
    assert kept[1].max() == 0 and kept[3].max() == tok.num_classes - 1


@settings(max_examples=80, deadline=None)
@given(tokens=st.lists(st.integers(-5, 300), max_size=30))
def test_lenient_decoding_never_raises(tokens):
    for scheme in SCHEMES:
        tok = ends_tokenizer(scheme, (4, 6), 3)
        mask = tok.decode(np.array([*tokens, EOS], dtype=np.int64), errors="ignore")
        assert mask.shape == (4, 6) and mask.max() < tok.num_classes


# ------------------------------------------------------------------------------------------ grammar
@pytest.mark.parametrize(("scheme", "order"), COMBOS)
def test_grammar_samples_always_decode_strictly(scheme, order):
    assert_grammar_samples_decode(lambda shape, max_run: ends_tokenizer(scheme, shape, 4, order, max_run))


@pytest.mark.parametrize(("scheme", "order"), COMBOS)
def test_grammar_allows_every_ground_truth_sequence(scheme, order):
    assert_grammar_allows_blocky_masks(ends_tokenizer(scheme, (6, 9), 4, order, max_run=5))


@pytest.mark.parametrize("scheme", ["lac", "binary"])
def test_grammar_ends_lie_between_the_start_and_max_run_or_the_mask_end(scheme):
    tok = ends_tokenizer(scheme, (4, 5), 3, max_run=3)
    span = tok.vocab[tok.slots[1]]
    for start, expected in ((6, [6, 7, 8]), (18, [18, 19])):
        grammar = tok.grammar(1)
        grammar.advance(np.array([tok.vocab["start"].token(start)]))
        allowed = span.value(np.flatnonzero(grammar.allowed(10)[0, span.first : span.stop]) + span.first)
        classes = 1 if scheme == "binary" else 2
        assert sorted(allowed.tolist()) == [c * 20 + e for c in range(classes) for e in expected]
        grammar.advance(np.array([span.token(expected[-1])]))
        starts = tok.vocab["start"]
        next_starts = np.flatnonzero(grammar.allowed(10)[0, starts.first : starts.stop])
        assert next_starts.tolist() == list(range(expected[-1] + 1, 20))  # after the run's last cell


def test_refused_where_a_run_end_cannot_be_a_cell():
    with pytest.raises(ValueError, match="needs starts '1d'"):
        Tokenizer((8, 8), 3, "lac", "2d", extent="end")
    with pytest.raises(ValueError, match="extent must be one of"):
        Tokenizer((8, 8), 3, extent="ends")
    for overrides in (["tokenizer.scheme=per_class"], ["tokenizer.task=panoptic", "tokenizer.thing_classes=[1]"]):
        with pytest.raises(ConfigError, match="extent 'end' is for the semantic image tokenizer"):
            load_config("stardist-tiny", ["tokenizer.extent=end", "model.refine_band=0", *overrides])


# ------------------------------------------------------------------------------------------ the model
def end_pointer_model(tokenizer, **changes):
    torch.manual_seed(0)
    model = create_model(micro_config(start_head="pointer", **changes), tokenizer)
    with torch.no_grad():  # the content projections start at zero; give them something to carry
        model.pointer.start_proj.weight.normal_(0.0, 0.05)
        model.pointer.end.proj.weight.normal_(0.0, 0.05)
    return model


@pytest.mark.parametrize("scheme", ["lac", "binary"])
def test_end_rows_carry_the_features_of_their_cell_and_class(scheme):
    tok = ends_tokenizer(scheme, (16, 16), 3)
    model = end_pointer_model(tok).eval()
    encoded = model.encode(torch.rand(2, 3, 64, 64))
    table, cells = encoded.table, encoded.cells
    end = tok.vocab[tok.slots[1]]
    content = table[:, end.first : end.stop] - model.decoder.embedding_table()[end.first : end.stop]
    projected = model.pointer.end.proj(cells)  # (B, S, D)
    kinds = len(model.pointer.end.kinds)
    assert kinds == (2 if scheme == "lac" else 1) and end.size == kinds * 256
    for kind in range(kinds):  # class-major, as the fused values: row c * S + cell
        torch.testing.assert_close(content[:, kind * 256 : (kind + 1) * 256], projected + model.pointer.end.kinds[kind])
    # The end row and the start row of one cell share their geometry but not their content.
    start = tok.vocab["start"]
    torch.testing.assert_close(model.decoder.geometry[end.first : end.first + 256],
                               model.decoder.geometry[start.first : start.stop])
    assert not torch.allclose(table[:, end.first : end.first + 256], table[:, start.first : start.stop])


def test_small_end_pointer_model_overfits_four_images_exactly():
    torch.manual_seed(0)
    tok = ends_tokenizer("lac", (16, 16), 3)
    masks = random_masks(np.random.default_rng(0), 4, 16, 3)
    model = create_model(micro_config(dim=64, mlp_dim=128, start_head="pointer"), tok)
    overfit_exactly(model, torch.rand(4, 3, 64, 64), padded(tok, masks), masks)


# ------------------------------------------------------------------------------------------ one step per run
def test_an_odd_budget_ends_every_sequence_in_eos_within_it():
    """A step writes two tokens; a budget that ends between them still ends every sequence in EOS."""
    model = variant_model("run step")
    tokenizer = model.tokenizer
    for max_len in (1, 2, 3, 8, 9):
        out = model.generate(variant_images(tokenizer, 4), max_len=max_len, temperature=0)
        assert out.tokens.shape[1] <= max_len
        assert (out.tokens == EOS).any(dim=1).all()
        for row in out.tokens.numpy():
            tokenizer.decode(row, errors="strict")


@pytest.mark.parametrize("tokenizer", [
    Tokenizer((6, 10), 3, "lac"),  # lengths
    Tokenizer((6, 10), 3, "class", extent="end"),  # class as its own token: three a run
    Tokenizer((6, 10), 3, "lac", starts="2d"),
    PerClassTokenizer((6, 10), 3),
], ids=["lengths", "class token", "2-D starts", "per class"])
def test_tokenizers_without_start_end_runs_are_refused_by_name(tokenizer):
    with pytest.raises(ValueError, match=r"model.run_step needs runs of a start and an end.*this tokenizer writes"):
        create_model(micro_config(run_step=True), tokenizer)


def test_run_step_model_learns_masks_exactly():
    tokenizer = Tokenizer((8, 8), 3, "lac", extent="end")
    masks = random_masks(np.random.default_rng(0), 4, 8, 3)
    torch.manual_seed(0)
    model = create_model(micro_config(run_step=True, dim=64, mlp_dim=128), tokenizer)
    overfit_exactly(model, torch.rand(4, 3, 64, 64), padded(tokenizer, masks), masks, lr=2e-3)
