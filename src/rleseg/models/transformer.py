"""The encoder and decoder transformers of the token models (:class:`~rleseg.models.pix2seq.Pix2Seq`).

:class:`Encoder`: images -> the backbone's maps -> a transformer over the coarsest map's cells -> memory.
:class:`Decoder`: embedded tokens -> causal self-attention and cross-attention to the memory (with a
key-value cache for generation) -> states, scored against the tied token table. Shapes use B = batch,
R = token rows, N = visual tokens, T = positions, D = width, V = vocabulary, H = heads, P = pointer rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rleseg.tokens import MaskTokenizer

from .backbone import Backbone
from .config import ModelConfig
from .layers import MLP, DecoderLayer, EncoderLayer, KVCache
from .positions import sincos_grid, start_geometry
from .pyramid import pointer_span


# ----------------------------------------------------------------------------- encoder
class Encoder(nn.Module):
    """images (B, 3, H, W) in [0, 1] -> memory (B, N, D), N = (H/stride) * (W/stride), row-major cells."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        kwargs = dict(c.backbone_kwargs)
        if c.uses_pyramid:
            kwargs["out_indices"] = None  # every level: the pyramid reads the finer ones
        self.backbone = Backbone(c.backbone, c.pretrained, c.freeze_backbone, **kwargs)
        self.input_proj = nn.Linear(self.backbone.channels, c.dim)
        self.dropout = nn.Dropout(c.dropout)
        rates = torch.linspace(0, c.drop_path, c.encoder_layers).tolist()
        self.layers = nn.ModuleList(EncoderLayer(c.dim, c.heads, c.mlp_dim, c.dropout, r, c.attention_dropout)
                                    for r in rates)
        self.ln = nn.LayerNorm(c.dim)
        # Projection to the decoder (positions added again so cross-attention sees where each cell is).
        self.out_proj = nn.Linear(c.dim, c.dim)
        self.out_ln = nn.LayerNorm(c.dim)
        self.out_mlp = MLP(c.dim, c.mlp_dim, c.dropout)
        self.out_mlp_ln = nn.LayerNorm(c.dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(self.backbone.features(images))

    def encode(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The backbone's maps (finest first) -> memory (B, N, D), read off the last (coarsest) map."""
        features = maps[-1]  # (B, C, h, w)
        h, w = features.shape[-2:]
        pos = sincos_grid((h, w), self.input_proj.out_features).to(features)  # (N, D)
        x = self.input_proj(features.flatten(2).transpose(1, 2))  # (B, N, D)
        x = self.dropout(x + pos)
        for layer in self.layers:
            x = layer(x)
        x = self.out_ln(self.out_proj(self.ln(x))) + pos
        return self.out_mlp_ln(x + self.out_mlp(x))  # (B, N, D)


# ----------------------------------------------------------------------------- decoder
@dataclass
class DecoderCache:
    """What cached generation keeps between steps, per decoder layer: the cross-attention keys and values
    of the memory (computed once) and the self-attention keys and values of the positions so far."""

    memory_kv: list[tuple[torch.Tensor, torch.Tensor]]  # (B, H, N, D/H) each
    layers: list[KVCache]

    def select(self, rows: torch.Tensor) -> DecoderCache:
        """The cache of the sequences ``rows`` (R,) indexes, in its order."""
        return DecoderCache([(k[rows], v[rows]) for k, v in self.memory_kv],
                            [KVCache(layer.k[rows], layer.v[rows]) for layer in self.layers])


class Decoder(nn.Module):
    """Inputs (R, T, D) at positions pos .. pos+T-1, memory (B, N, D) -> states (R, T, D), and the tied token
    table that embeds the inputs (:meth:`rows_of`) and scores the states (:meth:`logits`)."""

    def __init__(self, config: ModelConfig, tokenizer: MaskTokenizer):
        super().__init__()
        c, vocab_size = config, tokenizer.vocab.size
        # Tied input/output embedding: table = learned weight + fixed start geometry (zeros elsewhere).
        self.token_weight = nn.Parameter(torch.randn(vocab_size, c.dim) * c.init_std)
        geometry = torch.zeros(vocab_size, c.dim)
        if c.start_geometry:
            geometry = start_geometry(tokenizer, c.dim, c.init_std * math.sqrt(c.dim))
            with torch.no_grad():  # the learned part of a start row is a residual, zero at init
                self.token_weight[geometry.abs().sum(dim=1) > 0] = 0.0
        self.register_buffer("geometry", geometry, persistent=False)
        self.pointer_span = pointer_span(tokenizer)
        self.output_bias = nn.Parameter(torch.zeros(vocab_size))
        self.pos_embedding = nn.Parameter(torch.randn(c.max_seq_len, c.dim) * c.init_std)
        self.dropout = nn.Dropout(c.dropout)
        rates = torch.linspace(0, c.drop_path, c.decoder_layers).tolist()
        self.layers = nn.ModuleList(DecoderLayer(c.dim, c.heads, c.mlp_dim, c.dropout, r, c.attention_dropout)
                                    for r in rates)
        self.ln = nn.LayerNorm(c.dim)
        self.heads = c.heads

    def embedding_table(self, pointer_content: torch.Tensor | None = None) -> torch.Tensor:
        """The tied table, (V, D); with ``pointer_content`` (B, P, D), the image's own features added to the P
        rows of :func:`~rleseg.models.pyramid.pointer_span` (start cells, and run ends), (B, V, D)."""
        table = self.token_weight + self.geometry  # (V, D)
        if pointer_content is None:
            return table
        first, stop = self.pointer_span
        return table + F.pad(pointer_content, (0, 0, first, table.shape[0] - stop))  # (B, V, D)

    def rows_of(self, table: torch.Tensor, tokens: torch.Tensor, rows: int = 1) -> torch.Tensor:
        """The table's rows of ``tokens`` (R, ...) -> (R, ..., D); a per-image table (B, V, D) is read by
        token row r from image r // ``rows``."""
        if table.ndim == 2:
            return F.embedding(tokens, table)
        # shape[0], not len(): len() is a Python int, which would fix the row count of an exported (ONNX) graph
        image = torch.arange(tokens.shape[0], device=tokens.device) // rows
        return table[image.view(-1, *[1] * (tokens.ndim - 1)), tokens]

    def new_cache(self, memory: torch.Tensor, max_len: int) -> DecoderCache:
        """An empty cache for up to ``max_len`` positions of generation reading memory (B, N, D)."""
        batch, _, dim = memory.shape
        shape = (batch, self.heads, max_len, dim // self.heads)
        return DecoderCache(
            [layer.cross_attn.keys_values(memory) for layer in self.layers],
            # zeros, not empty: draft verification reads entries a row has not written (masked out, and 0 * NaN
            # of uninitialised memory would still be NaN)
            [KVCache(memory.new_zeros(shape), memory.new_zeros(shape)) for _ in self.layers],
        )

    def forward(self, inputs: torch.Tensor, memory: torch.Tensor | None = None, cache: DecoderCache | None = None,
                pos: int | torch.Tensor = 0, rows: int = 1) -> torch.Tensor:
        """The final, normalised states (R, T, D) of embedded ``inputs`` (R, T, D) at positions pos .. pos+T-1.
        Reads ``memory`` or, with a ``cache`` (which holds the memory's keys and values), the cached past;
        with a cache ``pos`` may be a (R,) tensor, each row at its own position (positions past max_seq_len
        take the last one's code: draft verification pads short drafts there and reads nothing they give).
        ``rows``: token rows per image (an image's adjacent), which read its memory without copies of it."""
        length, limit = inputs.shape[1], self.pos_embedding.shape[0]
        if isinstance(pos, torch.Tensor):
            index = (pos[:, None] + torch.arange(length, device=pos.device)).clamp(max=limit - 1)
            positions = self.pos_embedding[index]  # (R, T, D)
        elif pos + length > limit:
            raise ValueError(f"sequence of {pos + length} positions exceeds max_seq_len {limit}")
        else:
            positions = self.pos_embedding[pos : pos + length]
        x = self.dropout(inputs + positions)  # (R, T, D)
        for i, layer in enumerate(self.layers):
            if cache is None:
                keys_values = layer.cross_attn.keys_values(memory)  # once per image, then shared by its rows
                if rows > 1:
                    keys_values = tuple(kv.repeat_interleave(rows, dim=0) for kv in keys_values)
                x = layer(x, memory_kv=keys_values)
            else:
                x = layer(x, memory_kv=cache.memory_kv[i], cache=cache.layers[i], pos=pos)
        return self.ln(x)

    def logits(self, x: torch.Tensor, table: torch.Tensor, rows: int = 1, columns: tuple | None = None
               ) -> torch.Tensor:
        """States x (R, T, D) -> logits (R, T, V): x . each row of ``table`` + the output bias, an image's
        ``rows`` side by side against its own table when it is per image. ``columns``, a grammar's
        ``candidates()`` for the one position of x: only those tokens are scored, the rest are -inf (the
        grammar allows none of them). A step of generation then reads a fraction of a per-image table, which
        at (B, V, D) does not stay in cache."""
        if table.ndim == 3 and rows > 1:
            x = x.reshape(len(table), -1, x.shape[-1])
            return (x @ table.transpose(-1, -2) + self.output_bias).view(len(table) * rows, -1, table.shape[1])
        if columns is None:
            return x @ table.transpose(-1, -2) + self.output_bias  # (R, T, V)
        spans, ids = columns
        h = x[:, -1]  # (R, D)
        out = h.new_full((len(h), table.shape[-2]), float("-inf"))
        for first, stop in spans:
            out[:, first:stop] = _dot(table[..., first:stop, :], h) + self.output_bias[first:stop]
        if ids is not None:
            ids = torch.as_tensor(ids, device=h.device)  # (R, K)
            picked = table[ids] if table.ndim == 2 else table[torch.arange(len(h), device=h.device)[:, None], ids]
            out.scatter_(1, ids, _dot(picked, h) + self.output_bias[ids])
        return out[:, None]


def _dot(rows: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """rows (K, D) shared or (R, K, D) per row, h (R, D) -> (R, K), each row of h with its rows. Per row as
    h (R, 1, D) @ rows^T: 3-7x faster on the dev CPU than rows @ h (R, D, 1), the same products."""
    return h @ rows.T if rows.ndim == 2 else (h[:, None, :] @ rows.transpose(1, 2)).squeeze(1)
