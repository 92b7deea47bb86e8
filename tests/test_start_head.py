"""The learning-efficiency levers of the token model: the pointer start head (start rows read the image's
features at their cell) and the auxiliary dense loss (the per-cell head). The model contracts run over the
"pointer" variant (pointer and cell head) and the others in tests/test_model_contracts.py."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import micro_config, overfit_exactly, padded, random_masks
from rleseg.models import create_model
from rleseg.tokens import PanopticTokenizer, Tokenizer, VideoTokenizer


def pointer_model(tokenizer, **changes):
    torch.manual_seed(0)
    model = create_model(micro_config(start_head="pointer", **changes), tokenizer)
    with torch.no_grad():  # the content projection starts at zero; give it something to carry
        model.pointer.start_proj.weight.normal_(0.0, 0.05)
    return model


@pytest.mark.parametrize("order", ["C", "F"])
def test_pointer_start_rows_carry_each_images_own_features(order):
    tokenizer = Tokenizer((16, 16), 3, order=order)
    model = pointer_model(tokenizer).eval()
    images = torch.rand(2, 3, 64, 64)
    images[1, :, :32] = 0.0  # the top half of image 1 differs from image 0
    encoded = model.encode(images)
    table, cells = encoded.table, encoded.cells
    start = tokenizer.vocab["start"]
    assert table.shape == (2, tokenizer.vocab.size, 32) and cells.shape == (2, 256, 32)
    shared = model.decoder.embedding_table()
    torch.testing.assert_close(table[:, : start.first], shared[None, : start.first].expand(2, -1, -1))
    assert not torch.allclose(table[0, start.first : start.stop], table[1, start.first : start.stop])
    # The content of start token k is the pyramid's feature at cell k in the tokenizer's scan order.
    content = table[:, start.first : start.stop] - shared[start.first : start.stop]
    torch.testing.assert_close(content, model.pointer.start_proj(cells))
    if order == "C":  # row-major cells: the bottom rows (pixels 32..63 of both images) are alike
        difference = (content[0] - content[1]).norm(dim=-1).view(16, 16)
        assert difference[:6].mean() > difference[-3:].mean()


def test_pointer_content_starts_at_zero():
    tokenizer = Tokenizer((16, 16), 3)
    torch.manual_seed(0)
    model = create_model(micro_config(start_head="pointer"), tokenizer)
    table = model.encode(torch.rand(2, 3, 64, 64)).table
    torch.testing.assert_close(table, model.decoder.embedding_table()[None].expand(2, -1, -1))


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
    cells = model.encode(images).cells
    labels = torch.from_numpy(np.stack([m.T if order == "F" else m for m in masks]).reshape(3, -1)).long()
    expected = F.cross_entropy(model.cell_head(cells).flatten(0, 1), labels.flatten())
    torch.testing.assert_close(model.cell_head.loss(cells, targets), expected)
    plain = create_model(micro_config(), tokenizer).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    token_loss = plain.loss(images, targets)
    torch.testing.assert_close(model.loss(images, targets), token_loss + 0.5 * expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("order", ["C", "F"])
def test_panoptic_cell_head_also_marks_each_instance_first_cell(order):
    tokenizer = PanopticTokenizer((4, 5), 3, [1], order=order)  # class 2 is stuff
    semantic = np.array([[1, 1, 0, 2, 2], [1, 0, 1, 1, 2], [0, 0, 1, 1, 0], [2, 0, 0, 0, 1]])
    instances = np.array([[7, 7, 0, 0, 0], [7, 0, 3, 3, 0], [0, 0, 3, 3, 0], [0, 0, 0, 0, 9]])
    model = create_model(micro_config(aux_dense_weight=1.0), tokenizer).eval()
    labels = model.cell_head.labels(tokenizer.encode(semantic, instances))
    expected = semantic.copy()
    for cell in [(0, 0), (1, 2), (3, 4)]:  # in either scan order
        expected[cell] = 3  # num_classes: the first cell of an instance in scan order
    assert labels.tolist() == expected.ravel(order=order).tolist()
    assert model.cell_head.classify.out_features == 4
    targets = torch.from_numpy(np.stack([tokenizer.encode(semantic, instances)] * 2))
    cells = model.encode(torch.rand(2, 3, 64, 64)).cells
    expected_loss = F.cross_entropy(model.cell_head(cells).flatten(0, 1), torch.from_numpy(labels).repeat(2))
    torch.testing.assert_close(model.cell_head.loss(cells, targets), expected_loss)


def test_small_pointer_model_with_aux_loss_overfits_four_images_exactly():
    torch.manual_seed(0)
    tokenizer = Tokenizer((16, 16), num_classes=3)
    masks = random_masks(np.random.default_rng(0), 4, 16, 3)
    targets = padded(tokenizer, masks)
    images = torch.rand(4, 3, 64, 64)
    model = create_model(micro_config(dim=64, mlp_dim=128, start_head="pointer", aux_dense_weight=1.0), tokenizer)
    overfit_exactly(model, images, targets, masks)


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
