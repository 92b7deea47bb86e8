"""Masks as text (rleseg.tokens.text): lossless both ways for every image and panoptic tokenizer, strict reading
that accepts exactly the texts of valid sequences, lenient reading that keeps the well-formed runs."""

import doctest
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rleseg.tokens.text as text_module
from helpers import labelled_masks, sample_under_grammar
from rleseg.tokens import EOS, PanopticTokenizer, PerClassTokenizer, Tokenizer
from rleseg.tokens.text import MaskText

FORMS = [(scheme, starts, extent) for scheme, starts, extent in itertools.product(
    ["lac", "class", "binary"], ["1d", "2d"], ["length", "end"]) if not (extent == "end" and starts == "2d")]


def tokenizer_for(form, shape=(9, 7), classes=4, order="C"):
    scheme, starts, extent = form
    return Tokenizer(shape, 2 if scheme == "binary" else classes, scheme, starts, order, max_run=5, extent=extent)


def panoptic_tokenizer():
    return PanopticTokenizer((6, 5), 4, thing_classes=[1, 2])


def body(tokens):
    tokens = np.asarray(tokens)
    return tokens[: np.flatnonzero(tokens == EOS)[0] + 1]


def test_the_module_examples_run():
    assert doctest.testmod(text_module).failed == 0


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("order", ["C", "F"])
def test_every_sequence_the_grammar_allows_reads_back_exactly(form, order):
    tok = tokenizer_for(form, order=order)
    text = MaskText(tok)
    for sequence in sample_under_grammar(tok, np.random.default_rng(0), 12, 40):
        written = text.to_text(sequence)
        assert np.array_equal(text.from_text(written), body(sequence)), written
        assert text.to_text(text.from_text(written, errors="ignore")) == written


def test_panoptic_sequences_read_back_exactly():
    tok = panoptic_tokenizer()
    text = MaskText(tok, ["background", "cell", "nucleus", "sky"])
    for sequence in sample_under_grammar(tok, np.random.default_rng(1), 16, 30):
        written = text.to_text(sequence)
        assert np.array_equal(text.from_text(written), body(sequence)), written
    semantic = np.zeros((6, 5), np.int64)
    instances = np.zeros((6, 5), np.int64)
    semantic[0:2, 0:2], instances[0:2, 0:2] = 1, 4
    semantic[3:5, 2:4], instances[3:5, 2:4] = 2, 9
    semantic[5] = 3
    written = text.encode(semantic, instances)
    assert written == "<r 0 2> <r 5 2> <g cell> <r 17 2> <r 22 2> <g nucleus> <r 25 5> <g sky>"
    decoded_semantic, decoded_instances = text.decode(written)
    assert np.array_equal(decoded_semantic, semantic)
    assert len(np.unique(decoded_instances[semantic > 0])) == 3


@settings(max_examples=60, deadline=None)
@given(labelled_masks(max_side=12), st.sampled_from(FORMS))
def test_masks_round_trip_through_text(mask_and_classes, form):
    mask, classes = mask_and_classes
    tok = tokenizer_for(form, mask.shape, classes)
    if tok.num_classes < classes:  # binary: two classes only
        mask = (mask > 0).astype(np.uint8)
    text = MaskText(tok)
    assert np.array_equal(text.decode(text.encode(mask)), mask)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_strict_reading_accepts_exactly_the_texts_of_valid_sequences(data):
    """Any edit of a valid text either raises, or is itself the text of a valid sequence (then it reads back
    to tokens whose text is the edited text, which decodes strictly)."""
    tok = tokenizer_for(data.draw(st.sampled_from(FORMS)), shape=(5, 4), classes=3)
    text = MaskText(tok, ["bg", "a", "b"][: tok.num_classes])
    sequence = sample_under_grammar(tok, np.random.default_rng(data.draw(st.integers(0, 999))), 1, 16)[0]
    written = text.to_text(sequence)
    at = data.draw(st.integers(0, len(written)))
    edit = data.draw(st.sampled_from(["insert", "delete", "replace"]))
    char = data.draw(st.sampled_from([*"0123456789 <>rgabx"]))
    edited = {"insert": written[:at] + char + written[at:], "delete": written[:at] + written[at + 1 :],
              "replace": written[:at] + char + written[at + 1 :]}[edit]
    try:
        tokens = text.from_text(edited)
    except ValueError as error:
        assert "text" in str(error)
        return
    assert text.to_text(tokens) == edited
    tok.decode(tokens, errors="strict")


def test_strict_errors_name_the_place_and_what_was_expected():
    text = MaskText(Tokenizer((4, 4), 3), ["background", "cell", "nucleus"])
    with pytest.raises(ValueError, match=r"position 3 .*expected '<r 0'"):
        text.from_text("<r x 2 cell>")
    with pytest.raises(ValueError, match="ends inside a run"):
        text.from_text("<r 1 2 cell")
    with pytest.raises(ValueError, match="position 17"):
        text.from_text("<r 5 2 cell> <r 1 1 cell>")  # runs out of scan order
    with pytest.raises(ValueError, match="position 9"):
        text.from_text("<r 3 2 ce1l>")  # no such class


def test_lenient_reading_keeps_the_well_formed_runs():
    text = MaskText(Tokenizer((4, 4), 3), ["background", "cell", "nucleus"])
    mask = text.decode("junk <r 1 2 cell> <r 3 9 cell> <r 2 1 squid> <r 12 4 nucleus> <r 6", errors="ignore")
    expected = np.zeros((4, 4), np.uint8)
    expected[0, 1:3], expected[3] = 1, 2
    assert np.array_equal(mask, expected)


def test_bad_arguments_are_refused():
    tok = Tokenizer((4, 4), 3)
    with pytest.raises(ValueError, match="3 classes"):
        MaskText(tok, ["background", "cell"])
    with pytest.raises(ValueError, match="distinct words"):
        MaskText(tok, ["background", "two words", "x"])
    with pytest.raises(ValueError, match="PerClassTokenizer"):
        MaskText(PerClassTokenizer((4, 4), 3))
    with pytest.raises(ValueError, match="errors must be"):
        MaskText(tok).from_text("", errors="replace")
    with pytest.raises(ValueError):
        MaskText(tok).to_text([tok.vocab["start"].first + 3, EOS])  # a run cut short is no mask


def test_the_grammar_over_characters_keeps_a_budget_that_can_always_be_met():
    """From every state along any valid text, needed() is at most the longest run (and group close), and the
    text may end or some character lowers needed() by one: so a writer that keeps needed() within its budget
    (one character a token) can always finish."""
    for tok in (tokenizer_for(("lac", "1d", "end")), tokenizer_for(("class", "2d", "length")), panoptic_tokenizer()):
        text = MaskText(tok)
        bound, alphabet = text.longest_run() + text.longest_close(), sorted(text.alphabet())
        for sequence in sample_under_grammar(tok, np.random.default_rng(2), 8, 30):
            grammar = text.grammar()
            for char in text.to_text(sequence) + "$":
                assert grammar.needed() <= bound
                if not grammar.can_end():
                    lowered = [c for c in alphabet if (probe := grammar.copy()).feed(c)
                               and probe.needed() <= grammar.needed() - 1]
                    assert lowered, (text.to_text(grammar.tokens), grammar.partial)
                if char != "$":
                    assert grammar.feed(char)
            assert grammar.can_end() and grammar.needed() == 0


def test_stats_count_the_text_form_in_a_language_models_tokens(tmp_path, capsys):
    from PIL import Image
    from tokenizers import Tokenizer as TextTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    from rleseg.cli import main
    from rleseg.stats import StatsOptions, folder_stats
    from rleseg.tokens import downsample_mask

    bpe = TextTokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(["<r 12 34 class1> <r 40 3 class2>"] * 5,
                            trainers.BpeTrainer(vocab_size=290, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.save(str(tmp_path / "tokenizer.json"))
    folder, masks = tmp_path / "masks", []
    folder.mkdir()
    for i in range(3):
        mask = np.zeros((32, 32), np.uint8)
        mask[4 + i : 20, 3:17 + i], mask[22:30, 10 + i :] = 1, 2
        Image.fromarray(mask).save(folder / f"{i}.png")
        masks.append(mask)
    options = StatsOptions(factors=(1, 4), schemes=("lac",), starts=("1d",), text_tokenizer=str(tmp_path))
    rows = {row.factor: row for row in folder_stats(folder, options).rows}
    for factor in (1, 4):
        texts = [MaskText(Tokenizer((32 // factor,) * 2, 3)).encode(downsample_mask(m, factor)) for m in masks]
        lengths = [len(bpe.encode(t, add_special_tokens=False).ids) for t in texts]
        assert rows[factor].text_mean == pytest.approx(np.mean(lengths)) and rows[factor].text_p99 == max(lengths)
    assert rows[1].text_mean > rows[4].text_mean
    assert main(["stats", str(folder), "--text-tokenizer", str(tmp_path / "none.json")]) == 2
    assert "none.json" in capsys.readouterr().err
