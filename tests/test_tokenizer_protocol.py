"""The written tokenizer interface: every tokenizer is a MaskTokenizer, its members behave as the
protocol says, from_dict rebuilds any of them, and count_runs counts what the lenient decoder keeps."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import sample_under_grammar
from rleseg.tokens import (
    EOS,
    TASKS,
    MaskTokenizer,
    PanopticTokenizer,
    Runs,
    Tokenizer,
    VideoTokenizer,
    from_dict,
    mask_to_runs,
)

SEMANTIC = np.array([[1, 1, 0, 2], [1, 0, 1, 2]])
INSTANCES = np.array([[5, 5, 0, 0], [5, 0, 7, 0]])
VIDEO = np.array([[[0, 1, 1, 0], [2, 0, 0, 0]], [[0, 1, 1, 0], [2, 2, 0, 1]]])


def _samples():
    """(tokenizer, the maps encode takes) of each task."""
    return [
        (Tokenizer((2, 4), 3, "lac"), (SEMANTIC,)),
        (PanopticTokenizer((2, 4), 3, thing_classes=[1]), (SEMANTIC, INSTANCES)),
        (PanopticTokenizer((2, 4), 3, thing_classes=[1], starts="2d", order="F"), (SEMANTIC, INSTANCES)),
        (VideoTokenizer(2, (2, 4), 3, "tac"), (VIDEO,)),
        (VideoTokenizer(2, (2, 4), 3, "volume", "class", "2d"), (VIDEO,)),
    ]


@pytest.mark.parametrize(
    ("tok", "maps"), _samples(), ids=["image", "panoptic", "panoptic-2d", "video-tac", "video-volume"]
)
def test_every_tokenizer_keeps_the_protocol(tok, maps):
    assert isinstance(tok, MaskTokenizer)
    assert tok.task in TASKS and tok.bos == tok.vocab.bos[tok.task]
    assert tok.mask_size == (2, 4) and tok.num_classes == 3 and tok.order in ("C", "F")
    tokens = tok.encode(*maps)
    assert tokens.dtype == np.int64 and tokens.ndim == 1 and tokens[-1] == EOS
    decoded = tok.decode(tokens)
    for got, want in zip(decoded if isinstance(decoded, tuple) else (decoded,), maps, strict=True):
        assert got.shape == want.shape
    if tok.task != "panoptic":  # panoptic instance ids come back renumbered
        assert np.array_equal(decoded, maps[0])
    runs = tok.decode_runs(tokens)
    assert isinstance(runs, Runs) and len(runs) == len(tok.decode_runs(tokens, errors="ignore"))
    assert tok.count_runs(tokens) == (len(runs), len(runs))
    class_tokens = len(tok.decode_groups(tokens)) if tok.task == "panoptic" else 0
    assert tokens.size - 1 == len(runs) * tok.tokens_per_run + class_tokens
    sampled = sample_under_grammar(tok, np.random.default_rng(0), 3, 24)
    for row in sampled:
        tok.decode(row)  # the grammar allows only sequences that decode strictly
    rebuilt = from_dict(tok.to_dict())
    assert type(rebuilt) is type(tok) and rebuilt.to_dict() == tok.to_dict()


def test_from_dict_names_the_types_it_knows():
    expected = "unknown tokenizer type 'audio'; expected one of 'image', 'per_class', 'bands', 'video', 'panoptic'"
    with pytest.raises(ValueError, match=re.escape(expected)):
        from_dict({"type": "audio"})
    old = Tokenizer((2, 4), 3).to_dict()
    del old["type"]  # written before tokenizers had types: an image tokenizer
    assert isinstance(from_dict(old), Tokenizer)


def test_count_runs_by_hand():
    tok = Tokenizer((2, 3), 3, "lac")
    good = tok.encode(np.array([[0, 1, 1], [2, 2, 0]]))  # 2 runs, 2 tokens each, then EOS
    assert tok.count_runs(good) == (2, 2)
    stray = np.concatenate([good[:2], [good[1]], good[2:]])  # a lac token where a start belongs
    assert tok.count_runs(stray) == (3, 2)
    assert tok.count_runs(good[:-2]) == (2, 1)  # cut inside the second run, no EOS
    assert tok.count_runs(np.append(good, good)) == (2, 2)  # tokens after EOS do not count
    pan = PanopticTokenizer((2, 4), 3, thing_classes=[1])
    tokens = pan.encode(SEMANTIC, INSTANCES)
    assert pan.count_runs(tokens) == (5, 5)
    assert pan.count_runs(np.append(tokens[:-2], EOS)) == (5, 3)  # the last group lost its class token


def test_video_counts_and_runs_are_its_image_tokenizers():
    tok = VideoTokenizer(2, (2, 4), 3, "volume")
    tokens = tok.encode(VIDEO)
    cut = tokens[:-2]
    assert tok.count_runs(cut) == tok.image.count_runs(cut)
    runs = tok.decode_runs(tokens)
    expected = mask_to_runs(VIDEO.reshape(4, 4), max_run=tok.max_run)  # frames stacked along the rows
    assert np.array_equal(runs.starts, expected.starts) and np.array_equal(runs.classes, expected.classes)


def test_panoptic_decode_runs_are_its_groups_runs_in_sequence_order():
    tok = PanopticTokenizer((2, 4), 3, thing_classes=[1])
    tokens = tok.encode(SEMANTIC, INSTANCES)
    for sequence, errors in ((tokens, "strict"), (np.append(tokens[:-2], EOS), "ignore")):
        groups = tok.decode_groups(sequence, errors)
        runs = tok.decode_runs(sequence, errors)
        for field in ("starts", "lengths", "classes"):
            assert getattr(runs, field).tolist() == [v for g in groups for v in getattr(g.runs, field).tolist()]
    # (start, length): instance 5 (0, 2) (4, 1) | instance 7 (6, 1) | stuff (3, 1) (7, 1), in that order
    runs = tok.decode_runs(tokens)
    assert list(zip(runs.starts.tolist(), runs.lengths.tolist(), runs.classes.tolist(), strict=True)) == [
        (0, 2, 1), (4, 1, 1), (6, 1, 1), (3, 1, 2), (7, 1, 2),
    ]


# ----------------------------------------------------------------------------- any integers
DECODERS = [
    Tokenizer((2, 4), 3, "lac"),
    Tokenizer((2, 4), 3, "class", "2d", "F"),
    Tokenizer((2, 4), 2, "binary", max_run=3),
    VideoTokenizer(2, (2, 4), 3, "tac"),
    VideoTokenizer(2, (2, 4), 3, "volume", "class", "2d"),
    PanopticTokenizer((2, 4), 3, thing_classes=[1]),
    PanopticTokenizer((2, 4), 3, thing_classes=[1], starts="2d", order="F"),
]
INT64 = np.iinfo(np.int64)
# Mostly tokens of the vocabularies (so that runs do form), and integers of every size around them.
ANY_TOKEN = st.one_of(
    st.integers(0, 60), st.integers(-(2**70), 2**70),
    st.sampled_from([INT64.max, INT64.max + 1, INT64.min, INT64.min - 1, 2**64 - 1, 2**64, -(2**64)]),
)


def _decode_everything(tok, tokens) -> None:
    tok.decode(tokens, errors="ignore")
    tok.decode_runs(tokens, errors="ignore")
    tok.count_runs(tokens)
    if tok.task == "panoptic":
        tok.decode_groups(tokens, errors="ignore")


@settings(max_examples=300, deadline=None)
@given(index=st.integers(0, len(DECODERS) - 1), tokens=st.lists(ANY_TOKEN, max_size=40))
def test_lenient_decoding_never_raises_on_python_integers(index, tokens):
    _decode_everything(DECODERS[index], tokens)


@settings(max_examples=100, deadline=None)
@given(index=st.integers(0, len(DECODERS) - 1), tokens=st.lists(st.integers(0, 2**64 - 1), max_size=40))
def test_lenient_decoding_never_raises_on_uint64_arrays(index, tokens):
    _decode_everything(DECODERS[index], np.array(tokens, dtype=np.uint64))


@pytest.mark.parametrize("big", [2**64, 2**63, -(2**63) - 1, 2**200])
def test_integers_outside_int64_are_out_of_vocabulary_tokens(big):
    tok = Tokenizer((2, 4), 3, "lac")
    tokens = tok.encode(SEMANTIC).tolist()
    assert tok.decode([big, 1], errors="ignore").tolist() == np.zeros((2, 4)).tolist()
    # Dropped like any out-of-vocabulary token: the runs around it are kept.
    spliced = [*tokens[:2], big, *tokens[2:]]
    assert np.array_equal(tok.decode(spliced, errors="ignore"), SEMANTIC)
    with pytest.raises(ValueError, match=rf"^token {big} at position 2 is an out-of-vocabulary token"):
        tok.decode(spliced)


def test_strict_errors_show_uint64_tokens_unwrapped():
    for tok in (Tokenizer((2, 4), 3), VideoTokenizer(2, (2, 4), 3, "tac"), PanopticTokenizer((2, 4), 3, [1])):
        tokens = np.array([2**63 + 5, EOS], dtype=np.uint64)
        with pytest.raises(ValueError, match=rf"^token {2**63 + 5} at position 0 is an out-of-vocabulary token"):
            tok.decode(tokens)
        assert tok.count_runs(tokens) == (1, 0)
    with pytest.raises(ValueError, match=r"tokens must be integers, got float 1\.5 at position 1"):
        Tokenizer((2, 4), 3).decode([2**64, 1.5], errors="ignore")  # ignore is about integers only


def test_count_runs_of_a_strictly_decoded_sequence_decodes_nothing_again(monkeypatch):
    tok = Tokenizer((2, 3), 3, "lac")
    pan = PanopticTokenizer((2, 4), 3, thing_classes=[1])
    cases = [(tok, tok.encode(np.array([[0, 1, 1], [2, 2, 0]]))), (pan, pan.encode(SEMANTIC, INSTANCES))]
    for tokenizer, tokens in cases:
        lenient = tokenizer.count_runs(tokens)
        monkeypatch.setattr(type(tokenizer), "decode_runs", lambda *args, **kwargs: pytest.fail("decoded again"))
        assert tokenizer.count_runs(tokens, errors="strict") == lenient
        monkeypatch.undo()
    with pytest.raises(ValueError, match="errors must be"):
        tok.count_runs([1], errors="replace")
