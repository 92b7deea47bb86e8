"""The learning-efficiency levers of the token model: the pointer start head (start rows read the image's
features at their cell), the auxiliary dense loss, and EOS chosen by probability mass."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import micro_config, overfit_exactly, padded, random_masks
from rleseg.models import create_model
from rleseg.models.generate import drop_outweighed_eos
from rleseg.tokens import EOS, PanopticTokenizer, Tokenizer, VideoTokenizer


def pointer_model(tokenizer, **changes):
    torch.manual_seed(0)
    model = create_model(micro_config(start_head="pointer", **changes), tokenizer)
    with torch.no_grad():  # the content projection starts at zero; give it something to carry
        model.start_proj.weight.normal_(0.0, 0.05)
    return model


@pytest.mark.parametrize("order", ["C", "F"])
def test_pointer_start_rows_carry_each_images_own_features(order):
    tokenizer = Tokenizer((16, 16), 3, order=order)
    model = pointer_model(tokenizer).eval()
    images = torch.rand(2, 3, 64, 64)
    images[1, :, :32] = 0.0  # the top half of image 1 differs from image 0
    _memory, table, cells = model.encode(images)
    start = tokenizer.vocab["start"]
    assert table.shape == (2, tokenizer.vocab.size, 32) and cells.shape == (2, 256, 32)
    shared = model.decoder.embedding_table()
    torch.testing.assert_close(table[:, : start.first], shared[None, : start.first].expand(2, -1, -1))
    assert not torch.allclose(table[0, start.first : start.stop], table[1, start.first : start.stop])
    # The content of start token k is the pyramid's feature at cell k in the tokenizer's scan order.
    content = table[:, start.first : start.stop] - shared[start.first : start.stop]
    torch.testing.assert_close(content, model.start_proj(cells))
    if order == "C":  # row-major cells: the bottom rows (pixels 32..63 of both images) are alike
        difference = (content[0] - content[1]).norm(dim=-1).view(16, 16)
        assert difference[:6].mean() > difference[-3:].mean()


def test_pointer_content_starts_at_zero():
    tokenizer = Tokenizer((16, 16), 3)
    torch.manual_seed(0)
    model = create_model(micro_config(start_head="pointer"), tokenizer)
    _, table, _ = model.encode(torch.rand(2, 3, 64, 64))
    torch.testing.assert_close(table, model.decoder.embedding_table()[None].expand(2, -1, -1))


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=1.0, top_p=0.5)])
def test_pointer_cached_and_uncached_generation_agree(sampling):
    tokenizer = Tokenizer((16, 16), 3)
    model = pointer_model(tokenizer)
    images = torch.rand(3, 3, 64, 64)
    runs = [model.generate(images, max_len=40, use_cache=cache, generator=torch.Generator().manual_seed(1), **sampling)
            for cache in (True, False)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    for seq in runs[0].tokens.numpy():
        tokenizer.decode(seq, errors="strict")


def test_pointer_needs_one_start_token_per_cell():
    with pytest.raises(ValueError, match="1-D starts"):
        create_model(micro_config(start_head="pointer"), Tokenizer((16, 16), 3, starts="2d"))
    with pytest.raises(ValueError, match="start_head must be one of"):
        create_model(micro_config(start_head="pointers"), Tokenizer((16, 16), 3))
    with pytest.raises(ValueError, match="1-D starts"):  # the video pointer: tests/test_video_pointer.py
        create_model(micro_config(start_head="pointer"), VideoTokenizer(2, (8, 8), 3, starts="2d"))


@pytest.mark.parametrize("order", ["C", "F"])
def test_aux_loss_is_the_cell_cross_entropy_against_the_decoded_targets(order):
    tokenizer = Tokenizer((16, 16), 3, order=order)
    masks = random_masks(np.random.default_rng(1), 3, 16, 3)
    targets = padded(tokenizer, masks)
    images = torch.rand(3, 3, 64, 64)
    torch.manual_seed(0)
    model = create_model(micro_config(aux_dense_weight=0.5), tokenizer).eval()
    _, _, cells = model.encode(images)
    labels = torch.from_numpy(np.stack([m.T if order == "F" else m for m in masks]).reshape(3, -1)).long()
    expected = F.cross_entropy(model.aux_head(cells).flatten(0, 1), labels.flatten())
    torch.testing.assert_close(model.aux_loss(cells, targets), expected)
    plain = create_model(micro_config(), tokenizer).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    token_loss = plain.loss(images, targets)
    torch.testing.assert_close(model.loss(images, targets), token_loss + 0.5 * expected, atol=1e-5, rtol=1e-5)


def test_small_pointer_model_with_aux_loss_overfits_four_images_exactly():
    torch.manual_seed(0)
    tokenizer = Tokenizer((16, 16), num_classes=3)
    masks = random_masks(np.random.default_rng(0), 4, 16, 3)
    targets = padded(tokenizer, masks)
    images = torch.rand(4, 3, 64, 64)
    model = create_model(micro_config(dim=64, mlp_dim=128, start_head="pointer", aux_dense_weight=1.0), tokenizer)
    overfit_exactly(model, images, targets, masks)


def test_eos_is_dropped_only_where_the_other_allowed_tokens_outweigh_it():
    logits = torch.log(torch.tensor([
        [0.0, 0.4, 0.3, 0.3],  # EOS beats each start, not their sum: dropped
        [0.0, 0.6, 0.2, 0.2],  # EOS holds more than half: kept
        [0.0, 0.1, 0.9, 0.0],  # only EOS allowed: kept
        [0.0, 0.4, 0.3, 0.3],  # EOS not allowed: unchanged
    ]).clamp_min(1e-9))
    allowed = torch.tensor([[False, True, True, True], [False, True, True, True],
                            [False, True, False, False], [False, False, True, True]])
    out = drop_outweighed_eos(logits, allowed)
    assert out[:, EOS].tolist() == [False, True, True, False]
    assert torch.equal(out[:, 2:], allowed[:, 2:])


def test_eos_by_mass_generation_is_never_shorter():
    tokenizer = Tokenizer((16, 16), 3)
    torch.manual_seed(0)
    model = create_model(micro_config(), tokenizer)
    with torch.no_grad():  # make EOS the single most likely token, below half of the mass
        model.decoder.output_bias[EOS] = 4.0
    images = torch.rand(3, 3, 64, 64)
    plain = model.generate(images, max_len=40, temperature=0)
    by_mass = model.generate(images, max_len=40, temperature=0, eos_by_mass=True)
    lengths = [(seq != 0).sum().item() for seq in (plain.tokens, by_mass.tokens)]
    assert (plain.tokens[:, 0] == EOS).all() and lengths[1] > lengths[0]
    for seq in by_mass.tokens.numpy():
        tokenizer.decode(seq, errors="strict")


def test_auto_start_head_points_wherever_there_is_one_start_token_per_cell():
    heads = {
        "1d": create_model(micro_config(start_head="auto"), Tokenizer((16, 16), 3)).config.start_head,
        "2d": create_model(micro_config(start_head="auto"), Tokenizer((16, 16), 3, starts="2d")).config.start_head,
        "panoptic": create_model(micro_config(start_head="auto"),
                                 PanopticTokenizer((16, 16), 3, thing_classes=[1])).config.start_head,
        "video": create_model(micro_config(start_head="auto"),
                              VideoTokenizer(2, (8, 8), 3, temporal="tac")).config.start_head,
    }
    assert heads == {"1d": "pointer", "2d": "table", "panoptic": "pointer", "video": "pointer"}


def test_pyramid_memory_adds_pooled_cells_to_what_the_decoder_reads():
    tokenizer = Tokenizer((16, 16), 3)
    model = pointer_model(tokenizer, pyramid_memory=True)
    images = torch.rand(2, 3, 64, 64)
    memory, _, _ = model.encode(images)
    assert memory.shape == (2, 2 * 2 + 8 * 8, 32)  # the 2x2 stride-32 cells, then the 16x16 cells pooled 2x2
    runs = [model.generate(images, max_len=30, temperature=0, use_cache=cache) for cache in (True, False)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    with pytest.raises(ValueError, match="pyramid_memory needs the pyramid"):
        create_model(micro_config(start_head="table", pyramid_memory=True), tokenizer)
