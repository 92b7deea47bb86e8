"""One decoder step per run (``model.run_step``): the decoder reads a run's start and end as one input and
writes both from one state. Training's teacher-forced logits must be generation's, token for token; the
faster generation paths (cache, candidates, rows leaving) must not change a token; and the model must learn."""

import numpy as np
import pytest
import torch

from helpers import assert_rows_as_decoded_alone, micro_config, overfit_exactly, padded, random_masks
from rleseg.models import create_model, generate, load_checkpoint, save_checkpoint
from rleseg.tokens import EOS, PAD, BandTokenizer, PerClassTokenizer, Tokenizer
from rleseg.tokens.grammar import ImageGrammar

TOKENIZERS = {
    "lac ends": lambda: Tokenizer((6, 10), 4, "lac", max_run=7, extent="end"),
    "binary ends": lambda: Tokenizer((6, 10), 2, "binary", order="F", extent="end"),
    "bands": lambda: BandTokenizer((6, 10), 3, extent="end", bands=3),
}


def noisy_model(tokenizer, **changes):
    torch.manual_seed(2)
    model = create_model(micro_config(run_step=True, **changes), tokenizer)
    with torch.no_grad():  # noise large enough that rows write runs and end at different steps
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def images_of_varied_contrast(count: int = 6) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(count, 3, 32, 64) * torch.linspace(0, 1, count).view(count, 1, 1, 1)


def teacher_forced_logprobs(model, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p of each generated token under the training path (model.forward on first token + tokens)."""
    first = model.first_tokens(len(tokens))[:, None]
    logits = model(images, torch.cat([first, tokens[:, :-1]], dim=1))
    return torch.log_softmax(logits, -1).gather(2, tokens[..., None]).squeeze(-1)


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize("max_len", [41, 40])
def test_training_reads_what_generation_writes(name, max_len):
    """Unconstrained generation records the full softmax's log-probability of each token; the teacher-forced
    pass over the same tokens (pairs, end head, positions) must give the same numbers up to each EOS."""
    model = noisy_model(TOKENIZERS[name]())
    images = images_of_varied_contrast(3)
    out = model.generate(images, max_len=max_len, temperature=0, constrained=False)
    assert out.tokens.shape[1] <= max_len
    before_eos = torch.cumsum((out.tokens == EOS).long(), 1) - (out.tokens == EOS).long() == 0
    assert before_eos.sum() > 3 * len(images)  # more than a run a row: ends were written
    with torch.no_grad():
        forced = teacher_forced_logprobs(model, images, out.tokens)
    torch.testing.assert_close(forced[before_eos], out.logprobs[before_eos], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_generation_paths_give_the_same_tokens(name, monkeypatch):
    """With and without the cache, scoring only the candidates or everything, one image or six with rows
    leaving: the same valid sequences."""
    tokenizer = TOKENIZERS[name]()
    model = noisy_model(tokenizer)
    images = images_of_varied_contrast()
    monkeypatch.setattr(generate, "CACHED_TABLE", 0)  # candidates only, whatever the table's size
    together = model.generate(images, max_len=41, temperature=0)
    lengths = (together.tokens != PAD).sum(dim=1)
    assert lengths.min() < lengths.max()
    assert torch.equal(model.generate(images, max_len=41, temperature=0, use_cache=False).tokens, together.tokens)
    rows = len(together.tokens) // len(images)  # bands: an image's rows, joined, are its flat form
    for image in together.tokens.numpy().reshape(len(images), rows, -1):
        tokenizer.decode(np.concatenate([row[row != PAD] for row in image]), errors="strict")
    monkeypatch.setattr(ImageGrammar, "candidates", lambda self: None)  # score every token
    assert_rows_as_decoded_alone(model, images, together, max_len=41)


def test_an_odd_budget_ends_every_sequence_in_eos_within_it():
    tokenizer = TOKENIZERS["lac ends"]()
    model = noisy_model(tokenizer)
    for max_len in (1, 2, 3, 8, 9):
        out = model.generate(images_of_varied_contrast(4), max_len=max_len, temperature=0)
        assert out.tokens.shape[1] <= max_len
        assert (out.tokens == EOS).any(dim=1).all()
        for row in out.tokens.numpy():
            tokenizer.decode(row, errors="strict")


def test_best_of_n_sampling_runs_and_beam_search_is_refused():
    model = noisy_model(TOKENIZERS["lac ends"]())
    images = images_of_varied_contrast(2)
    out = model.generate(images, max_len=40, temperature=1.0, samples=3, generator=torch.Generator().manual_seed(0))
    assert out.tokens.shape[0] == 2 and (out.tokens == EOS).any(dim=1).all()
    with pytest.raises(ValueError, match="beam search is not available with run_step"):
        model.generate(images, max_len=40, temperature=0, beams=2)


@pytest.mark.parametrize("tokenizer", [
    Tokenizer((6, 10), 3, "lac"),  # lengths
    Tokenizer((6, 10), 3, "class", extent="end"),  # class as its own token: three a run
    Tokenizer((6, 10), 3, "lac", starts="2d"),
    PerClassTokenizer((6, 10), 3),
], ids=["lengths", "class token", "2-D starts", "per class"])
def test_tokenizers_without_start_end_runs_are_refused_by_name(tokenizer):
    with pytest.raises(ValueError, match=r"model.run_step needs runs of a start and an end.*this tokenizer writes"):
        create_model(micro_config(run_step=True), tokenizer)


def test_learns_masks_exactly_and_survives_a_checkpoint(tmp_path):
    tokenizer = Tokenizer((8, 8), 3, "lac", extent="end")
    masks = random_masks(np.random.default_rng(0), 4, 8, 3)
    torch.manual_seed(0)
    model = create_model(micro_config(run_step=True, dim=64, mlp_dim=128), tokenizer)
    images = torch.rand(4, 3, 64, 64)
    overfit_exactly(model, images, padded(tokenizer, masks), masks, lr=2e-3)
    save_checkpoint(model.eval(), tmp_path / "run-step.safetensors")
    loaded = load_checkpoint(tmp_path / "run-step.safetensors")
    assert loaded.config.run_step
    assert torch.equal(loaded.generate(images, temperature=0).tokens, model.generate(images, temperature=0).tokens)
