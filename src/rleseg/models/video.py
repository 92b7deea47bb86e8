"""Video models: Pix2Seq over a window of N frames, writing the window's VideoTokenizer sequence.

The three fusion modes differ only in the encoder; decoder, loss and generation (grammar-constrained
by the VideoTokenizer) are the image model's, inherited from :class:`Pix2Seq`. Every video encoder is
the image :class:`Encoder` (same parameters under the same names, so image weights load into a video
model), and one frame goes through exactly the image model's computation. With L encoder layers:

- ``"middle"`` (the paper's released video models): each frame goes through the shared backbone and
  layers 1 .. L-1 on its own. In layer L only the reference frame's tokens go on: self-attention among
  themselves, then cross-attention to the other frames' layer-L inputs (each tagged with the sin-cos
  code of its time offset from the reference), then the MLP. The decoder reads one frame's worth of
  tokens, memory (B, h*w, D).
- ``"late"``: the same per-frame layers 1 .. L-1; then all frames' tokens are concatenated, tagged with
  3-D position codes (each cell's 2-D sin-cos code plus the sin-cos code of its frame), and layer L is
  joint self-attention over all of them. The decoder cross-attends to all, memory (B, N*h*w, D).
- ``"static"``: the image encoder on the reference frame alone, memory (B, h*w, D); the decoder still
  writes the whole window's sequence (docs/method.md section 4: the paper reports it can match video models).

The pointer start head (``start_head`` "pointer", what "auto" picks for 1-D starts) works as for images:
the start rows of the embedding table also carry the window's own features at each start cell. The
feature pyramid runs per frame, on that frame's backbone maps and its coarse memory (late: the frame's
part of the joint memory; middle: the fused reference memory, the only layer-L output; static: the
reference frame alone). A volume start (frame t, cell) reads frame t's pyramid at that cell (static: the
reference frame's, for every t); a TAC start, one per cell of the TAC map, reads the frames' pyramids
averaged there, since a TAC run starts wherever any frame's label changes.

The reference frame is ``reference_frame`` (default 0, as in the paper: the TAC sequence puts frame 0 in
the least significant digit, and the window's first frame is the one a sliding window has seen least).
Time codes are ``sincos(t) - sincos(0)``: zero at offset 0, so the reference frame (middle) and frame 0
(late) carry exactly the image model's codes.

Shapes: B = batch, N = frames per window, n = h*w feature-map cells per frame, D = width.

    >>> from rleseg.tokens.video import VideoTokenizer
    >>> tokenizer = VideoTokenizer(frames=2, mask_size=(16, 16), num_classes=3, temporal="tac")
    >>> model = create_model("tiny", tokenizer, fusion="middle")  # a video tokenizer gives a VideoPix2Seq
    >>> loss = model.loss(clips, targets)              # clips (B, 2, 3, H, W) in [0, 1]
    >>> out = model.generate(clips, temperature=0)     # tokenizer.decode(out.tokens[i]): a (2, 16, 16) volume
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rleseg.tokens import MaskTokenizer

from .config import ModelConfig
from .layers import Attention, EncoderLayer
from .pix2seq import Pix2Seq
from .positions import sincos, sincos_grid
from .transformer import Encoder

FUSIONS = ("middle", "late", "static")


@dataclass
class VideoModelConfig(ModelConfig):
    """ModelConfig plus how frames are fused. Window length and temporal scheme are the tokenizer's
    (``tokenizer["frames"]``, ``tokenizer["temporal"]``), stored with the config like any tokenizer."""

    fusion: str = "middle"  # "middle" | "late" | "static", see the module docstring
    reference_frame: int = 0  # the frame the decoder reads (middle) or the only frame seen (static)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if self.reference_frame < 0:
            raise ValueError(f"reference_frame must be >= 0, got {self.reference_frame}")


def time_code(offsets: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) frame offsets -> (N, dim) float: ``sincos(offset) - sincos(0)``, zero at offset 0."""
    return sincos(offsets, dim) - sincos(torch.zeros(1), dim)


# ----------------------------------------------------------------------------- blocks
class FusionLayer(EncoderLayer):
    """Middle fusion's last encoder layer: the image EncoderLayer with cross-attention to the other
    frames between its self-attention and its MLP."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float, drop_path: float,
                 attention_dropout: float | None = None):
        super().__init__(dim, heads, mlp_dim, dropout, drop_path, attention_dropout)
        self.ln_query, self.ln_context = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads, dropout, attention_dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, n, D) reference-frame tokens, context (B, M, D) other frames' tokens -> (B, n, D).
        Without context this is the image layer, so ``Encoder.forward`` still runs on a single frame."""
        x = x + self.drop_path(self.attn(self.ln1(x)))
        if context is not None:
            x = x + self.drop_path(self.cross_attn(self.ln_query(x), context=self.ln_context(context)))
        return x + self.drop_path(self.mlp(self.ln2(x)))


# ----------------------------------------------------------------------------- encoders
class WindowEncoder(Encoder):
    """Base of the video encoders: the image Encoder (same parameters and names) run frame by frame.

    forward: images (B, N, 3, H, W) float in [0, 1] -> memory (B, M, D) for the decoder.
    """

    def __init__(self, config: ModelConfig, frames: int, reference_frame: int):
        super().__init__(config)
        self.frames, self.reference = int(frames), int(reference_frame)

    def check(self, images: torch.Tensor) -> None:
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"video images must be (B, N, 3, H, W), got shape {tuple(images.shape)}")
        if images.shape[1] != self.frames:
            raise ValueError(f"windows of {images.shape[1]} frames, but the model's tokenizer encodes {self.frames}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_frames(images)[0]

    def encode_frames(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """images (B, N, 3, H, W) -> (memory (B, M, D) for the decoder, the backbone's maps of the F frames
        this encoder sees (finest first, each (B*F, C, h, w)), and those frames' coarse features
        (B, F, n, D) that the pointer's pyramid refines). Each fusion mode defines it."""
        raise NotImplementedError

    def frame_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Every frame through backbone, input projection and encoder layers 1 .. L-1 ->
        (x (B, N, n, D), 2-D position codes (n, D), backbone maps (B*N, C, h, w) finest first).
        Mirrors the start of ``Encoder.encode``."""
        self.check(images)
        maps = self.backbone.features(images.flatten(0, 1))
        features = maps[-1]  # (B*N, C, h, w)
        pos = sincos_grid(tuple(features.shape[-2:]), self.input_proj.out_features).to(features)  # (n, D)
        x = self.dropout(self.input_proj(features.flatten(2).transpose(1, 2)) + pos)  # (B*N, n, D)
        for layer in self.layers[:-1]:
            x = layer(x)
        return x.unflatten(0, images.shape[:2]), pos, maps  # (B, N, n, D)

    def project(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The output head on x (B, M, D) with position codes (M, D); mirrors the end of ``Encoder.forward``."""
        x = self.out_ln(self.out_proj(self.ln(x))) + pos
        return self.out_mlp_ln(x + self.out_mlp(x))  # (B, M, D)


class StaticEncoder(WindowEncoder):
    """The image encoder on the reference frame only -> (B, n, D)."""

    def encode_frames(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        self.check(images)
        maps = self.backbone.features(images[:, self.reference])
        memory = self.encode(maps)  # (B, n, D)
        return memory, maps, memory[:, None]


class MiddleFusionEncoder(WindowEncoder):
    """Per-frame layers 1 .. L-1; in layer L the reference frame cross-attends to the others -> (B, n, D).

    The last layer is a :class:`FusionLayer` (the image layer's parameters under the same names, plus
    the cross-attention). With one frame there is nothing to fuse and it stays the image layer.
    """

    def __init__(self, config: ModelConfig, frames: int, reference_frame: int):
        super().__init__(config, frames, reference_frame)
        if frames > 1:
            c = config
            self.layers[-1] = FusionLayer(c.dim, c.heads, c.mlp_dim, c.dropout, self.layers[-1].drop_path.p,
                                          c.attention_dropout)

    def encode_frames(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        x, pos, maps = self.frame_tokens(images)  # (B, N, n, D)
        query = x[:, self.reference]  # (B, n, D)
        if self.frames == 1:
            memory = self.project(self.layers[-1](query), pos)
        else:
            others = [t for t in range(self.frames) if t != self.reference]
            code = time_code(torch.tensor(others) - self.reference, x.shape[-1]).to(x)  # (N-1, D)
            context = (x[:, others] + code[None, :, None]).flatten(1, 2)  # (B, (N-1)*n, D)
            memory = self.project(self.layers[-1](query, context), pos)  # (B, n, D)
        # Only the reference frame has a layer-L output: it is every frame's coarse feature.
        return memory, maps, memory[:, None].expand(-1, self.frames, -1, -1)


class LateFusionEncoder(WindowEncoder):
    """Per-frame layers 1 .. L-1, then joint self-attention over all frames in layer L -> (B, N*n, D),
    frame-major (all cells of frame 0, then frame 1, ...)."""

    def encode_frames(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        x, pos, maps = self.frame_tokens(images)  # (B, N, n, D)
        code = time_code(torch.arange(self.frames), x.shape[-1]).to(x)  # (N, D)
        pos = (pos[None] + code[:, None]).flatten(0, 1)  # (N*n, D), 3-D codes: 2-D cell + time
        x = (x + code[None, :, None]).flatten(1, 2)  # (B, N*n, D)
        memory = self.project(self.layers[-1](x), pos)
        return memory, maps, memory.unflatten(1, (self.frames, -1))


ENCODERS = {"middle": MiddleFusionEncoder, "late": LateFusionEncoder, "static": StaticEncoder}


# ----------------------------------------------------------------------------- model
class VideoPix2Seq(Pix2Seq):
    """Window of frames -> the window's VideoTokenizer tokens. Build with :func:`rleseg.models.create_model`
    (a VideoModelConfig, or a preset or ModelConfig with a VideoTokenizer).

    Images are (B, N, 3, H, W) float RGB in [0, 1], N = ``tokenizer.frames``, H and W divisible by the
    backbone stride. ``forward``, ``loss`` and ``generate`` behave as :class:`Pix2Seq`'s; generated tokens
    decode (``VideoTokenizer.decode``) into (N, h, w) label volumes.
    """

    def __init__(self, config: VideoModelConfig, tokenizer: MaskTokenizer):
        if tokenizer.task != "video":
            raise ValueError(f"a video model needs a VideoTokenizer, got {type(tokenizer).__name__}")
        if not 0 <= config.reference_frame < tokenizer.frames:
            raise ValueError(
                f"reference_frame must be in 0 .. {tokenizer.frames - 1} (the tokenizer's frames), "
                f"got {config.reference_frame}"
            )
        if config.encoder_layers < 1 and config.fusion != "static":
            raise ValueError(f"{config.fusion} fusion happens in the last encoder layer; encoder_layers must be >= 1")
        if config.aux_dense_weight > 0:
            raise ValueError("aux_dense_weight is for image models; video models take aux_dense_weight 0")
        super().__init__(config, tokenizer)

    def build_encoder(self, config: VideoModelConfig) -> WindowEncoder:
        """The image Encoder with a window-aware forward (Pix2Seq's hook, called from its __init__)."""
        return ENCODERS[config.fusion](config, self.tokenizer.frames, config.reference_frame)

    def memory_and_cells(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, N, 3, H, W) -> (memory (B, M, D), the pyramid's features at the start cells: (B, S, D)
        for TAC, one per cell of the TAC map, or (B, N*S, D) for a volume, frame-major; S = H*W cells in the
        tokenizer's scan order)."""
        memory, maps, coarse = self.encoder.encode_frames(images)
        batch, seen = coarse.shape[:2]
        cells = self.pyramid(maps, coarse.flatten(0, 1)).unflatten(0, (batch, seen))  # (B, F, S, D)
        if self.tokenizer.temporal == "tac":
            return memory, cells.mean(dim=1)
        return memory, cells.expand(-1, self.tokenizer.frames, -1, -1).flatten(1, 2)  # static: F = 1, repeated

    def forward(self, images: torch.Tensor, input_tokens: torch.Tensor) -> torch.Tensor:
        """images (B, N, 3, H, W), input_tokens (B, T) int64 starting with the video BOS ->
        logits (B, T, V) float; logits[:, t] predict the token after input_tokens[:, t]."""
        return super().forward(images, input_tokens)
