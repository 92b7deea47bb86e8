"""Draft-and-verify greedy decoding (rleseg.models.draft) writes step-by-step greedy's tokens, with their
log-probabilities and truncation flags, whatever the draft; a draft that is right takes far fewer decoder
passes. Noisy micro models (random init), CPU."""

import numpy as np
import pytest
import torch

from helpers import micro_config, variant_images
from rleseg.models import DecodingOptions, create_model
from rleseg.models.draft import MAX_DRAFT, continuation, verify
from rleseg.tokens import EOS, BandTokenizer, Tokenizer

TOKENIZERS = {
    "lac ends": lambda: Tokenizer((6, 10), 4, "lac", max_run=7, extent="end"),
    "lac lengths, column-major": lambda: Tokenizer((6, 10), 3, "lac", order="F"),
    "class ends": lambda: Tokenizer((6, 10), 4, "class", max_run=5, extent="end"),
    "binary ends": lambda: Tokenizer((6, 10), 2, "binary", extent="end"),
    "2-D starts": lambda: Tokenizer((6, 10), 3, "class", starts="2d"),
}


def drafted_model(tokenizer, seed: int = 0, noise: float = 0.3, **changes):
    """A micro model with the per-cell head that drafts, seeded noise on every weight and EOS made unlikely (so
    that it writes runs, and long sequences meet the budget)."""
    torch.manual_seed(seed)
    model = create_model(micro_config(aux_dense_weight=0.5, **changes), tokenizer)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
        model.decoder.output_bias[EOS] -= 8.0
    return model.eval()


def assert_same_generation(a, b) -> None:
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.truncated, b.truncated)


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize("max_len", [None, 9, 23])
def test_drafted_generation_is_stepwise_greedy(name, max_len):
    model = drafted_model(TOKENIZERS[name]())
    images = variant_images(model.tokenizer)
    assert model.drafts(DecodingOptions()) and not model.drafts(DecodingOptions(method="stepwise"))  # the default
    stepwise = model.generate(images, method="stepwise", max_len=max_len)
    drafted = model.generate(images, max_len=max_len)  # the per-cell head's drafts
    assert_same_generation(stepwise, drafted)
    assert (stepwise.tokens != 0).sum() > 3 * len(images)  # the noisy model writes runs
    if max_len == 9 and name == "class ends":  # 3 tokens a run: the budget cuts, and verification keeps to it
        assert stepwise.truncated.any()


@pytest.mark.parametrize("name", TOKENIZERS)
def test_any_draft_gives_the_same_tokens_and_a_right_one_few_passes(name):
    tokenizer = TOKENIZERS[name]()
    model = drafted_model(tokenizer, seed=2)  # a seed whose greedy rows include their masks' own encodings
    images = variant_images(tokenizer)
    stepwise = model.generate(images, method="stepwise")
    right = np.stack([tokenizer.decode(row, errors="strict") for row in stepwise.tokens.numpy()])
    noise = np.random.default_rng(0).integers(0, tokenizer.num_classes, right.shape)
    with torch.no_grad():
        encoded = model.encode(images)
        for drafts in (right, noise, np.zeros_like(right)):
            assert_same_generation(stepwise, verify(model, encoded, drafts, DecodingOptions(method="draft")))
        drafted = verify(model, encoded, right, DecodingOptions(method="draft"))
    tokens = (stepwise.tokens != 0).sum(1)
    assert torch.equal(stepwise.passes, tokens)  # step by step: a pass per token
    assert drafted.passes.sum() < tokens.sum()
    # A sequence that is its mask's own encoding takes one pass from that mask per MAX_DRAFT + 1 tokens, in
    # whole runs; one that splits a run of its mask in two (adjacent runs of one class) differs from the
    # draft there, and takes more.
    own = torch.tensor([np.array_equal(tokenizer.encode(m), row[: n]) for m, row, n in
                        zip(right, stepwise.tokens.numpy(), tokens.tolist(), strict=True)])
    per_pass = (MAX_DRAFT + 1) // tokenizer.tokens_per_run * tokenizer.tokens_per_run
    assert own.any() and torch.equal(drafted.passes[own], -(-tokens[own] // per_pass))


def test_continuation_starts_where_the_sequence_stands():
    tok = Tokenizer((2, 5), 3, "lac", extent="end")
    draft = np.array([[1, 1, 0, 2, 2], [0, 0, 1, 1, 1]])
    full = tok.encode(draft)
    assert np.array_equal(continuation(tok, draft, 0, 0), full)
    assert np.array_equal(continuation(tok, draft, 2, 0), full[2:])  # the runs from cell 2 on
    # the sequence ended a run at cell 3 where the draft's goes on to cell 4: the draft's next run is next;
    # unless the run was cut at max_run, which the next run continues
    assert np.array_equal(continuation(tok, draft, 4, 0), full[4:])
    assert np.array_equal(continuation(tok, draft, 4, 0, chose_end=False),
                          tok.encode(np.array([[0, 0, 0, 0, 2], [0, 0, 1, 1, 1]])))
    assert np.array_equal(continuation(tok, draft, 3, 1), full[3:])  # a run from cell 3: the draft's end, the rest
    # a run started a cell before the draft's (cell 2, the draft's starts at 3): the draft's run from there
    assert np.array_equal(continuation(tok, draft, 2, 1), tok.encode(np.array([[0, 0, 2, 2, 2], [0, 0, 1, 1, 1]]))[1:])
    assert continuation(tok, np.zeros_like(draft), 2, 1).size == 0  # no draft run near: no proposal
    assert continuation(tok, np.zeros_like(draft), 0, 0).tolist() == [EOS]


def test_drafts_only_where_greedy_under_the_grammar_with_a_per_cell_head():
    model = drafted_model(Tokenizer((6, 10), 3, extent="end"))
    assert model.drafts(DecodingOptions(method="draft"))
    for off in ({"temperature": 1.0}, {"constrained": False}, {"use_cache": False}, {"method": "stepwise"}):
        assert not model.drafts(DecodingOptions(**{"method": "draft", **off})), off
    no_head = create_model(micro_config(), Tokenizer((6, 10), 3, extent="end"))
    bands = drafted_model(BandTokenizer((6, 10), 3, extent="end", bands=3))
    run_step = drafted_model(Tokenizer((6, 10), 3, extent="end"), run_step=True)
    assert not any(m.drafts(DecodingOptions(method="draft")) for m in (no_head, bands, run_step))
    with pytest.raises(ValueError, match="method"):
        DecodingOptions(method="beam")


def test_a_new_cache_holds_zeros():
    """Verification reads cache entries that a row has not written yet (masked out of its attention): they
    must be finite, since a masked entry still multiplies in (0 * NaN of uninitialised memory is NaN)."""
    model = drafted_model(Tokenizer((6, 10), 3, extent="end"))
    with torch.no_grad():
        cache = model.new_cache(model.encode(variant_images(model.tokenizer)), 20)
    assert all(torch.equal(t, torch.zeros_like(t)) for layer in cache.layers for t in (layer.k, layer.v))


def test_predict_counts_the_passes_and_writes_the_same_labels(tmp_path):
    from rleseg.inference import load
    from rleseg.models import save_checkpoint
    from rleseg.predict import predict_command

    save_checkpoint(drafted_model(Tokenizer((16, 16), 3, extent="end")), tmp_path / "model.safetensors")
    from PIL import Image

    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 130, 3)).astype(np.uint8)).save(image)
    summaries, labels = {}, {}
    for method in ("stepwise", "draft"):
        predictor = load(tmp_path / "model.safetensors", "cpu", method=method)
        summaries[method] = predict_command(predictor, [image], tmp_path / method, progress=False)
        labels[method] = sorted((tmp_path / method / "labels").iterdir())
    stepwise, drafted = summaries["stepwise"], summaries["draft"]
    assert stepwise["passes"] == stepwise["tokens"] > 0  # a pass per token, EOS included
    # the noisy model's draft hardly agrees with it (test_any_draft_gives... shows right drafts cutting passes)
    assert drafted["tokens"] == stepwise["tokens"] and 0 < drafted["passes"] <= stepwise["passes"]
    assert drafted["options"]["decoding"]["method"] == "draft"
    assert [p.read_bytes() for p in labels["draft"]] == [p.read_bytes() for p in labels["stepwise"]]
