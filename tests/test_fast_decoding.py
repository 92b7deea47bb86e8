"""Generation does less work without changing a token: it scores only the grammar's candidates (a run's
end among the ``max_run`` cells after its start, not the whole vocabulary), and rows that ended leave
the batch. Both are checked against scoring everything, one image at a time."""

import numpy as np
import pytest
import torch

from helpers import assert_rows_as_decoded_alone, micro_config
from rleseg.models import create_model, generate
from rleseg.tokens import EOS, PAD, BandTokenizer, PerClassTokenizer, Tokenizer, VideoTokenizer
from rleseg.tokens.grammar import ImageGrammar

TOKENIZERS = {
    "lac lengths": lambda: Tokenizer((6, 10), 4, "lac", max_run=7),
    "lac ends": lambda: Tokenizer((6, 10), 4, "lac", max_run=7, extent="end"),
    "class ends": lambda: Tokenizer((6, 10), 4, "class", max_run=5, extent="end"),
    "binary ends": lambda: Tokenizer((6, 10), 2, "binary", order="F", extent="end"),
    "2-D starts": lambda: Tokenizer((6, 10), 3, "class", starts="2d"),
    "relative starts": lambda: Tokenizer((6, 10), 3, starts="relative"),
    "per class": lambda: PerClassTokenizer((6, 10), 4, max_run=6),
    "bands": lambda: BandTokenizer((6, 10), 3, extent="end", bands=3),
    "video": lambda: VideoTokenizer(2, (6, 10), 3, temporal="volume"),
}


def covered(candidates, vocab_size: int, rows: int) -> np.ndarray:
    """(rows, V) bool: the tokens a grammar's candidates() would score."""
    spans, ids = candidates
    out = np.zeros((rows, vocab_size), bool)
    for first, stop in spans:
        out[:, first:stop] = True
    if ids is not None:
        np.put_along_axis(out, ids, True, axis=1)
    return out


@pytest.mark.parametrize("name", TOKENIZERS)
def test_candidates_cover_every_allowed_token(name):
    tok = TOKENIZERS[name]()
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


def test_rows_in_a_shuffled_order_are_scored_whole():
    grammar = Tokenizer((6, 10), 3, extent="end").grammar(2)
    grammar.advance(np.array([EOS, 30]))  # row 0 ends, row 1 writes a start
    grammar.select(np.array([1, 1]))  # both rows now at the end slot
    assert grammar.candidates()[1].shape == (2, 2 * grammar.run_format.max_run)
    grammar.slot[0] = 0  # rows at different slots of a run: nothing to restrict
    assert grammar.candidates() is None


@pytest.fixture(autouse=True)
def restrict_every_table(monkeypatch):
    """Score only the candidates whatever the table's size (generation does from CACHED_TABLE on)."""
    monkeypatch.setattr(generate, "CACHED_TABLE", 0)


def noisy_model(tokenizer):
    torch.manual_seed(0)
    model = create_model(micro_config(), tokenizer)
    with torch.no_grad():  # noise large enough that the images' rows end at different steps
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.mark.parametrize("name", ["lac ends", "binary ends", "class ends", "2-D starts", "per class", "bands", "video"])
def test_generation_equals_scoring_every_token_one_image_at_a_time(name, monkeypatch):
    tokenizer = TOKENIZERS[name]()
    model = noisy_model(tokenizer)
    shape = (6, 2, 3, 32, 64) if tokenizer.task == "video" else (6, 3, 32, 64)
    torch.manual_seed(1)
    images = torch.rand(*shape) * torch.linspace(0, 1, 6).view(6, *[1] * (len(shape) - 1))
    together = model.generate(images, max_len=40, temperature=0)
    lengths = (together.tokens != PAD).sum(dim=1)
    assert lengths.min() < lengths.max()  # rows ended at different steps: some left the batch early
    monkeypatch.setattr(ImageGrammar, "candidates", lambda self: None)  # score every token
    assert_rows_as_decoded_alone(model, images, together, max_len=40)


def test_sampling_scores_only_candidates_without_changing_a_draw(monkeypatch):
    model = noisy_model(TOKENIZERS["lac ends"]())
    images = torch.rand(6, 3, 32, 64)
    runs = []
    for restricted in (True, False):
        if not restricted:
            monkeypatch.setattr(ImageGrammar, "candidates", lambda self: None)
        runs.append(model.generate(images, max_len=40, temperature=1.0, top_p=0.8,
                                   generator=torch.Generator().manual_seed(5)))
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    torch.testing.assert_close(runs[0].logprobs, runs[1].logprobs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_candidates_are_scored_under_autocast(dtype):
    tokenizer = TOKENIZERS["lac ends"]()
    model = noisy_model(tokenizer)
    with torch.autocast("cpu", dtype=dtype):
        out = model.generate(torch.rand(4, 3, 32, 64), max_len=40, temperature=0)
    assert (out.tokens == EOS).any(dim=1).all()
    for row in out.tokens.numpy():
        tokenizer.decode(row, errors="strict")
