"""Generation does less work without changing a token: it scores only the grammar's candidates (a run's
end among the ``max_run`` cells after its start, not the whole vocabulary), and rows that ended leave
the batch. Here: the candidates cover every allowed token, grammar rows select and replay, candidates are
scored under autocast. That generation with both equals scoring everything, one image at a time, is a
contract of every variant (tests/test_model_contracts.py)."""

import numpy as np
import pytest
import torch

from helpers import VARIANTS, sample_under_grammar, variant_model
from rleseg.models import generate
from rleseg.tokens import EOS, PanopticTokenizer, Tokenizer


def covered(candidates, vocab_size: int, rows: int) -> np.ndarray:
    """(rows, V) bool: the tokens a grammar's candidates() would score (None: every token)."""
    if candidates is None:
        return np.ones((rows, vocab_size), bool)
    spans, ids = candidates
    out = np.zeros((rows, vocab_size), bool)
    for first, stop in spans:
        out[:, first:stop] = True
    if ids is not None:
        np.put_along_axis(out, ids, True, axis=1)
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_candidates_cover_every_allowed_token(variant):
    tok, _ = VARIANTS[variant]()
    rng = np.random.default_rng(0)
    for max_len in (7, 40):
        grammar = tok.grammar(6)
        for step in range(max_len):
            allowed = grammar.allowed(max_len - step)
            scored = covered(grammar.candidates(), tok.vocab.size, 6)
            assert not (allowed & ~scored).any(), f"step {step}"
            if tok.slots[step % len(tok.slots)] in ("end", "end_class"):
                assert scored.sum(axis=1).max() <= 2 + tok.run_format.max_run * (tok.num_classes - 1)  # + PAD, EOS
            grammar.advance(np.array([rng.choice(np.flatnonzero(row)) for row in allowed]))
            if grammar.done.all():
                break


def test_rows_at_different_slots_are_scored_by_the_union_of_their_candidates():
    grammar = Tokenizer((6, 10), 3, extent="end").grammar(2)
    grammar.advance(np.array([EOS, 30]))  # row 0 ends, row 1 writes a start
    grammar.select(np.array([1, 1]))  # both rows now at the end slot
    assert grammar.candidates()[1].shape == (2, 2 * grammar.run_format.max_run)
    grammar.slot[0] = 0  # rows at different slots of a run (draft verification): each slot's range, and ends
    spans, ids = grammar.candidates()
    start = grammar.run_format.vocab["start"]
    assert (start.first, start.stop) in spans and (ids[0] == EOS).all() and (ids[1] != EOS).all()
    allowed = grammar.allowed(20)
    assert not (allowed & ~covered((spans, ids), allowed.shape[1], 2)).any()


@pytest.fixture(autouse=True)
def restrict_every_table(monkeypatch):
    """Score only the candidates whatever the table's size (generation does from CACHED_TABLE on)."""
    monkeypatch.setattr(generate, "CACHED_TABLE", 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_candidates_are_scored_under_autocast(dtype):
    model = variant_model("lac ends")
    tokenizer = model.tokenizer
    with torch.autocast("cpu", dtype=dtype):
        out = model.generate(torch.rand(4, 3, 32, 64), max_len=40, temperature=0)
    assert (out.tokens == EOS).any(dim=1).all()
    for row in out.tokens.numpy():
        tokenizer.decode(row, errors="strict")


@pytest.mark.parametrize("tokenizer", [Tokenizer((6, 10), 3, scheme="lac"), PanopticTokenizer((6, 8), 3, [1])],
                         ids=["image", "panoptic"])
def test_grammar_select_matches_a_replayed_grammar(tokenizer):
    """select(rows) then advance == a fresh grammar fed the selected rows' sequences from the start."""
    rng, max_len = np.random.default_rng(0), 20
    sequences = sample_under_grammar(tokenizer, rng, 4, max_len)
    steps = min(sequences.shape[1], 6)
    grammar = tokenizer.grammar(4)
    for step in range(steps):
        grammar.allowed(max_len - step)
        grammar.advance(sequences[:, step])
    rows = np.array([2, 2, 0, 3, 1])
    grammar.select(rows)
    replayed = tokenizer.grammar(len(rows))
    for step in range(steps):
        replayed.allowed(max_len - step)
        replayed.advance(sequences[rows, step])
    for step in range(steps, sequences.shape[1]):
        allowed = grammar.allowed(max_len - step)
        assert np.array_equal(allowed, replayed.allowed(max_len - step)), f"step {step}"
        grammar.advance(sequences[rows, step])
        replayed.advance(sequences[rows, step])
    assert np.array_equal(grammar.done, replayed.done) and np.array_equal(grammar.truncated, replayed.truncated)


@pytest.mark.parametrize("tokenizer", [Tokenizer((6, 10), 3, scheme="lac"), Tokenizer((6, 10), 3, "class", starts="2d"),
                                       Tokenizer((6, 10), 4, "lac", max_run=7, extent="end")],
                         ids=["lac", "class 2-D", "lac ends"])
def test_rows_advance_alone_and_allow_what_they_would_alone(tokenizer):
    """advance(tokens, rows=) moves only those rows; rows at different slots of a run and with different budgets
    (as draft verification leaves them) are allowed exactly what each would be alone."""
    rng, max_len = np.random.default_rng(1), 24
    sequences = sample_under_grammar(tokenizer, rng, 4, max_len)
    sequences = np.pad(sequences, ((0, 0), (0, 60)))  # PAD after every end
    grammar, alone = tokenizer.grammar(4), [tokenizer.grammar(1) for _ in range(4)]
    at = np.zeros(4, np.int64)  # each row's place in its own sequence
    for _ in range(60):
        allowed = grammar.allowed(max_len - at)
        for i, single in enumerate(alone):
            assert np.array_equal(allowed[i], single.allowed(max_len - at[i])[0]), f"row {i} at {at[i]}"
        rows = rng.random(4) < 0.6  # each row takes its next token or waits
        tokens = sequences[np.arange(4), at]
        grammar.advance(tokens, rows=rows)
        for i in np.flatnonzero(rows):
            alone[i].advance(tokens[i : i + 1])
        at += rows
    assert grammar.done.all()  # every row wrote its whole sequence, EOS included
