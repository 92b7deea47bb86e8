"""Contracts every token model keeps, run over every variant of ``helpers.VARIANTS`` (tokenizers, start
heads, run ends, the run step, several sequences an image, video fusions): the faster generation paths
never change a token (key-value cache, scoring only the grammar's candidates, rows leaving the batch, rows
decoded together), constrained generation always decodes strictly, training's teacher-forced pass scores
exactly what generation writes, the loss reaches every parameter, and a checkpoint gives the same model.
A feature's own behaviour is tested in its file; a new variant is a new row of ``VARIANTS``.

Micro models with noise on their weights (so that rows write runs and end at different steps), 32 x 64
images, budgets of 40 tokens or fewer. Random-init, offline, CPU."""

import pytest
import torch

from helpers import VARIANTS, assert_rows_as_decoded_alone, flat_forms, variant_images, variant_model
from rleseg.models import generate, load_checkpoint, save_checkpoint
from rleseg.tokens import EOS, PAD

MAX_LEN = 40
SAMPLINGS = [
    dict(temperature=0),
    dict(temperature=1.0),
    dict(temperature=1.0, top_p=0.4),
    dict(temperature=2.0, top_k=5),
    dict(temperature=0, constrained=False),
    dict(temperature=1.0, top_p=0.8, constrained=False),
]


def all_candidates(grammar, encoded):
    """generate.candidates that never restricts: every token is scored."""
    return None


@pytest.fixture
def restrict_every_table(monkeypatch):
    """Score only the grammar's candidates whatever the table's size (generation does from CACHED_TABLE on)."""
    monkeypatch.setattr(generate, "CACHED_TABLE", 0)


def teacher_forced_logprobs(model, images: torch.Tensor, tokens: torch.Tensor,
                            allowed: torch.Tensor | None = None) -> torch.Tensor:
    """log p (R, T) of each generated token under the training path (the model's forward on each row's
    first token + tokens), renormalised over ``allowed`` (R, T, V) where given, as constrained generation is."""
    first = model.first_tokens(len(tokens))[:, None]
    with torch.no_grad():
        logits = model(images, torch.cat([first, tokens[:, :-1]], dim=1)).float()  # (R, T, V)
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.log_softmax(logits, -1).gather(2, tokens[..., None]).squeeze(-1)


def replayed_allowed(tokenizer, tokens: torch.Tensor, max_len: int) -> torch.Tensor:
    """(R, T, V) bool: the tokens the grammar allowed at each step of generated tokens (R, T) under ``max_len``."""
    grammar, allowed = tokenizer.grammar(len(tokens)), []
    for step in range(tokens.shape[1]):
        allowed.append(torch.from_numpy(grammar.allowed(max_len - step)))
        grammar.advance(tokens[:, step].numpy())
    return torch.stack(allowed, dim=1)


def up_to_eos(tokens: torch.Tensor) -> torch.Tensor:
    """(R, T) bool: each row's positions up to and including its first EOS (all of a row without one)."""
    eos = (tokens == EOS).long()
    return torch.cumsum(eos, dim=1) - eos == 0


# ----------------------------------------------------------------------------- faster paths, same tokens
@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_generation_is_uncached_generation(variant):
    """Greedy and sampled (seeded), constrained and not: the key-value cache changes no token."""
    model = variant_model(variant)
    images = variant_images(model.tokenizer, 3)
    for sampling in SAMPLINGS:
        runs = [model.generate(images, max_len=MAX_LEN, use_cache=cache, generator=torch.Generator().manual_seed(7),
                               **sampling) for cache in (True, False)]
        assert torch.equal(runs[0].tokens, runs[1].tokens), sampling
        torch.testing.assert_close(runs[0].logprobs, runs[1].logprobs, atol=1e-4, rtol=1e-4)
        assert torch.equal(runs[0].truncated, runs[1].truncated)
        assert runs[0].tokens.shape[1] <= MAX_LEN


@pytest.mark.parametrize("variant", VARIANTS)
def test_rows_decoded_together_are_each_image_decoded_alone(variant, restrict_every_table, monkeypatch):
    """Six images in one batch, rows leaving it as they end and only the grammar's candidates scored, give
    each image's rows as generating it alone and scoring every token does."""
    model = variant_model(variant)
    images = variant_images(model.tokenizer)
    together = model.generate(images, max_len=MAX_LEN, temperature=0)
    lengths = (together.tokens != PAD).sum(dim=1)
    assert lengths.min() < lengths.max()  # rows ended at different steps: some left the batch early
    monkeypatch.setattr(generate, "candidates", all_candidates)
    assert_rows_as_decoded_alone(model, images, together, max_len=MAX_LEN)


@pytest.mark.parametrize("variant", VARIANTS)
def test_scoring_only_candidates_changes_no_draw(variant, restrict_every_table, monkeypatch):
    model = variant_model(variant)
    images = variant_images(model.tokenizer)
    runs = []
    for restricted in (True, False):
        if not restricted:
            monkeypatch.setattr(generate, "candidates", all_candidates)
        runs.append(model.generate(images, max_len=MAX_LEN, temperature=1.0, top_p=0.8,
                                   generator=torch.Generator().manual_seed(5)))
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    torch.testing.assert_close(runs[0].logprobs, runs[1].logprobs, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- what generation writes
@pytest.mark.parametrize("variant", VARIANTS)
def test_constrained_samples_decode_strictly(variant):
    """A sharpened random model (its output bias favours some tokens strongly, so samples reach the grammar's
    corners: long runs, late starts, EOS forced near the budget) under short and long budgets: every row ends
    in one EOS, holds no first token (BOS, prompts: inputs only), and each image's rows decode strictly."""
    model = variant_model(variant)
    tokenizer, rows = model.tokenizer, len(model.tokenizer.prompts)
    with torch.no_grad():
        model.decoder.output_bias.normal_(0.0, 3.0)
    images = variant_images(tokenizer)
    firsts = torch.tensor([*tokenizer.prompts, tokenizer.bos])
    written = 0
    for seed, max_len in enumerate((9, 24, MAX_LEN)):
        out = model.generate(images, max_len=max_len, temperature=1.5, generator=torch.Generator().manual_seed(seed))
        assert out.tokens.shape == out.logprobs.shape and out.tokens.shape[0] == len(images) * rows
        assert out.tokens.shape[1] <= max_len and out.tokens.dtype == torch.int64
        assert ((out.tokens == EOS).sum(dim=1) == 1).all()
        assert not torch.isin(out.tokens, firsts).any()
        assert torch.all(out.logprobs <= 0) and torch.all(out.logprobs[out.tokens == PAD] == 0)
        for flat in flat_forms(out.tokens, rows):
            tokenizer.decode(flat, errors="strict")
        written += int((out.tokens > EOS).sum())
    assert written > 3 * len(images) * rows  # the random model did write runs


@pytest.mark.parametrize("variant", VARIANTS)
def test_teacher_forcing_scores_what_generation_writes(variant):
    """Generation records the log-probability of each token it writes (the full softmax unconstrained, the
    grammar's tokens renormalised constrained); the teacher-forced pass of training over the same tokens (its
    prompts, positions, run pairs and end head) must give the same numbers up to each EOS, for even and odd
    budgets. Unconstrained rows are PAD after their EOS, and truncated where they have none."""
    model = variant_model(variant)
    tokenizer = model.tokenizer
    images = variant_images(tokenizer, 3)
    for max_len in (MAX_LEN - 1, MAX_LEN):
        greedy = model.generate(images, max_len=max_len, temperature=0, constrained=False)
        assert greedy.tokens.shape[1] <= max_len
        kept, ended = up_to_eos(greedy.tokens), (greedy.tokens == EOS).any(dim=1)
        assert (greedy.tokens[~kept] == PAD).all() and torch.equal(greedy.truncated, ~ended)
        assert kept.sum() > 3 * len(greedy.tokens)  # more than a run a row
        forced = teacher_forced_logprobs(model, images, greedy.tokens)
        torch.testing.assert_close(forced[kept], greedy.logprobs[kept], atol=1e-4, rtol=1e-4)
        out = model.generate(images, max_len=max_len, temperature=1.0, generator=torch.Generator().manual_seed(3))
        kept = up_to_eos(out.tokens)
        forced = teacher_forced_logprobs(model, images, out.tokens, replayed_allowed(tokenizer, out.tokens, max_len))
        torch.testing.assert_close(forced[kept], out.logprobs[kept], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- training and checkpoints
@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_is_finite_and_reaches_every_parameter(variant):
    """On generated sequences as targets: a finite scalar whose gradient reaches every trainable parameter
    (DistributedDataParallel requires it)."""
    model = variant_model(variant).train()
    images = variant_images(model.tokenizer, 2)
    targets = model.generate(images, max_len=MAX_LEN, temperature=1.0, generator=torch.Generator().manual_seed(0))
    loss = model.loss(images, targets.tokens)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters without gradient: {unused[:5]}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpoint_round_trip_gives_the_same_model(variant, tmp_path):
    model = variant_model(variant)
    save_checkpoint(model, tmp_path / "model.safetensors", extra={"step": 3})
    loaded = load_checkpoint(tmp_path / "model.safetensors")
    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.tokenizer.to_dict() == model.tokenizer.to_dict()
    images = variant_images(model.tokenizer, 2)
    runs = [m.generate(images, max_len=MAX_LEN, temperature=0) for m in (model, loaded)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    torch.testing.assert_close(runs[0].logprobs, runs[1].logprobs)
    tokens = torch.randint(0, model.tokenizer.vocab.size, (len(runs[0].tokens), 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, tokens), model(images, tokens))
