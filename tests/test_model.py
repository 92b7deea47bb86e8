"""The image model (rleseg.models.Pix2Seq): presets and shapes, input sizes, what generate refuses, the
decoder's cached steps against its full pass, unconstrained rows that stop, sampling filters, the loss's
token weights, start geometry, and a small model overfitting 4 images exactly. The contracts every variant
keeps (cache, strict decoding, teacher forcing, rows, candidates, checkpoints) are in test_model_contracts.py.
Everything random-init, offline, CPU."""

import numpy as np
import pytest
import torch

from helpers import decoded, micro_config, overfit_exactly, padded, random_masks
from rleseg.models import create_model
from rleseg.models.generate import (
    EARLIEST_INSTANCE,
    DecodingOptions,
    earliest_openings,
    resolve_earliest_instance,
    sample_next,
)
from rleseg.models.positions import sincos_grid
from rleseg.tokens import EOS, PAD, PanopticTokenizer, Tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer((16, 16), num_classes=3, scheme="lac")


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("preset", ["tiny", "small", "paper"])
def test_presets_forward_shapes_and_loss(preset, tokenizer):
    torch.manual_seed(0)
    model = create_model(preset, tokenizer)
    assert model.tokenizer is tokenizer
    assert model.config.tokenizer == tokenizer.to_dict()
    images = torch.rand(2, 3, 64, 64)  # full preset image sizes would only cost time; any size the stride divides
    targets = padded(tokenizer, random_masks(np.random.default_rng(0), 2, 16, 3))
    logits = model(images, targets)
    assert logits.shape == (2, targets.shape[1], tokenizer.vocab.size) and logits.dtype == torch.float32
    loss = model.loss(images, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    if preset == "paper":  # docs/method.md section 6: about 37 M parameters with ResNet-50 (vocabulary-dependent)
        assert 33e6 < sum(p.numel() for p in model.parameters()) < 40e6
        assert model.config.dim == 256 and model.config.encoder_layers == model.config.decoder_layers == 6


def test_tiny_preset_trains_and_generates(tokenizer):
    model = create_model("tiny", tokenizer)
    images = torch.rand(2, 3, 64, 64)
    targets = padded(tokenizer, random_masks(np.random.default_rng(1), 2, 16, 3))
    model.loss(images, targets).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    out = model.generate(images, max_len=20, temperature=0)
    assert out.tokens.dtype == torch.int64 and out.logprobs.dtype == torch.float32
    assert out.tokens.shape == out.logprobs.shape and out.tokens.shape[0] == 2 and out.tokens.shape[1] <= 20
    masks = decoded(tokenizer, out.tokens)
    assert len(masks) == 2 and masks[0].shape == (16, 16)
    assert model.training  # generate restores the mode it found


def test_generate_rejects_bad_lengths_and_sampling(tokenizer):
    model = create_model(micro_config(max_seq_len=16), tokenizer).eval()  # batch norm cannot train on 1 x 1 maps
    images = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"max_len must be in 1 \.\. max_seq_len = 16"):
        model.generate(images, max_len=17)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(images, temperature=-1)
    with pytest.raises(ValueError, match="exceeds max_seq_len 16"):
        model(images, torch.full((1, 17), tokenizer.bos))
    assert model.generate(images, max_len=16).tokens.shape[1] <= 16


def test_any_input_size_the_stride_divides(tokenizer):
    model = create_model(micro_config(), tokenizer).eval()
    for shape in [(64, 96), (96, 64), (32, 32)]:
        assert model(torch.rand(1, 3, *shape), torch.tensor([[tokenizer.bos]])).shape == (1, 1, tokenizer.vocab.size)
    with pytest.raises(ValueError, match="not divisible by the backbone stride 32"):
        model(torch.rand(1, 3, 50, 64), torch.tensor([[tokenizer.bos]]))
    vit = create_model(micro_config(backbone="test_vit"), tokenizer).eval()  # timm ViT, patch 16
    assert vit.encoder(torch.rand(1, 3, 64, 96)).shape == (1, 4 * 6, 32)
    assert vit.encoder(torch.rand(1, 3, 32, 32)).shape == (1, 2 * 2, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda(tokenizer):
    model = create_model(micro_config(), tokenizer).cuda()
    images = torch.rand(2, 3, 64, 64, device="cuda")
    targets = padded(tokenizer, random_masks(np.random.default_rng(2), 2, 16, 3)).cuda()
    assert model.loss(images, targets).is_cuda
    out = model.generate(images, max_len=30, temperature=1.0)
    assert out.tokens.device.type == "cpu" and out.logprobs.device.type == "cpu"
    for seq in out.tokens.numpy():
        tokenizer.decode(seq, errors="strict")


# ----------------------------------------------------------------------------- generation
def test_cached_step_logits_match_full_forward(tokenizer):
    torch.manual_seed(0)
    model = create_model(micro_config(), tokenizer).eval()
    images = torch.rand(2, 3, 64, 64)
    targets = padded(tokenizer, random_masks(np.random.default_rng(3), 2, 16, 3))
    inputs = torch.cat([torch.full((2, 1), tokenizer.bos), targets], 1)  # (B, T)
    with torch.no_grad():
        full = model(images, inputs)
        cache = model.decoder.new_cache(model.encoder(images), inputs.shape[1])
        decoder, table = model.decoder, model.decoder.embedding_table()
        steps = [decoder.logits(decoder(decoder.rows_of(table, inputs[:, t : t + 1]), cache=cache, pos=t), table)
                 for t in range(inputs.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_unconstrained_generation_stops_and_pads(tokenizer):
    torch.manual_seed(0)
    model = create_model(micro_config(), tokenizer)
    with torch.no_grad():  # make EOS likely so that rows stop at different steps
        model.decoder.output_bias[EOS] = 4.0
    generator = torch.Generator().manual_seed(0)
    out = model.generate(torch.rand(6, 3, 64, 64), max_len=30, temperature=1.0, constrained=False, generator=generator)
    for seq in out.tokens.numpy():
        eos = np.flatnonzero(seq == EOS)
        if eos.size:
            assert (seq[eos[0] + 1 :] == PAD).all()
    assert len(decoded(tokenizer, out.tokens, constrained=False)) == 6


def test_sample_next_filters():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0], [5.0, 0.0, 1.0, 4.0]])
    allowed = torch.tensor([[True, True, True, True], [False, True, True, True]])
    greedy, logprob = sample_next(logits, allowed, temperature=0)
    assert greedy.tolist() == [1, 3]
    torch.testing.assert_close(logprob, torch.log_softmax(logits.masked_fill(~allowed, -torch.inf), -1)[[0, 1], [1, 3]])
    generator = torch.Generator().manual_seed(0)
    for kw in [dict(top_k=1), dict(top_p=0.01)]:
        assert sample_next(logits, allowed, generator=generator, **kw)[0].tolist() == [1, 3]
    picks = torch.stack([sample_next(logits, allowed, top_k=2, generator=generator)[0] for _ in range(200)])
    assert set(picks[:, 0].tolist()) == {1, 2} and set(picks[:, 1].tolist()) == {2, 3}
    with pytest.raises(ValueError, match="top_p"):
        create_model(micro_config(), Tokenizer((4, 4), 2, "binary")).generate(torch.rand(1, 3, 32, 32), top_p=0)


# ----------------------------------------------------------------------------- loss and embeddings
def test_loss_is_the_token_weighted_cross_entropy(tokenizer):
    torch.manual_seed(0)
    config = micro_config(pad_weight=0.1, eos_weight=0.5, class_weight=2.0, label_smoothing=0.1)
    model = create_model(config, tokenizer).eval()
    images = torch.rand(2, 3, 64, 64)
    targets = padded(tokenizer, random_masks(np.random.default_rng(4), 2, 16, 3))
    inputs = torch.cat([torch.full((2, 1), tokenizer.bos), targets[:, :-1]], 1)
    ce = torch.nn.functional.cross_entropy(
        model(images, inputs).flatten(0, 1), targets.flatten(), reduction="none", label_smoothing=0.1
    )
    flat = targets.flatten()
    lac = torch.from_numpy(tokenizer.vocab["lac"].contains(flat.numpy()))
    weight = torch.where(flat == PAD, 0.1, torch.where(flat == EOS, 0.5, torch.where(lac, 2.0, 1.0)))
    torch.testing.assert_close(model.loss(images, targets), (ce * weight).sum() / weight.sum())


@pytest.mark.parametrize("starts", ["1d", "2d"])
def test_start_tokens_carry_geometry(starts):
    tokenizer = Tokenizer((12, 12), 3, starts=starts)
    name = "start" if starts == "1d" else "coord"
    span = tokenizer.vocab[name]
    model = create_model(micro_config(dim=64), tokenizer)
    table = model.decoder.embedding_table().detach()
    rows = table[span.first : span.stop]
    norm = 0.02 * 64**0.5
    torch.testing.assert_close(rows.norm(dim=1), torch.full((span.size,), norm))
    assert torch.all(model.decoder.token_weight[span.first : span.stop] == 0)  # residual starts at zero
    cos = torch.nn.functional.cosine_similarity
    if starts == "1d":  # (5, 5) is nearer (5, 6) and (6, 5) than (11, 0) in embedding space
        a, right, below, far = rows[5 * 12 + 5], rows[5 * 12 + 6], rows[6 * 12 + 5], rows[11 * 12]
        assert cos(a, right, dim=0) > cos(a, far, dim=0) and cos(a, below, dim=0) > cos(a, far, dim=0)
        code = sincos_grid((12, 12), 64)
        torch.testing.assert_close(rows / norm, code / code.norm(dim=1, keepdim=True))
    else:
        assert cos(rows[3], rows[4], dim=0) > cos(rows[3], rows[11], dim=0)
    plain = create_model(micro_config(dim=64, start_geometry=False), tokenizer)
    assert torch.all(plain.decoder.geometry == 0)


# ----------------------------------------------------------------------------- overfitting
@pytest.mark.parametrize("scheme,starts", [("lac", "1d"), ("class", "2d")])
def test_small_model_overfits_four_images_exactly(scheme, starts):
    """A few hundred steps on 4 fixed image/mask pairs; greedy decoding must then reproduce every mask."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tokenizer = Tokenizer((16, 16), num_classes=3, scheme=scheme, starts=starts)
    masks = random_masks(rng, 4, 16, 3)
    targets = padded(tokenizer, masks)
    images = torch.rand(4, 3, 64, 64)
    model = create_model(micro_config(dim=64, mlp_dim=128), tokenizer)
    overfit_exactly(model, images, targets, masks)


def test_attention_dropout_is_its_own_rate():
    """model.attention_dropout drops attention weights at its own rate (the paper: none), the rest at
    model.dropout; unset, attention weights take model.dropout too."""
    from rleseg.models.layers import Attention

    tokenizer = Tokenizer((8, 8), 3)
    for rates, expected in (({}, {0.1}), ({"attention_dropout": 0.0}, {0.0})):
        model = create_model(micro_config(dropout=0.1, **rates), tokenizer)
        attention = [m for m in model.modules() if isinstance(m, Attention)]
        assert attention and {m.dropout for m in attention} == expected
        assert {m.resid_dropout.p for m in attention} == {0.1}
    with pytest.raises(ValueError, match="attention_dropout"):
        micro_config(attention_dropout=1.5)


def test_earliest_instance_opens_the_earliest_plausible_group():
    tok = PanopticTokenizer((2, 4), 2, [1])
    starts, vocab_size = tok.vocab["start"], tok.vocab.size
    grammar = tok.grammar(2)
    for token in (starts.token(0), tok.vocab["length"].token(1), tok.vocab["class"].token(1)):  # one instance
        grammar.advance(np.array([token, token]))
    logits = torch.full((2, vocab_size), -30.0)
    logits[:, starts.token(6)] = np.log(0.2)
    logits[:, starts.token(7)] = np.log(0.5)
    logits[:, EOS] = np.log(0.3)
    allowed = torch.from_numpy(grammar.allowed(10))
    chosen = logits.masked_fill(~allowed, -torch.inf).argmax(-1)
    assert grammar.openings().tolist() == [True, True] and chosen.tolist() == [starts.token(7)] * 2
    for share, expected in [(0.3, 6), (0.5, 7), (1.0, 7)]:
        assert earliest_openings(logits, allowed, grammar, share, chosen).tolist() == [starts.token(expected)] * 2
    grammar.runs_in_group[1] = 1  # row 1 inside a group: kept as chosen
    assert earliest_openings(logits, allowed, grammar, 0.3, chosen).tolist() == [starts.token(6), starts.token(7)]


def test_earliest_instance_by_default_only_where_it_applies():
    resolve = resolve_earliest_instance
    assert resolve(DecodingOptions(), "panoptic").earliest_instance == EARLIEST_INSTANCE
    assert resolve(DecodingOptions(earliest_instance=0.2), "panoptic").earliest_instance == 0.2
    for task, changes in [("semantic", {}), ("video", {}), ("panoptic", {"temperature": 1.0}),
                          ("panoptic", {"constrained": False})]:
        assert resolve(DecodingOptions(**changes), task).earliest_instance == 0.0
        with pytest.raises(ValueError, match="earliest_instance is for greedy, constrained decoding of panoptic"):
            resolve(DecodingOptions(earliest_instance=0.5, **changes), task)


def test_earliest_instance_at_share_one_is_greedy_and_only_for_panoptic_greedy(tokenizer):
    tok = PanopticTokenizer((6, 10), 2, [1])
    torch.manual_seed(0)
    model = create_model(micro_config(max_seq_len=40), tok).eval()
    images = torch.rand(3, 3, 64, 64)
    greedy = model.generate(images, earliest_instance=0.0)
    assert torch.equal(model.generate(images, earliest_instance=1.0).tokens, greedy.tokens)
    default = model.generate(images).tokens  # a panoptic model opens by the rule unless told otherwise
    assert torch.equal(default, model.generate(images, earliest_instance=EARLIEST_INSTANCE).tokens)
    relaxed = model.generate(images, earliest_instance=0.01)
    for row in relaxed.tokens.numpy():
        tok.decode(row, errors="strict")  # still grammatical
    with pytest.raises(ValueError, match="earliest_instance is for greedy, constrained decoding of panoptic"):
        model.generate(images, earliest_instance=0.5, temperature=1.0)
    with pytest.raises(ValueError, match="earliest_instance is for greedy, constrained decoding of panoptic"):
        create_model(micro_config(), tokenizer).generate(images, earliest_instance=0.5)
