"""The pointer start head of the video models: a volume start (frame, cell) carries that frame's pyramid
feature at the cell, a TAC start the frames' features averaged at its cell; the rows equal the projected
cells in the tokenizer's own start numbering, small models overfit clips exactly, ``auto`` picks the pointer,
``table`` stays selectable and older video checkpoints load as table. The model contracts (cache, strict
decoding, ...) run over the "video tac", "video volume" (pointer) and "video static", "video 2-D starts"
(table) variants in tests/test_model_contracts.py."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from helpers import micro_config, overfit_exactly, padded
from rleseg.models import Pix2Seq, create_model, load_checkpoint, save_checkpoint
from rleseg.models.video import FUSIONS
from rleseg.tokens import Tokenizer, VideoTokenizer
from test_video_model import moving_squares

FRAMES = 3


def video_config(**changes):
    return micro_config(**{"encoder_layers": 2, "max_seq_len": 128, **changes})


def pointer_model(tokenizer, fusion: str, reference_frame: int = 0, **changes):
    torch.manual_seed(0)
    model = create_model(video_config(**changes), tokenizer, fusion=fusion, reference_frame=reference_frame)
    assert model.config.start_head == "pointer"  # what "auto" resolves to for 1-D starts
    with torch.no_grad():  # the content projection starts at zero; give it something to carry
        model.pointer.start_proj.weight.normal_(0.0, 0.05)
    return model.eval()


def frame_cells(model, clips: torch.Tensor) -> torch.Tensor:
    """The pyramid's cells of every frame, computed frame by frame from the backbone and the encoder's
    memory: (B, N, S, D). Late fusion's coarse feature of frame t is its part of the joint memory; middle
    fusion's is the fused reference memory; static fusion sees only the reference frame."""
    memory = model.encoder(clips)
    reference = model.config.reference_frame
    cells = []
    for t in range(clips.shape[1]):
        seen = reference if model.config.fusion == "static" else t
        coarse = memory.unflatten(1, (FRAMES, -1))[:, t] if model.config.fusion == "late" else memory
        cells.append(model.pyramid(model.encoder.backbone.features(clips[:, seen]), coarse))
    return torch.stack(cells, dim=1)


def start_content(model, clips: torch.Tensor) -> torch.Tensor:
    """What the pointer adds to the start rows of each window's table: (B, starts, D)."""
    table = model.encode(clips).table
    start = model.tokenizer.vocab["start"]
    shared = model.decoder.embedding_table()
    return table[:, start.first : start.stop] - shared[start.first : start.stop]


def start_index(tokenizer, mask: np.ndarray) -> int:
    """The start value (0-based, within the start range) of a one-pixel mask's only run."""
    return int(tokenizer.encode(mask)[0]) - tokenizer.vocab["start"].first


# ----------------------------------------------------------------------------- what the start rows carry
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_volume_start_rows_carry_their_frames_cell(fusion, order):
    tokenizer = VideoTokenizer(FRAMES, (8, 8), 3, temporal="volume", scheme="class", order=order)
    model = pointer_model(tokenizer, fusion, reference_frame=1)
    clips = torch.rand(2, FRAMES, 3, 64, 64)
    with torch.no_grad():
        content = start_content(model, clips)
        expected = model.pointer.start_proj(frame_cells(model, clips))  # (B, N, S, D)
    assert content.shape == (2, FRAMES * 64, 32)
    # The start token of pixel (t, r, c) is the one the tokenizer writes for it; its row is frame t's cell
    # (r, c), numbered as the image tokenizer of one frame numbers it.
    frame_tokenizer = Tokenizer((8, 8), 3, scheme="class", order=order)
    rng = np.random.default_rng(0)
    for t, r, c in zip(rng.integers(0, FRAMES, 12), rng.integers(0, 8, 12), rng.integers(0, 8, 12), strict=True):
        volume = np.zeros((FRAMES, 8, 8), np.uint8)
        volume[t, r, c] = 1
        row, cell = start_index(tokenizer, volume), start_index(frame_tokenizer, volume[t])
        torch.testing.assert_close(content[:, row], expected[:, t, cell])
    torch.testing.assert_close(content, expected.flatten(1, 2))
    frames_differ = (expected[:, 0] - expected[:, 2]).abs().max() > 1e-3
    assert frames_differ == (fusion != "static")  # static repeats its one frame's cells


@pytest.mark.parametrize("fusion", FUSIONS)
def test_tac_start_rows_carry_the_frames_cells_averaged(fusion):
    tokenizer = VideoTokenizer(FRAMES, (8, 8), 3, temporal="tac", scheme="class", order="F")
    model = pointer_model(tokenizer, fusion)
    clips = torch.rand(2, FRAMES, 3, 64, 64)
    changed = clips.clone()
    changed[:, 2, :, :32] = 0.0  # the top half of the last frame goes dark
    with torch.no_grad():
        content = start_content(model, clips)
        torch.testing.assert_close(content, model.pointer.start_proj(frame_cells(model, clips).mean(dim=1)))
        moved = (content - start_content(model, changed)).norm(dim=-1).view(2, 8, 8)  # order F: (col, row)
    assert content.shape == (2, 64, 32)
    if fusion == "static":  # frame 0 alone
        assert moved.max() == 0
    else:  # every TAC start sees the last frame, most of all where it changed (its top rows)
        assert moved.min() > 0 and moved[..., :4].mean() > moved[..., 4:].mean()


def test_pointer_content_starts_at_zero():
    tokenizer = VideoTokenizer(2, (8, 8), 3, temporal="volume")
    torch.manual_seed(0)
    model = create_model(video_config(), tokenizer, fusion="late")
    table = model.encode(torch.rand(2, 2, 3, 64, 64)).table
    torch.testing.assert_close(table, model.decoder.embedding_table()[None].expand(2, -1, -1))


def test_static_pointer_with_image_pointer_weights_is_that_image_model_on_its_frame():
    tokenizer = VideoTokenizer(FRAMES, (8, 8), 3, temporal="tac", scheme="class")
    torch.manual_seed(0)
    image = Pix2Seq(video_config(start_head="pointer"), tokenizer).eval()  # the image pointer, on the TAC map
    with torch.no_grad():
        image.pointer.start_proj.weight.normal_(0.0, 0.05)
    video = create_model(video_config(), tokenizer, fusion="static", reference_frame=2).eval()
    video.load_state_dict(image.state_dict())
    clips, tokens = torch.rand(2, FRAMES, 3, 64, 64), torch.randint(0, tokenizer.vocab.size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(video(clips, tokens), image(clips[:, 2], tokens))


# ----------------------------------------------------------------------------- learning
@pytest.mark.parametrize("temporal,scheme,fusion", [("tac", "class", "middle"), ("volume", "lac", "late")])
def test_pointer_video_model_overfits_clips_exactly(temporal, scheme, fusion):
    torch.manual_seed(0)
    tokenizer = VideoTokenizer(2, (16, 16), 3, temporal=temporal, scheme=scheme)
    clips = moving_squares(np.random.default_rng(0), 4, 2, 16, 3)
    targets = padded(tokenizer, clips)
    images = torch.rand(4, 2, 3, 64, 64)
    model = create_model(video_config(dim=64, mlp_dim=128, encoder_layers=1, max_seq_len=targets.shape[1] + 8),
                         tokenizer, fusion=fusion)
    assert model.config.start_head == "pointer"
    overfit_exactly(model, images, targets, clips, lr=2e-3, every=25)


# ----------------------------------------------------------------------------- choosing the head, old files
def test_auto_points_for_one_dimensional_video_starts_and_table_stays_selectable():
    def head(tokenizer, **changes):
        model = create_model(video_config(**changes), tokenizer)
        assert (model.pointer is not None) == (model.config.start_head == "pointer")
        return model.config.start_head

    tac, volume = VideoTokenizer(2, (8, 8), 3), VideoTokenizer(2, (8, 8), 3, temporal="volume")
    assert head(tac) == head(volume) == "pointer"
    assert head(VideoTokenizer(2, (8, 8), 3, starts="2d")) == "table"
    assert head(tac, start_head="table") == head(volume, start_head="table") == "table"
    with pytest.raises(ValueError, match="1-D starts"):
        create_model(video_config(start_head="pointer"), VideoTokenizer(2, (8, 8), 3, starts="2d"))
    with pytest.raises(ValueError, match="aux_dense_weight needs an image tokenizer"):
        create_model(video_config(aux_dense_weight=1.0), tac)


@pytest.mark.parametrize("stored", ["table", None])
def test_older_video_checkpoints_load_as_table(tmp_path, stored):
    """A video model saved before the video pointer resolved "auto" to "table" and stored that; a file from
    before start heads has no start_head field. Both load as the table model they are."""
    tokenizer = VideoTokenizer(2, (8, 8), 3)
    torch.manual_seed(0)
    model = create_model(video_config(start_head="table"), tokenizer, fusion="middle").eval()
    path = tmp_path / "video.safetensors"
    save_checkpoint(model, path)
    with safe_open(str(path), framework="pt") as f:
        metadata, state = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}
    config = json.loads(metadata["config"])
    assert config["start_head"] == "table"
    if stored is None:
        del config["start_head"]
    save_file(state, str(path), metadata={**metadata, "config": json.dumps(config)})
    loaded = load_checkpoint(path)
    assert loaded.config.start_head == "table" and loaded.pointer is None
    clips = torch.rand(2, 2, 3, 64, 64)
    assert torch.equal(loaded.generate(clips, max_len=30, temperature=0).tokens,
                       model.generate(clips, max_len=30, temperature=0).tokens)
