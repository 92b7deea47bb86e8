"""Contracts of the image tokenizer: lossless round trips, token layout, strict/ignore decoding, grammar."""

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import assert_grammar_allows, labelled_masks, sample_under_grammar
from rleseg.tokens import (
    EOS,
    PAD,
    PanopticTokenizer,
    PerClassTokenizer,
    Runs,
    Tokenizer,
    VideoTokenizer,
    downsample_mask,
    from_dict,
    mask_to_runs,
    runs_to_mask,
    upsample_mask,
)

SCHEMES = ["lac", "class", "binary"]
STARTS = ["1d", "2d"]
ORDERS = ["C", "F"]
COMBOS = list(itertools.product(SCHEMES, STARTS, ORDERS))
TOKENS_PER_RUN = {
    ("binary", "1d"): 2, ("binary", "2d"): 3, ("class", "1d"): 3,
    ("class", "2d"): 4, ("lac", "1d"): 2, ("lac", "2d"): 3,
}


def make_tokenizer(scheme, starts, order, shape, num_classes, max_run=None):
    return Tokenizer(shape, 2 if scheme == "binary" else num_classes, scheme, starts, order, max_run)


# ------------------------------------------------------------------------------------------ runs
@settings(max_examples=150, deadline=None)
@given(labelled_masks(), st.sampled_from(ORDERS), st.integers(1, 30))
def test_runs_are_sorted_disjoint_split_and_lossless(sample, order, max_run):
    mask, _ = sample
    runs = mask_to_runs(mask, order, max_run)
    assert runs.starts.dtype == runs.lengths.dtype == runs.classes.dtype == np.int64
    assert np.all(runs.starts[1:] >= runs.ends[:-1])
    assert np.all((runs.lengths >= 1) & (runs.lengths <= max_run))
    assert np.all(runs.classes > 0)
    assert np.array_equal(runs.classes, mask.ravel(order)[runs.starts])
    assert np.array_equal(runs_to_mask(runs, mask.shape, order), mask)


def test_column_major_runs_are_row_major_runs_of_the_transpose():
    mask = np.random.default_rng(0).integers(0, 4, (9, 13))
    runs_f, runs_c = mask_to_runs(mask, "F", 5), mask_to_runs(mask.T, "C", 5)
    for name in ("starts", "lengths", "classes"):
        assert np.array_equal(getattr(runs_f, name), getattr(runs_c, name))


def test_long_runs_split_from_their_start_and_continue_across_rows():
    mask = np.zeros((3, 4), np.uint8)
    mask.ravel()[2:11] = 1  # one run of 9 crossing two row boundaries
    runs = mask_to_runs(mask)  # default max_run = W = 4
    assert runs.starts.tolist() == [2, 6, 10]
    assert runs.lengths.tolist() == [4, 4, 1]
    assert mask_to_runs(mask, max_run=100).lengths.tolist() == [9]


def test_overlapping_runs_paint_in_order_later_wins():
    runs = Runs(np.array([0, 2]), np.array([4, 4]), np.array([1, 2]))
    assert runs_to_mask(runs, (1, 6)).tolist() == [[1, 1, 2, 2, 2, 2]]
    reversed_runs = Runs(np.array([2, 0]), np.array([4, 4]), np.array([2, 1]))
    assert runs_to_mask(reversed_runs, (1, 6)).tolist() == [[1, 1, 1, 1, 2, 2]]


# ------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize(("scheme", "starts", "order"), COMBOS)
@settings(max_examples=60, deadline=None)
@given(sample=labelled_masks(), max_run=st.one_of(st.none(), st.integers(1, 40)))
def test_round_trip_every_scheme(scheme, starts, order, sample, max_run):
    mask, num_classes = sample
    if scheme == "binary":
        mask = (mask > 0).astype(np.uint8)
    tok = make_tokenizer(scheme, starts, order, mask.shape, num_classes, max_run)
    tokens = tok.encode(mask)
    assert tokens.dtype == np.int64 and tokens[-1] == EOS and np.sum(tokens == EOS) == 1
    assert np.all((tokens > PAD) & (tokens < tok.vocab.size))
    decoded = tok.decode(tokens)
    assert decoded.shape == mask.shape and np.array_equal(decoded, mask)
    assert np.array_equal(tok.decode(tokens, errors="ignore"), mask)
    runs = mask_to_runs(mask, order, tok.max_run)
    assert tokens.size == len(runs) * TOKENS_PER_RUN[scheme, starts] + 1


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (37, 1), (1024, 1024)])
@pytest.mark.parametrize(("scheme", "starts", "order"), COMBOS)
def test_round_trip_edge_shapes_and_large(shape, scheme, starts, order):
    rng = np.random.default_rng(sum(shape))
    num_classes = 2 if scheme == "binary" else 5
    tok = make_tokenizer(scheme, starts, order, shape, num_classes)
    small = rng.integers(0, num_classes, (-(-shape[0] // 16), -(-shape[1] // 16)))
    for mask in (np.zeros(shape, np.uint8), np.ones(shape, np.uint8), upsample_mask(small, 16, shape)):
        assert np.array_equal(tok.decode(tok.encode(mask)), mask)
    single = np.zeros(shape, np.uint8)
    single[shape[0] // 2, shape[1] // 2] = 1
    tokens = tok.encode(single)
    assert tokens.size == TOKENS_PER_RUN[scheme, starts] + 1
    assert np.array_equal(tok.decode(tokens), single)


def test_many_classes_lac_no_overflow():
    """LAC on uint8 labels up to 255: the fused value must be computed in int64 (reference defect 4)."""
    tok = Tokenizer((16, 16), 256, "lac")
    mask = np.arange(256, dtype=np.uint8).reshape(16, 16)
    mask[5] = 255  # a full-row run of the highest class
    tokens = tok.encode(mask)
    lac = tok.vocab["lac"]
    values = lac.value(tokens[1:-1:2])
    runs = mask_to_runs(mask)
    assert np.array_equal(values, 16 * (runs.classes - 1) + runs.lengths)
    assert values.max() == 16 * 254 + 16
    assert np.array_equal(tok.decode(tokens), mask)
    assert tok.decode(tokens).dtype == np.uint8
    assert Tokenizer((4, 4), 300, "class").decode([EOS]).dtype == np.uint16


def test_lac_formula_and_inverse():
    tok = Tokenizer((4, 10), 4, "lac")
    mask = np.zeros((4, 10), np.uint8)
    mask[1, 2:5] = 3  # start 12, length 3, class 3
    tokens = tok.encode(mask)
    assert tokens.tolist() == [tok.vocab["start"].token(12), tok.vocab["lac"].token(10 * 2 + 3), EOS]


def test_vocab_layout_is_contiguous_and_paper_sized():
    tok = Tokenizer((80, 80), 3, "lac")
    ranges = sorted(tok.vocab.ranges.values(), key=lambda r: r.first)
    assert ranges[0].first == 5  # PAD, EOS and three BOS tokens come first
    assert all(a.stop == b.first for a, b in itertools.pairwise(ranges))
    assert tok.vocab.size == 5 + 80 * 2 + 80 * 80
    assert len({EOS, PAD, *tok.vocab.bos.values()}) == 5
    assert Tokenizer((80, 80), 3, "lac", "2d").vocab.size == 5 + 160 + 80
    assert Tokenizer((80, 80), 3, "class").vocab.size == 5 + 2 + 80 + 6400


def test_paper_blob_example_token_counts():
    """docs/method.md section 3: 4 blobs on an 80x80 3-class mask cost LAC 1-D n*2, class 1-D and LAC 2-D n*3."""
    yy, xx = np.mgrid[:80, :80]
    mask = np.zeros((80, 80), np.uint8)
    for cy, cx, r, c in [(20, 20, 9, 1), (55, 25, 12, 2), (25, 60, 10, 2), (60, 60, 8, 1)]:
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = c
    n = len(mask_to_runs(mask))
    assert Tokenizer((80, 80), 3, "lac").encode(mask).size == 2 * n + 1
    assert Tokenizer((80, 80), 3, "class").encode(mask).size == 3 * n + 1
    assert Tokenizer((80, 80), 3, "lac", "2d").encode(mask).size == 3 * n + 1


def test_two_d_starts_are_major_minor_in_scan_order():
    mask = np.zeros((3, 5), np.uint8)
    mask[2, 1] = 1
    for order, expected in [("C", [2, 1]), ("F", [1, 2])]:
        tok = Tokenizer((3, 5), 2, "binary", "2d", order)
        assert tok.vocab["coord"].value(tok.encode(mask)[:2]).tolist() == expected


# ------------------------------------------------------------------------------------------ decoding errors
def _valid_tokens(scheme, starts, order="C"):
    tok = make_tokenizer(scheme, starts, order, (6, 7), 4)
    mask = np.zeros((6, 7), np.uint8)
    mask[1, 1:4] = 1
    mask[3, 2:6] = tok.num_classes - 1
    return tok, tok.encode(mask)


@pytest.mark.parametrize(("scheme", "starts"), list(itertools.product(SCHEMES, STARTS)))
def test_strict_raises_on_each_malformation(scheme, starts):
    tok, tokens = _valid_tokens(scheme, starts)
    k = tok.tokens_per_run
    body = tokens[:-1]
    cases = {
        "no EOS": body,
        "follows EOS": np.append(tokens, body[0]),
        "expected": np.concatenate([body[1:], [body[0], EOS]]),  # every slot shifted
        "partial run": np.concatenate([body, body[: k - 1], [EOS]]),
        "out-of-vocabulary": np.concatenate([[tok.vocab.size + 3], body[1:], [EOS]]),
        "BOS": np.concatenate([[tok.bos], body[1:], [EOS]]),
        "before the end": np.concatenate([body[k:], body[:k], [EOS]]),  # unsorted runs
    }
    past = body[:k].copy()
    if starts == "1d":
        past[0] = tok.vocab["start"].token(tok.num_pixels - 1)
        length_slot = k - 1 if scheme != "class" else k - 2
        past[length_slot] = tok.vocab[tok.slots[length_slot]].token(3)
        cases["ends past the mask"] = np.append(past, EOS)
    else:
        past[0] = tok.vocab["coord"].token(6)  # row 6 of a 6-row grid (coordinates share max(H, W) = 7)
        cases["outside"] = np.append(past, EOS)
    for expected_words, sequence in cases.items():
        with pytest.raises(ValueError, match=expected_words):
            tok.decode(sequence, errors="strict")
        decoded = tok.decode(sequence, errors="ignore")
        assert decoded.shape == tok.mask_size and decoded.max() < tok.num_classes


def test_strict_error_names_position_and_kind():
    tok, tokens = _valid_tokens("lac", "1d")
    bad = tokens.copy()
    bad[2] = bad[1]  # a LAC token where a start is due
    with pytest.raises(ValueError, match=r"position 2 is a lac token .* expected a start token"):
        tok.decode(bad)


@pytest.mark.parametrize(("scheme", "starts", "order"), COMBOS)
def test_ignore_never_raises_on_random_and_mutated_sequences(scheme, starts, order):
    rng = np.random.default_rng(7)
    tok, tokens = _valid_tokens(scheme, starts, order)
    for trial in range(400):
        if trial % 2:
            sequence = rng.integers(-5, tok.vocab.size + 5, rng.integers(0, 40))
        else:
            sequence = tokens.copy()
            where = rng.integers(0, sequence.size, 3)
            sequence[where] = rng.integers(0, tok.vocab.size, 3)
            sequence = np.insert(sequence, rng.integers(0, sequence.size), rng.integers(0, tok.vocab.size))
        mask = tok.decode(sequence, errors="ignore")
        assert mask.shape == tok.mask_size and mask.dtype == np.uint8 and mask.max() < tok.num_classes


def test_ignore_resynchronises_after_a_stray_token():
    tok, tokens = _valid_tokens("lac", "1d")
    noisy = np.insert(tokens, 1, tokens[0])  # a duplicated start token
    assert np.array_equal(tok.decode(noisy, errors="ignore"), tok.decode(tokens))
    assert np.array_equal(tok.decode(tokens[:-1], errors="ignore"), tok.decode(tokens))  # missing EOS


def test_ignore_drops_everything_after_eos():
    tok, tokens = _valid_tokens("class", "1d")
    assert tok.decode(np.concatenate([[EOS], tokens]), errors="ignore").max() == 0


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="num_classes"):
        Tokenizer((4, 4), 1)
    with pytest.raises(ValueError, match="binary"):
        Tokenizer((4, 4), 3, "binary")
    with pytest.raises(ValueError, match="max_run"):
        Tokenizer((4, 4), 3, max_run=0)
    with pytest.raises(ValueError, match="scheme"):
        Tokenizer((4, 4), 3, "rle")
    with pytest.raises(ValueError, match="order"):
        Tokenizer((4, 4), 3, order="A")
    tok = Tokenizer((4, 4), 3)
    with pytest.raises(ValueError, match="shape"):
        tok.encode(np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="label 3"):
        tok.encode(np.full((4, 4), 3))
    with pytest.raises(ValueError, match="integer"):
        tok.encode(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="errors"):
        tok.decode([EOS], errors="replace")
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(np.zeros((2, 2), np.int64))


@pytest.mark.parametrize(("scheme", "starts", "order"), COMBOS)
def test_to_dict_round_trips_through_json(scheme, starts, order):
    tok = make_tokenizer(scheme, starts, order, (12, 9), 5, max_run=4)
    again = Tokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.to_dict() == tok.to_dict()
    mask = np.random.default_rng(1).integers(0, tok.num_classes, (12, 9))
    assert np.array_equal(again.encode(mask), tok.encode(mask))
    tampered = tok.to_dict()
    tampered["vocab"]["size"] += 1
    with pytest.raises(ValueError, match="vocabulary"):
        Tokenizer.from_dict(tampered)


def test_retired_relative_starts_are_refused_in_one_line():
    """Relative starts were removed: a constructor call or a stored tokenizer (a checkpoint's) that asks
    for them gets one ValueError saying so and where they still are."""
    message = ("starts 'relative' was retired (measured no help, docs/results.md); rleseg at commit a540f6c "
               "still has it; choose '1d' or '2d'")
    with pytest.raises(ValueError) as refused:
        Tokenizer((4, 5), 3, "lac", "relative")
    assert str(refused.value) == message
    stored = Tokenizer((4, 5), 3, "lac").to_dict()
    for build in (Tokenizer.from_dict, from_dict):
        with pytest.raises(ValueError) as refused:
            build({**stored, "starts": "relative"})
        assert str(refused.value) == message
    with pytest.raises(ValueError, match=r"^panoptic starts 'relative' was retired .* choose '1d' or '2d'$"):
        PanopticTokenizer((4, 4), 3, [1], "relative")
    with pytest.raises(ValueError, match=r"^video starts 'relative' was retired"):
        VideoTokenizer(2, (4, 4), 2, "volume", "binary", "relative")
    with pytest.raises(ValueError, match="was retired"):
        PerClassTokenizer((4, 5), 3, starts="relative")
    with pytest.raises(ValueError, match=r"starts must be one of \('1d', '2d'\), got 'absolute'"):
        Tokenizer((4, 5), 3, "lac", "absolute")


# ------------------------------------------------------------------------------------------ grammar


@pytest.mark.parametrize(("scheme", "starts", "order"), COMBOS)
def test_grammar_samples_always_decode_strictly(scheme, starts, order):
    rng = np.random.default_rng(3)
    for shape, max_run, max_len in [((5, 7), None, 40), ((4, 4), 3, 9), ((1, 9), 2, 25), ((3, 3), 9, 6)]:
        tok = make_tokenizer(scheme, starts, order, shape, 4, max_run)
        for _ in range(5):
            for row in sample_under_grammar(tok, rng, 6, max_len):
                assert (row == EOS).sum() == 1
                tok.decode(row, errors="strict")


@pytest.mark.parametrize(("scheme", "starts", "order"), COMBOS)
def test_grammar_allows_every_ground_truth_sequence(scheme, starts, order):
    """Teacher forcing and constrained decoding agree: encode() output is always allowed."""
    rng = np.random.default_rng(5)
    tok = make_tokenizer(scheme, starts, order, (6, 9), 4, max_run=5)
    masks = [upsample_mask(rng.integers(0, tok.num_classes, (3, 5)), 2, (6, 9)) for _ in range(4)]
    masks.append(np.full((6, 9), tok.num_classes - 1, np.uint8))
    assert_grammar_allows(tok, [tok.encode(m) for m in masks])


def test_grammar_forces_eos_when_budget_runs_out():
    tok = Tokenizer((4, 4), 3, "lac")
    grammar = tok.grammar(1)
    assert np.flatnonzero(grammar.allowed(steps_left=2)[0]).tolist() == [EOS]
    assert grammar.allowed(steps_left=3)[0].sum() > 1


def test_grammar_starts_after_previous_run_and_lengths_stay_inside():
    tok = Tokenizer((2, 4), 2, "binary", max_run=4)
    grammar = tok.grammar(1)
    grammar.advance(np.array([tok.vocab["start"].token(6)]))
    lengths = tok.vocab["length"].value(np.flatnonzero(grammar.allowed(10)[0]))
    assert lengths.tolist() == [1, 2]  # pixels 6 and 7 remain
    grammar.advance(np.array([tok.vocab["length"].token(1)]))
    starts = tok.vocab["start"].value(np.flatnonzero(grammar.allowed(10)[0] & (np.arange(tok.vocab.size) > EOS)))
    assert starts.tolist() == [7]


# ------------------------------------------------------------------------------------------ subsampling
def test_downsample_nearest_takes_cell_centres_and_mode_takes_majority():
    mask = np.zeros((4, 4), np.uint8)
    mask[1, 1] = mask[3, 3] = 2
    mask[2:, :2] = 1
    mask[2, 0] = 0
    assert downsample_mask(mask, 2, "nearest").tolist() == [[2, 0], [1, 2]]
    assert downsample_mask(mask, 2, "mode").tolist() == [[0, 0], [1, 0]]
    tie = np.array([[1, 2], [2, 1]], np.uint8)
    assert downsample_mask(tie, 2, "mode").tolist() == [[1]]


def test_downsample_and_upsample_handle_ragged_sizes_and_stacks():
    rng = np.random.default_rng(2)
    block = upsample_mask(rng.integers(0, 3, (2, 4, 5)), 3)  # (2, 12, 15) made of 3x3 cells
    cropped = block[:, :11, :14]
    for method in ("nearest", "mode"):
        small = downsample_mask(cropped, 3, method)
        assert small.shape == (2, 4, 5)
        assert np.array_equal(upsample_mask(small, 3, (11, 14)), cropped)
    with pytest.raises(ValueError, match="factor"):
        downsample_mask(block, 0)
    with pytest.raises(ValueError, match="method"):
        downsample_mask(block, 2, "bilinear")


def test_importing_tokens_does_not_import_torch():
    code = "import sys, rleseg.tokens; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
