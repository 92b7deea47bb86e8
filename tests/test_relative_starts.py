"""Relative starts: each run's start as one "gap" token, counted from the end of the previous run."""

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import (
    assert_grammar_allows,
    assert_grammar_allows_blocky_masks,
    assert_grammar_samples_decode,
    hela_masks,
    labelled_masks,
    stardist_mask,
)
from rleseg.tokens import (
    EOS,
    PanopticTokenizer,
    Tokenizer,
    VideoTokenizer,
    downsample_mask,
    mask_to_runs,
    video_vocab_size,
)

SCHEMES = ["lac", "class", "binary"]
ORDERS = ["C", "F"]
COMBOS = list(itertools.product(SCHEMES, ORDERS))
TOKENS_PER_RUN = {"lac": 2, "class": 3, "binary": 2}


def make_tokenizer(scheme, order, shape, num_classes, max_run=None):
    return Tokenizer(shape, 2 if scheme == "binary" else num_classes, scheme, "relative", order, max_run)


def stardist_patches(method: str = "nearest") -> list[np.ndarray]:
    """The 16 128-px patches of stardist's nuclei mask, as nucleus/background maps downsampled to 32x32."""
    semantic = (stardist_mask() > 0).astype(np.uint8)
    return [
        downsample_mask(semantic[row : row + 128, col : col + 128], 4, method)
        for row in range(0, 512, 128)
        for col in range(0, 512, 128)
    ]


def start_values(tok: Tokenizer, tokens: np.ndarray) -> np.ndarray:
    """The value of each run's first token: its 1-D start or its gap."""
    return tok.vocab[tok.slots[0]].value(tokens[:-1][:: tok.tokens_per_run])


# ------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize(("scheme", "order"), COMBOS)
@settings(max_examples=60, deadline=None)
@given(sample=labelled_masks(), max_run=st.one_of(st.none(), st.integers(1, 40)))
def test_round_trip_random_masks(scheme, order, sample, max_run):
    mask, num_classes = sample
    if scheme == "binary":
        mask = (mask > 0).astype(np.uint8)
    tok = make_tokenizer(scheme, order, mask.shape, num_classes, max_run)
    tokens = tok.encode(mask)
    assert tokens[-1] == EOS and np.sum(tokens == EOS) == 1
    assert np.array_equal(tok.decode(tokens), mask)
    assert np.array_equal(tok.decode(tokens, errors="ignore"), mask)
    runs = mask_to_runs(mask, order, tok.max_run)
    assert tokens.size == len(runs) * TOKENS_PER_RUN[scheme] + 1
    previous_ends = np.concatenate(([0], runs.ends))[:-1]
    assert np.array_equal(start_values(tok, tokens), runs.starts - previous_ends)


@pytest.mark.parametrize(("scheme", "order"), COMBOS)
def test_round_trip_real_masks(scheme, order):
    hela = hela_masks()[::6]  # instance ids folded into 5 classes (binary: foreground)
    masks = [downsample_mask(m, 4) for m in hela % 5] + stardist_patches()
    masks.append(downsample_mask(stardist_mask() % 5, 4))
    for mask in masks:
        mask = (mask > 0).astype(np.uint8) if scheme == "binary" else mask.astype(np.uint8)
        tok = make_tokenizer(scheme, order, mask.shape, 5)
        tokens = tok.encode(mask)
        assert np.array_equal(tok.decode(tokens), mask)
        assert np.array_equal(tok.decode(tokens, errors="ignore"), mask)


def test_gap_is_start_minus_previous_end_in_scan_order():
    mask = np.array([[0, 1, 1], [2, 2, 0]])
    for order, gaps in [("C", [1, 0]), ("F", [1, 0, 0, 0])]:
        # C: runs (start 1, length 2), (3, 2). F scans 0 2 1 2 1 0: four runs of one pixel from pixel 1.
        tok = Tokenizer((2, 3), 3, "class", "relative", order)
        tokens = tok.encode(mask)
        assert start_values(tok, tokens).tolist() == gaps
        assert np.array_equal(tok.decode(tokens), mask)


def test_layout_slots_and_serialisation():
    tok = Tokenizer((6, 7), 4, "class", "relative", "F", max_run=5)
    assert tok.slots == ("gap", "length", "class") and tok.tokens_per_run == 3
    gap = tok.vocab["gap"]
    assert (gap.size, gap.offset, gap.stop) == (42, 0, tok.vocab.size)
    assert "start" not in tok.vocab.ranges and "coord" not in tok.vocab.ranges
    assert "starts='relative'" in repr(tok)
    again = Tokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.to_dict() == tok.to_dict() and again.starts == "relative"
    mask = np.random.default_rng(1).integers(0, 4, (6, 7))
    assert np.array_equal(again.encode(mask), tok.encode(mask))


# ------------------------------------------------------------------------------------------ decoding errors
def _valid_tokens(scheme, order="C"):
    tok = make_tokenizer(scheme, order, (6, 7), 4)
    mask = np.zeros((6, 7), np.uint8)
    mask[1, 1:4] = 1
    mask[3, 2:6] = tok.num_classes - 1
    return tok, tok.encode(mask)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_strict_raises_on_each_malformation(scheme):
    tok, tokens = _valid_tokens(scheme)
    k, body, gap = tok.tokens_per_run, tokens[:-1], tok.vocab["gap"]
    length_slot = tok.slots.index("length" if scheme != "lac" else "lac")
    too_long = body[:k].copy()
    too_long[0] = gap.token(tok.num_pixels - 2)
    too_long[length_slot] = tok.vocab[tok.slots[length_slot]].token(3)
    cases = {
        "no EOS": body,
        "follows EOS": np.append(tokens, body[0]),
        "expected a gap token": np.concatenate([body[1:], [body[0], EOS]]),
        "partial run": np.concatenate([body, body[: k - 1], [EOS]]),
        "out-of-vocabulary": np.concatenate([[tok.vocab.size + 3], body[1:], [EOS]]),
        "BOS": np.concatenate([[tok.bos], body[1:], [EOS]]),
        "ends past the mask": np.append(too_long, EOS),
    }
    for expected_words, sequence in cases.items():
        with pytest.raises(ValueError, match=expected_words):
            tok.decode(sequence)
        decoded = tok.decode(sequence, errors="ignore")
        assert decoded.shape == tok.mask_size and decoded.max() < tok.num_classes


def test_strict_error_names_the_gap_token_its_position_and_the_mask_end():
    tok, tokens = _valid_tokens("lac")
    bad = tokens.copy()
    end_of_first = mask_to_runs(tok.decode(tokens), max_run=tok.max_run).ends[0]
    bad[2] = tok.vocab["gap"].token(tok.num_pixels - end_of_first)  # second run would start at pixel 42 of 42
    with pytest.raises(
        ValueError, match=rf"gap token {bad[2]} at position 2 \(gap {tok.num_pixels - end_of_first} after "
        rf"pixel {end_of_first}.*runs past the mask of {tok.num_pixels} pixels",
    ):
        tok.decode(bad)
    kept = tok.decode(bad, errors="ignore")  # the first run survives, the run past the end is dropped
    assert kept.ravel()[:end_of_first].tolist() == tok.decode(tokens).ravel()[:end_of_first].tolist()
    assert kept.ravel()[end_of_first:].max() == 0


def test_gaps_make_runs_sorted_and_disjoint_by_construction():
    """Swapping two runs' tokens, an error for absolute starts, is just another valid sequence."""
    tok, tokens = _valid_tokens("class")
    k = tok.tokens_per_run
    swapped = np.concatenate([tokens[k : 2 * k], tokens[:k], [EOS]])
    runs = tok.decode_runs(swapped)
    assert np.all(runs.starts[1:] >= runs.ends[:-1])


def test_ignore_resynchronises_after_a_stray_gap_token():
    tok, tokens = _valid_tokens("lac")
    noisy = np.insert(tokens, 1, tokens[0])
    assert np.array_equal(tok.decode(noisy, errors="ignore"), tok.decode(tokens))
    assert np.array_equal(tok.decode(tokens[:-1], errors="ignore"), tok.decode(tokens))  # missing EOS


# ------------------------------------------------------------------------------------------ grammar
@pytest.mark.parametrize(("scheme", "order"), COMBOS)
def test_grammar_samples_always_decode_strictly(scheme, order):
    assert_grammar_samples_decode(lambda shape, max_run: make_tokenizer(scheme, order, shape, 4, max_run))


@pytest.mark.parametrize(("scheme", "order"), COMBOS)
def test_grammar_allows_every_ground_truth_sequence(scheme, order):
    assert_grammar_allows_blocky_masks(make_tokenizer(scheme, order, (6, 9), 4, max_run=5))


def test_grammar_allows_real_sequences():
    patches = stardist_patches()
    tok = Tokenizer(patches[0].shape, 2, "lac", "relative")
    assert_grammar_allows(tok, [tok.encode(p) for p in patches])


def _allowed_values(grammar, span, steps_left: int = 10) -> list[int]:
    allowed = grammar.allowed(steps_left)[0, span.first : span.stop]
    return span.value(np.flatnonzero(allowed) + span.first).tolist()


def test_grammar_gaps_stop_at_the_mask_end():
    tok = Tokenizer((2, 4), 2, "binary", "relative", max_run=4)
    grammar = tok.grammar(1)
    gap, length = tok.vocab["gap"], tok.vocab["length"]
    assert _allowed_values(grammar, gap) == list(range(8))
    grammar.advance(np.array([gap.token(5)]))
    assert _allowed_values(grammar, length) == [1, 2, 3]
    grammar.advance(np.array([length.token(1)]))  # the run covers pixel 5; pixels 6 and 7 remain
    assert _allowed_values(grammar, gap) == [0, 1]
    assert np.flatnonzero(grammar.allowed(2)[0]).tolist() == [EOS]  # no room for a run plus EOS


# ------------------------------------------------------------------------------------------ other tokenizers
def test_video_and_panoptic_refuse_relative_starts():
    with pytest.raises(ValueError, match="relative starts are for the image Tokenizer only"):
        VideoTokenizer(2, (4, 4), 2, "volume", "binary", "relative")
    with pytest.raises(ValueError, match="relative starts are for the image Tokenizer only"):
        video_vocab_size(2, (4, 4), 2, starts="relative")
    with pytest.raises(ValueError, match="panoptic starts must be one of"):
        PanopticTokenizer((4, 4), 3, [1], "relative")


def test_start_geometry_gives_gaps_their_one_d_code():
    torch = pytest.importorskip("torch")
    from rleseg.models.positions import sincos, start_geometry

    tok = Tokenizer((4, 5), 3, "lac", "relative")
    table = start_geometry(tok, 16, norm=2.0)
    gap = tok.vocab["gap"]
    code = sincos(torch.arange(gap.size), 16)
    expected = code * (2.0 / code.norm(dim=1, keepdim=True))
    assert torch.allclose(table[gap.first : gap.stop], expected)
    assert table[: gap.first].abs().sum() == 0


def test_stats_and_cli_accept_relative_starts_for_images_only(tmp_path, capsys):
    from PIL import Image

    from rleseg.cli import main
    from rleseg.stats import StatsOptions, image_stats

    mask = np.zeros((8, 12), np.uint8)
    mask[2:5, 3:9] = 1
    mask[6, :] = 2
    stats = image_stats([("m", mask)], StatsOptions(factors=(1,), schemes=("lac",), starts=("relative",)))
    assert [(r.starts, r.vocab_size) for r in stats.rows] == [("relative", Tokenizer((8, 12), 3, "lac").vocab.size)]
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert main(["tokenize", str(tmp_path / "m.png"), "--starts", "relative", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    tok = Tokenizer.from_dict(printed["tokenizer"])
    assert tok.starts == "relative" and np.array_equal(tok.decode(printed["tokens"]), mask)
    assert main(["stats", str(tmp_path), "--panoptic", "--starts", "relative", "--no-progress"]) == 2
    assert "relative is for image statistics only" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ compression
def test_gaps_are_much_smaller_and_less_spread_than_absolute_starts_on_stardist():
    """Nuclei are small and close: a gap is a few pixels where an absolute start spans the whole patch."""
    patches = stardist_patches()
    absolute, relative = (Tokenizer(patches[0].shape, 2, "binary", starts) for starts in ("1d", "relative"))
    starts = np.concatenate([start_values(absolute, absolute.encode(p)) for p in patches])
    gaps = np.concatenate([start_values(relative, relative.encode(p)) for p in patches])
    assert starts.size == gaps.size > 300
    assert gaps.mean() < 0.1 * starts.mean()
    assert np.unique(gaps).size < 0.25 * np.unique(starts).size
