"""Search over whole sequences (rleseg.models.search): beam search and best-of-N sampling under the grammar.
Width 1 is greedy, every candidate is grammatical, the kept sequence is the likeliest candidate, cached ==
uncached, and an exhaustive beam finds the likeliest of all grammatical sequences. Random-init, CPU."""

import numpy as np
import pytest
import torch

from helpers import micro_config, sample_under_grammar
from rleseg.inference import InferenceOptions, predict_batch
from rleseg.models import create_model
from rleseg.models.generate import Generation, sample
from rleseg.models.search import beam_candidates, beam_search, best_of, repeat_candidates
from rleseg.tokens import EOS, PAD, PanopticTokenizer, Tokenizer


def random_model(tokenizer, seed: int = 0, bias: float = 2.0):
    """A micro model in eval mode whose output bias spreads its distributions (a random model's are flat)."""
    torch.manual_seed(seed)
    model = create_model(micro_config(), tokenizer).eval()
    with torch.no_grad():
        model.decoder.output_bias.normal_(0.0, bias)
    return model


def encoded(model, images, copies: int = 1):
    with torch.no_grad():
        memory, table, _ = model.encode(images)
    return repeat_candidates(memory, table, copies)


def total_logprob(out: Generation) -> torch.Tensor:
    return out.logprobs.sum(dim=1)


@torch.no_grad()
def teacher_forced_logprob(model, images: torch.Tensor, sequences: np.ndarray, max_len: int) -> torch.Tensor:
    """(B,) log-probability of each sequence (B, T) under the model at temperature 1, each token's
    distribution renormalised over the tokens the grammar allows there (as generation scores them)."""
    tokens = torch.from_numpy(sequences)
    bos = torch.full_like(tokens[:, :1], model.tokenizer.bos)
    logits = model(images, torch.cat([bos, tokens[:, :-1]], dim=1)).float()  # (B, T, V)
    grammar, total = model.tokenizer.grammar(len(sequences)), torch.zeros(len(sequences))
    for step in range(tokens.shape[1]):
        allowed = torch.from_numpy(grammar.allowed(max_len - step))
        logprobs = torch.log_softmax(logits[:, step].masked_fill(~allowed, float("-inf")), dim=-1)
        token = tokens[:, step]
        total += torch.where(token == PAD, 0.0, logprobs.gather(1, token[:, None]).squeeze(1))
        grammar.advance(sequences[:, step])
    return total


@pytest.mark.parametrize("constrained", [True, False])
def test_beam_of_width_one_is_greedy(constrained):
    tokenizer = Tokenizer((16, 16), 3, scheme="lac")
    model = random_model(tokenizer, bias=0.5)
    images = torch.rand(3, 3, 64, 64)
    greedy = model.generate(images, max_len=40, temperature=0, constrained=constrained)
    memory, table = encoded(model, images)
    beam = beam_search(model, memory, table, 1, 40, constrained=constrained)
    assert torch.equal(beam.tokens, greedy.tokens)
    torch.testing.assert_close(beam.logprobs, greedy.logprobs)
    assert torch.equal(beam.truncated, greedy.truncated)
    assert torch.equal(model.generate(images, max_len=40, temperature=0, beams=1, constrained=constrained).tokens,
                       greedy.tokens)


@pytest.mark.parametrize(
    "tokenizer",
    [Tokenizer((6, 10), 3, scheme="lac", max_run=7), Tokenizer((6, 10), 2, scheme="binary", starts="2d", order="F"),
     PanopticTokenizer((6, 8), 3, thing_classes=[1])],
    ids=["lac-1d", "binary-2d-F", "panoptic"],
)
@pytest.mark.parametrize("search", [dict(beams=4, temperature=0), dict(samples=5, temperature=1.0)])
def test_every_candidate_is_grammatical_and_the_kept_one_the_likeliest(tokenizer, search):
    """Run the candidates (all beams / all samples) and check each decodes strictly; the sequence generate
    keeps is the candidate of the highest total log-probability, which the teacher-forced model agrees with."""
    model = random_model(tokenizer)
    images, max_len, copies = torch.rand(3, 3, 32, 32), 30, max(search.get("beams", 1), search.get("samples", 1))
    kept = model.generate(images, max_len=max_len, generator=torch.Generator().manual_seed(3), **search)
    memory, table = encoded(model, images, copies)
    if "beams" in search:  # every final beam: the search without its final choice
        candidates = beam_candidates(model, memory, table, copies, max_len)
    else:
        candidates = sample(model, memory, table, max_len, 1.0, 0, 1.0, True, True, torch.Generator().manual_seed(3),
                            False, copies)
    finished = (candidates.tokens == EOS).any(dim=1)
    for row in candidates.tokens[finished].numpy():
        tokenizer.decode(row, errors="strict")
    _assert_grammatical_prefixes(tokenizer, candidates.tokens[~finished].numpy(), max_len)
    for row in kept.tokens.numpy():
        tokenizer.decode(row, errors="strict")
    scores = total_logprob(candidates).view(len(images), copies)
    torch.testing.assert_close(total_logprob(kept), scores.max(dim=1).values)
    # A beam the search left unfinished (it stopped once every image's best beam had ended) scored lower.
    assert (scores.view(-1)[~finished] < total_logprob(kept).repeat_interleave(copies)[~finished]).all()
    sequences = kept.tokens.numpy()
    torch.testing.assert_close(teacher_forced_logprob(model, images, sequences, max_len), total_logprob(kept),
                               atol=1e-4, rtol=1e-4)


def _assert_grammatical_prefixes(tokenizer, rows: np.ndarray, max_len: int) -> None:
    """Every token of every row (PAD-padded) is one the grammar allows at its step."""
    grammar = tokenizer.grammar(len(rows))
    for step in range(rows.shape[1]):
        allowed = grammar.allowed(max_len - step)
        assert allowed[np.arange(len(rows)), rows[:, step]].all(), f"step {step}"
        grammar.advance(rows[:, step])


@pytest.mark.parametrize("search", [dict(beams=3, temperature=0), dict(samples=4, temperature=1.0, top_p=0.9)])
@pytest.mark.parametrize("constrained", [True, False])
def test_cached_and_uncached_search_agree(search, constrained):
    model = random_model(Tokenizer((16, 16), 3, scheme="lac"), bias=1.0)
    images = torch.rand(2, 3, 64, 64)
    runs = [model.generate(images, max_len=30, constrained=constrained, use_cache=cache,
                           generator=torch.Generator().manual_seed(5), **search) for cache in (True, False)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    torch.testing.assert_close(runs[0].logprobs, runs[1].logprobs, atol=1e-4, rtol=1e-4)


def _grammatical_sequences(tokenizer, max_len: int) -> np.ndarray:
    """Every sequence the grammar allows within max_len tokens, (S, max_len) padded with PAD."""
    grammar, prefixes = tokenizer.grammar(1), np.zeros((1, 0), np.int64)
    for step in range(max_len):
        allowed = grammar.allowed(max_len - step)  # (R, V)
        rows, tokens = np.nonzero(allowed)
        grammar.select(rows)
        grammar.advance(tokens)
        prefixes = np.concatenate([prefixes[rows], tokens[:, None]], axis=1)
        if grammar.done.all():
            break
    return prefixes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exhaustive_beam_finds_the_likeliest_sequence_and_beats_every_narrower_width(seed):
    """With a width of at least the number of grammatical sequences nothing is pruned, so beam search
    returns the likeliest of them all (enumerated and scored by teacher forcing); no width, greedy
    included, scores above it, and the widths' scores are the scores of real sequences."""
    tokenizer = Tokenizer((1, 4), 2, scheme="binary", max_run=4)
    max_len = 7
    sequences = _grammatical_sequences(tokenizer, max_len)
    assert len(np.unique(sequences, axis=0)) == len(sequences) > 16  # abutting runs: more sequences than masks
    model = random_model(tokenizer, seed)
    image = torch.rand(1, 3, 64, 64)
    scores = teacher_forced_logprob(model, image.expand(len(sequences), -1, -1, -1), sequences, max_len)
    exhaustive = model.generate(image, max_len=max_len, temperature=0, beams=len(sequences))
    assert torch.isclose(total_logprob(exhaustive)[0], scores.max(), atol=1e-5)
    best = sequences[int(scores.argmax())]
    assert np.array_equal(exhaustive.tokens[0].numpy(), best[: exhaustive.tokens.shape[1]])
    for width in (1, 2, 4):
        out = model.generate(image, max_len=max_len, temperature=0, beams=width)
        assert total_logprob(out)[0] <= scores.max() + 1e-5
        row = np.zeros(sequences.shape[1], np.int64)
        row[: out.tokens.shape[1]] = out.tokens[0].numpy()
        assert (sequences == row).all(axis=1).any()


def test_length_penalty_favours_the_longer_of_two_candidates():
    """Two candidates of one image: a short one of total -2 over 2 tokens, a long one of -3 over 6. By total
    log-probability the short one wins; divided by length (penalty 1), the long one (-0.5 against -1)."""
    tokens = torch.tensor([[5, EOS, PAD, PAD, PAD, PAD], [5, 6, 7, 8, 9, EOS]])
    logprobs = torch.tensor([[-1.0, -1.0, 0, 0, 0, 0], [-0.5] * 6])
    candidates = Generation(tokens, logprobs, torch.zeros(2, dtype=torch.bool))
    assert torch.equal(best_of(candidates, 2).tokens, tokens[:1, :2])
    assert torch.equal(best_of(candidates, 2, length_penalty=1.0).tokens, tokens[1:])


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


def test_predict_batch_runs_the_search_of_its_options():
    model = random_model(Tokenizer((16, 16), 3, scheme="lac"), bias=1.0)
    images = torch.rand(2, 3, 64, 64)
    result = predict_batch(model, images, InferenceOptions(beams=3, max_len=30))
    direct = model.generate(images, max_len=30, temperature=0, beams=3)
    for b, row in enumerate(direct.tokens.numpy()):
        eos = np.flatnonzero(row == EOS)
        assert np.array_equal(result.tokens[b], row[: eos[0] + 1 if eos.size else row.size])


@pytest.mark.parametrize(
    "search,message",
    [(dict(beams=2, temperature=1.0), "deterministic"), (dict(samples=3, temperature=0), "temperature > 0"),
     (dict(beams=2, samples=2, temperature=0), "exclude"), (dict(beams=0, temperature=0), ">= 1"),
     (dict(beams=2, temperature=0, length_penalty=-1), "length_penalty")],
)
def test_bad_search_settings_are_refused(search, message):
    model = random_model(Tokenizer((4, 4), 2, "binary"))
    with pytest.raises(ValueError, match=message):
        model.generate(torch.rand(1, 3, 32, 32), **search)
    with pytest.raises(ValueError, match=message):
        InferenceOptions(**search).check()
