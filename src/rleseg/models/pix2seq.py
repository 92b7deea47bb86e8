"""The Pix2Seq model: backbone -> transformer encoder -> causal transformer decoder over mask tokens.

Read top to bottom: config, encoder (with the feature pyramid of the pointer start head), decoder, model.
Blocks are in layers.py, sin-cos position codes in positions.py, the generation loop and token sampling in
generate.py; build a model with ``rleseg.models.create_model`` (factory.py). Shapes use B = batch, N = visual
tokens (feature-map cells), S = mask cells, T = sequence positions, D = width, V = vocabulary, H = heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rleseg.tokens import EOS, PAD, MaskTokenizer
from rleseg.typed_yaml import check_range

from .backbone import Backbone
from .generate import Generation, check_sampling, sample
from .layers import MLP, DecoderLayer, EncoderLayer, KVCache
from .positions import sincos_grid, start_geometry
from .refine import Refiner, jitter_boundaries
from .search import beam_search, best_of, check_search, repeat_candidates


@dataclass
class ModelConfig:
    backbone: str = "resnet50"  # any timm model with features_only; the last feature map is used
    pretrained: bool | str = False  # False, True (timm's cache), "packaged" or a local weights file
    freeze_backbone: bool = False  # the paper froze its (COCO-pretrained) backbone
    backbone_kwargs: dict = field(default_factory=dict)  # passed to timm.create_model
    image_size: int = 640  # training/inference crop size; informative, any size the stride divides works
    dim: int = 256  # width of the encoder and decoder tokens
    heads: int = 8  # attention heads; they divide dim
    mlp_dim: int = 1024  # hidden width of the transformer MLPs
    encoder_layers: int = 6  # transformer layers over the backbone's last map
    decoder_layers: int = 6  # causal decoder layers
    dropout: float = 0.1  # in attention, MLPs and embeddings
    drop_path: float = 0.1  # stochastic depth of the last layer; earlier layers get linearly less
    max_seq_len: int = 512  # longest token sequence (body + EOS) trained on or generated; also the positions
    # Start tokens carry geometry: their embedding (tied with their output row) is a fixed sin-cos code of
    # the start's position on the mask grid plus a zero-initialised learned residual. Measured as a large
    # gain in learning speed (docs/method.md section 8); False gives plain learned embeddings.
    start_geometry: bool = True
    # "pointer": the start rows of the (tied) embedding table also carry the image's own features at each
    # start cell (a feature pyramid brought to the mask grid, through a zero-initialised projection), so
    # choosing a start reads the image where it lands; needs 1-D starts. With tokenizer extent "end" the
    # run-end rows point at their cell the same way (EndPointer). Video: a volume start (frame, cell)
    # reads that frame's features, a TAC start the frames' features averaged at its cell (models/video.py).
    # "table": the rows are the same for every image (the paper's model). "auto": pointer where the
    # tokenizer allows it (image, panoptic and video tokenizers with 1-D starts), else table. Measured
    # on nuclei at 3 CPU minutes: Dice 0.23 (table, 2-D starts) -> 0.65 (pointer), docs/results.md.
    start_head: str = "auto"
    pyramid_stride: int = 4  # finest backbone level the pyramid of start_head "pointer" / aux_dense_weight uses
    # Weight of an auxiliary per-cell cross-entropy on the pyramid's features at the mask grid (training
    # only; the mask comes from the target tokens). 0 = off. Semantic image tokenizers only.
    aux_dense_weight: float = 0.0
    # The decoder also cross-attends to the pyramid's features (pooled 2x2, one token per 2x2 mask cells),
    # a finer visual grid than the backbone's last map. Needs a pyramid (start_head "pointer" or the aux loss).
    pyramid_memory: bool = False
    # Boundary refinement (models/refine.py): a small convolutional head redraws the decoded mask at the
    # patch's full resolution from the image and the pyramid, but only the pixels within this many mask
    # cells of a class boundary of the decoded mask; every other pixel is the decoded mask upsampled
    # (nearest), so every object decision stays in the tokens. 0 = off. Semantic image tokenizers only;
    # builds the pyramid. Inference can still give the token-only mask (InferenceOptions.refine false).
    refine_band: int = 0
    refine_weight: float = 1.0  # of the refinement's cross-entropy over the band pixels, in the training loss
    # Share of the training masks' cells that take a random neighbour's label before refinement (moving
    # boundaries by a cell), so that the refiner learns to correct masks as imperfect as decoded ones.
    refine_jitter: float = 0.1
    # The refiner trains on the first this many images of each batch (0 = all): its full-resolution
    # convolutions cost a token step about 45% on a CPU at 16 images, and 6.9 k parameters learn from fewer.
    refine_batch: int = 0
    # One decoder step per run instead of per token: the decoder reads a run's start and end as one input
    # (a projection of their two rows) and writes them from one state, the start from its logits and the end
    # from a light head that reads the state and the start just chosen. Half the sequential steps of
    # generation and half the positions in training. Needs runs of a start and an end: 1-D starts,
    # tokenizer extent "end", scheme lac (the class fused with the end) or binary.
    run_step: bool = False
    # Loss weights per target token; the paper weights padding 0.1.
    pad_weight: float = 0.1
    eos_weight: float = 1.0  # of the EOS target
    class_weight: float = 1.0  # tokens that carry a class ("class", "lac", "end_class"), against imbalance
    label_smoothing: float = 0.0  # of the token cross-entropy
    init_std: float = 0.02  # std of the normal initialisation of the linear layers and embeddings
    tokenizer: dict | None = None  # the tokenizer's to_dict(): a checkpoint describes its own tokens

    def __post_init__(self) -> None:
        check_range(self, 1, None, "image_size", "dim", "heads", "mlp_dim", "decoder_layers", "max_seq_len",
                    "pyramid_stride")
        check_range(self, 0, None, "encoder_layers", "aux_dense_weight", "pad_weight", "eos_weight", "class_weight")
        check_range(self, 0, 1, "dropout", "drop_path", "label_smoothing", high_open=True)
        check_range(self, 0, None, "refine_band", "refine_weight", "refine_batch")
        check_range(self, 0, 1, "refine_jitter")
        check_range(self, 0, None, "init_std", low_open=True)
        if self.start_head not in START_HEADS:
            raise ValueError(f"start_head must be one of {', '.join(START_HEADS)}, got {self.start_head!r}")
        if self.dim % self.heads:
            raise ValueError(f"heads must divide dim {self.dim}, got {self.heads}")

    @property
    def uses_pyramid(self) -> bool:
        """Whether the model builds the feature pyramid (for the pointer start head or the auxiliary loss)."""
        return self.start_head == "pointer" or self.aux_dense_weight > 0 or self.refine_band > 0


START_HEADS = ("auto", "table", "pointer")  # create_model resolves "auto"; the model sees the other two


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
        self.layers = nn.ModuleList(EncoderLayer(c.dim, c.heads, c.mlp_dim, c.dropout, r) for r in rates)
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


class Pyramid(nn.Module):
    """Backbone maps + encoder memory -> features at every start cell, (B, S, D) in the tokenizer's scan order.

    A light top-down feature pyramid: the memory (the coarsest map after the transformer) is upsampled
    level by level and summed with a 1x1 projection of each finer backbone map down to ``pyramid_stride``;
    the result is resampled to the mask grid (one cell per start token) and layer-normalised.
    """

    def __init__(self, config: ModelConfig, channels: list[int], strides: list[int], tokenizer: MaskTokenizer):
        super().__init__()
        levels = [i for i, s in enumerate(strides[:-1]) if s >= config.pyramid_stride]
        if not levels:
            raise ValueError(f"pyramid_stride {config.pyramid_stride} is finer than every backbone level but the last "
                             f"(strides {strides})")
        self.levels = levels
        self.laterals = nn.ModuleList(nn.Conv2d(channels[i], config.dim, 1) for i in levels)
        self.ln = nn.LayerNorm(config.dim)
        self.mask_size, self.order = tuple(tokenizer.mask_size), tokenizer.order

    def forward(self, maps: list[torch.Tensor], memory: torch.Tensor) -> torch.Tensor:
        batch, dim = memory.shape[0], memory.shape[-1]
        x = memory.transpose(1, 2).reshape(batch, dim, *maps[-1].shape[-2:])  # (B, D, h, w)
        for i, lateral in zip(reversed(self.levels), reversed(self.laterals), strict=True):
            skip = lateral(maps[i])
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False) + skip
        if tuple(x.shape[-2:]) != self.mask_size:
            x = F.interpolate(x, size=self.mask_size, mode="bilinear", align_corners=False)  # (B, D, H, W)
        if self.order == "F":
            x = x.transpose(-1, -2)
        # No MLP after this: at one token per mask cell it cost a third of a training step.
        return self.ln(x.flatten(2).transpose(1, 2))  # (B, S, D)


def end_range(tokenizer: MaskTokenizer) -> str | None:
    """The name of the tokenizer's range of run ends ("end", or "end_class" fused with the class), if any."""
    return next((name for name in ("end", "end_class") if name in tokenizer.vocab.ranges), None)


class EndPointer(nn.Module):
    """Pyramid features at the cells (B, S, D) -> the image content of the run-end rows (tokenizer extent
    "end"): a zero-initialised projection of the features at each end cell plus a learned vector per class
    of "end_class" rows (class-major, as the fused values), one shared vector for "end" rows. The vector
    also tells an end row from the start row of the same cell, whose geometry is the same."""

    def __init__(self, config: ModelConfig, tokenizer: MaskTokenizer):
        super().__init__()
        self.proj = nn.Linear(config.dim, config.dim)
        kinds = tokenizer.num_classes - 1 if end_range(tokenizer) == "end_class" else 1
        self.kinds = nn.Parameter(torch.randn(kinds, config.dim) * config.init_std)

    def forward(self, cells: torch.Tensor) -> torch.Tensor:
        return (self.proj(cells)[:, None] + self.kinds[None, :, None]).flatten(1, 2)  # (B, kinds * S, D)


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
    """tokens (B, T) at positions pos .. pos+T-1, memory (B, N, D) -> states (B, T, D); :meth:`logits` scores
    states against the tied table (B, T, V)."""

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
        self.layers = nn.ModuleList(DecoderLayer(c.dim, c.heads, c.mlp_dim, c.dropout, r) for r in rates)
        self.ln = nn.LayerNorm(c.dim)
        self.heads = c.heads
        self.pair_proj = self.end_query = self.end_ln = None
        if c.run_step:  # the pair's input starts as the sum of its two rows; the end query as the state
            self.pair_proj = nn.Linear(2 * c.dim, c.dim)
            self.end_query = nn.Sequential(nn.Linear(2 * c.dim, c.mlp_dim), nn.GELU(), nn.Linear(c.mlp_dim, c.dim))
            self.end_ln = nn.LayerNorm(c.dim)

    def init_run_step(self) -> None:
        """Weights of the run-step layers that the model's normal initialisation would not give: the pair's
        input is the sum of its start and end rows, and the end query adds nothing to the state, at first."""
        with torch.no_grad():
            dim = self.pair_proj.out_features
            self.pair_proj.weight.copy_(torch.eye(dim).repeat(1, 2))
            nn.init.zeros_(self.end_query[-1].weight)

    def embedding_table(self, pointer_content: torch.Tensor | None = None) -> torch.Tensor:
        """The tied table, (V, D); with ``pointer_content`` (B, P, D), the image's own features added to the P
        rows of :func:`pointer_span` (start cells, and run ends with extent "end"), (B, V, D)."""
        table = self.token_weight + self.geometry  # (V, D)
        if pointer_content is None:
            return table
        first, stop = self.pointer_span
        return table + F.pad(pointer_content, (0, 0, first, table.shape[0] - stop))  # (B, V, D)

    def new_cache(self, memory: torch.Tensor, max_len: int) -> DecoderCache:
        """An empty cache for up to ``max_len`` positions of generation reading memory (B, N, D)."""
        batch, _, dim = memory.shape
        shape = (batch, self.heads, max_len, dim // self.heads)
        return DecoderCache(
            [layer.cross_attn.keys_values(memory) for layer in self.layers],
            [KVCache(memory.new_empty(shape), memory.new_empty(shape)) for _ in self.layers],
        )

    def forward(
        self,
        tokens: torch.Tensor,
        memory: torch.Tensor | None = None,
        cache: DecoderCache | None = None,
        pos: int = 0,
        table: torch.Tensor | None = None,
        rows: int = 1,
    ) -> torch.Tensor:
        """The final, normalised decoder states (R, T, D) at positions pos .. pos+T-1 of ``tokens`` (R, T), or
        of run pairs (R, T, 2) with ``run_step``; :meth:`logits` scores them. Reads ``memory`` or, with a
        ``cache`` (which holds the memory's keys and values), the cached past. ``table``: (V, D) or per image
        (B, V, D), default :meth:`embedding_table`. ``rows``: token rows per image (per-class or band
        sequences, an image's adjacent), which read its memory and table without copies of them: R = B * rows."""
        length = tokens.shape[1]
        if pos + length > self.pos_embedding.shape[0]:
            raise ValueError(f"sequence of {pos + length} positions exceeds max_seq_len {self.pos_embedding.shape[0]}")
        table = self.embedding_table() if table is None else table
        embedded = self.rows_of(table, tokens, rows)
        if tokens.ndim == 3:  # (start, end) pairs
            embedded = self.pair_proj(embedded.flatten(-2))
        x = self.dropout(embedded + self.pos_embedding[pos : pos + length])  # (R, T, D)
        for i, layer in enumerate(self.layers):
            if cache is None:
                keys_values = layer.cross_attn.keys_values(memory)  # once per image, then shared by its rows
                if rows > 1:
                    keys_values = tuple(kv.repeat_interleave(rows, dim=0) for kv in keys_values)
                x = layer(x, memory_kv=keys_values)
            else:
                x = layer(x, memory_kv=cache.memory_kv[i], cache=cache.layers[i], pos=pos)
        return self.ln(x)

    def rows_of(self, table: torch.Tensor, tokens: torch.Tensor, rows: int = 1) -> torch.Tensor:
        """The table's rows of ``tokens`` (R, ...) -> (R, ..., D); a per-image table (B, V, D) is read by
        token row r from image r // ``rows``."""
        if table.ndim == 2:
            return F.embedding(tokens, table)
        image = torch.arange(len(tokens), device=tokens.device) // rows
        return table[image.view(-1, *[1] * (tokens.ndim - 1)), tokens]

    def logits(self, x: torch.Tensor, table: torch.Tensor, rows: int = 1, columns: tuple | None = None
               ) -> torch.Tensor:
        """States x (R, T, D) -> logits (R, T, V) against ``table``, an image's ``rows`` side by side against
        its own table when it is per image."""
        if table.ndim == 3 and rows > 1:
            return self.scores(x.reshape(len(table), -1, x.shape[-1]), table).view(*x.shape[:2], -1)
        return self.scores(x, table, columns)

    def end_logits(self, x: torch.Tensor, starts: torch.Tensor, table: torch.Tensor, rows: int = 1,
                   columns: tuple | None = None) -> torch.Tensor:
        """``run_step``'s end head: states x (R, T, D) and the start chosen from each (R, T) -> logits (R, T, V)
        of that run's end, from the state moved by what it learns of the start's row (its cell, and with the
        pointer head the image there)."""
        query = x + self.end_query(torch.cat([x, self.rows_of(table, starts, rows)], dim=-1))
        return self.logits(self.end_ln(query), table, rows, columns)

    def scores(self, x: torch.Tensor, table: torch.Tensor, columns: tuple | None = None) -> torch.Tensor:
        """Decoder outputs x (B, T, D) -> logits (B, T, V): x . each row of ``table`` + the output bias.
        ``columns``, a grammar's ``candidates()`` for the one position of x: only those tokens are scored,
        the rest are -inf (the grammar allows none of them). A step of generation then reads a fraction of
        a per-image table, which at (B, V, D) does not stay in cache."""
        if columns is None:
            return x @ table.transpose(-1, -2) + self.output_bias  # (B, T, V)
        spans, ids = columns
        h = x[:, -1]  # (B, D)
        out = h.new_full((len(h), table.shape[-2]), float("-inf"))
        for first, stop in spans:
            block = table[..., first:stop, :]  # (K, D) or (B, K, D)
            out[:, first:stop] = _dot(block, h) + self.output_bias[first:stop]
        if ids is not None:
            ids = torch.as_tensor(ids, device=h.device)  # (B, K)
            picked = table[ids] if table.ndim == 2 else table[torch.arange(len(h), device=h.device)[:, None], ids]
            out.scatter_(1, ids, _dot(picked, h) + self.output_bias[ids])
        return out[:, None]


def _dot(rows: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """rows (K, D) shared or (B, K, D) per row, h (B, D) -> (B, K), each row of h with its rows. Per row as
    h (B, 1, D) @ rows^T: 3-7x faster on the dev CPU than rows @ h (B, D, 1), the same products."""
    return h @ rows.T if rows.ndim == 2 else (h[:, None, :] @ rows.transpose(1, 2)).squeeze(1)


def pointer_span(tokenizer: MaskTokenizer) -> tuple[int, int]:
    """(first, stop) of the rows that point at mask cells: the "end" or "end_class" range (extent "end",
    laid out right before the starts) and the "start" range; (0, 0) without starts."""
    ranges = tokenizer.vocab.ranges
    if "start" not in ranges:
        return 0, 0
    end = end_range(tokenizer)
    return ranges[end or "start"].first, ranges["start"].stop


# ----------------------------------------------------------------------------- model
class Pix2Seq(nn.Module):
    """Image -> mask tokens. Build with :func:`rleseg.models.create_model`, which also resolves
    ``start_head`` "auto" and checks that the tokenizer suits the start head and the auxiliary loss.

    Images are (B, 3, H, W) float RGB in [0, 1], H and W divisible by the backbone stride (32 for ResNets).
    Token sequences follow ``self.tokenizer``: inputs start with its BOS; targets are body + EOS, padded
    with PAD (0).
    """

    target_key = "tokens"  # the batch entry that loss() takes as its target

    def __init__(self, config: ModelConfig, tokenizer: MaskTokenizer):
        super().__init__()
        if config.start_head not in ("table", "pointer"):
            raise ValueError(f"start_head must be 'table' or 'pointer' here, got {config.start_head!r} "
                             "(create_model resolves 'auto')")
        if config.run_step and getattr(tokenizer, "slots", None) not in RUN_STEP_SLOTS:
            raise ValueError("model.run_step needs runs of a start and an end (1-D starts, tokenizer extent 'end', "
                             f"scheme lac or binary); this tokenizer writes {describe_runs(tokenizer)}: "
                             "set model.run_step false")
        self.config, self.tokenizer = config, tokenizer
        self.encoder = self.build_encoder(config)
        self.decoder = Decoder(config, tokenizer)
        self.pyramid = self.start_proj = self.end_head = self.aux_head = None
        if config.uses_pyramid:
            backbone = self.encoder.backbone
            self.pyramid = Pyramid(config, backbone.feature_channels, backbone.feature_strides, tokenizer)
            if config.start_head == "pointer":
                self.start_proj = nn.Linear(config.dim, config.dim)
                self.end_head = EndPointer(config, tokenizer) if end_range(tokenizer) else None
            if config.aux_dense_weight > 0:
                self.aux_head = nn.Linear(config.dim, tokenizer.num_classes)
        if config.pyramid_memory and self.pyramid is None:
            raise ValueError("pyramid_memory needs the pyramid: start_head 'pointer' or aux_dense_weight > 0")
        self.memory_proj = nn.Linear(config.dim, config.dim) if config.pyramid_memory else None
        self.refiner = None
        if config.refine_band > 0:
            if tokenizer.task != "semantic":
                raise ValueError(f"refine_band needs a semantic image tokenizer, got task {tokenizer.task!r}")
            self.refiner = Refiner(config.dim, tokenizer.num_classes, config.refine_band)
        backbone = set(self.encoder.backbone.modules())  # keeps timm's own (or pretrained) init
        for module in self.modules():
            if isinstance(module, nn.Linear) and module not in backbone:
                nn.init.normal_(module.weight, std=config.init_std)
                nn.init.zeros_(module.bias)
        if self.start_proj is not None:  # image content enters the start rows as a residual, zero at init
            nn.init.zeros_(self.start_proj.weight)
        if self.end_head is not None:
            nn.init.zeros_(self.end_head.proj.weight)
        if config.run_step:
            self.decoder.init_run_step()
        self.register_buffer("token_loss_weight", self._token_loss_weight(), persistent=False)

    def build_encoder(self, config: ModelConfig) -> Encoder:
        """images -> memory (B, N, D). The video models (models/video.py) return an Encoder subclass that
        reads windows of frames; ``self.config`` and ``self.tokenizer`` are set when this runs."""
        return Encoder(config)

    def _token_loss_weight(self) -> torch.Tensor:
        c, vocab = self.config, self.tokenizer.vocab
        weight = torch.ones(vocab.size)
        weight[PAD], weight[EOS] = c.pad_weight, c.eos_weight
        for name in ("class", "lac", "end_class"):
            if name in vocab.ranges:
                weight[vocab[name].first : vocab[name].stop] = c.class_weight
        return weight  # (V,)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """images -> (memory (B, N, D), embedding table (V, D) or per image (B, V, D), pyramid features at
        the start cells (B, S, D) or None when the model has no pyramid)."""
        if self.pyramid is None:
            return self.encoder(images), self.decoder.embedding_table(), None
        memory, cells = self.memory_and_cells(images)
        content = None if self.start_proj is None else self.start_proj(cells)
        if self.end_head is not None:
            content = torch.cat([self.end_head(cells), content], dim=1)
        if self.memory_proj is not None:
            memory = torch.cat([memory, self.pooled_cells(cells)], dim=1)
        return memory, self.decoder.embedding_table(content), cells

    def memory_and_cells(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images -> (memory (B, N, D), the pyramid's features at the S start cells (B, S, D)). The video
        model overrides this: its start cells are per frame or per TAC cell."""
        maps = self.encoder.backbone.features(images)
        memory = self.encoder.encode(maps)
        return memory, self.pyramid(maps, memory)

    def pooled_cells(self, cells: torch.Tensor) -> torch.Tensor:
        """Pyramid features (B, S, D) on the scan grid -> 2x2-pooled memory tokens with their position codes."""
        grid = self.tokenizer.grid
        x = cells.transpose(1, 2).reshape(cells.shape[0], cells.shape[-1], *grid)  # (B, D, major, minor)
        x = F.avg_pool2d(x, 2, ceil_mode=True)
        pos = sincos_grid(tuple(x.shape[-2:]), x.shape[1]).to(x)
        return self.memory_proj(x.flatten(2).transpose(1, 2)) + pos  # (B, S/4, D)

    def forward(self, images: torch.Tensor, input_tokens: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W), input_tokens (R, T) int64 starting with BOS (R = B) or, per-class, each row with
        its class's prompt (R = B * (C-1), :meth:`first_tokens`) -> logits (R, T, V) float; logits[:, t]
        predict the token after input_tokens[:, t]."""
        memory, table, _ = self.encode(images)
        return self.token_logits(input_tokens, memory, table)

    def token_logits(self, input_tokens: torch.Tensor, memory: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (R, T, V) of input_tokens (R, T) over encode()'s memory and table. With
        ``run_step`` the decoder reads the inputs as run pairs and writes two tokens a position: at pair
        position i the start after it (logits[:, 2i]) and, from the start that input_tokens hold there, its
        end (logits[:, 2i + 1])."""
        rows = self.sequences_per_image(len(input_tokens), len(memory))
        if not self.config.run_step:
            return self.decoder.logits(self.decoder(input_tokens, memory, table=table, rows=rows), table, rows)
        length = input_tokens.shape[1]
        positions = (length + 1) // 2
        x = self.decoder(run_pairs(input_tokens[:, : 2 * positions - 1]), memory, table=table, rows=rows)
        starts = input_tokens[:, 1::2]  # the start written at each pair position (one short for odd lengths)
        starts = F.pad(starts, (0, positions - starts.shape[1]), value=PAD)
        logits = torch.stack([self.decoder.logits(x, table, rows), self.decoder.end_logits(x, starts, table, rows)], 2)
        return logits.flatten(1, 2)[:, :length]  # (R, T, V): start, end, start, end, ...

    def sequences_per_image(self, rows: int, images: int) -> int:
        """The token rows of one image (1, or one per foreground class / band: ``tokenizer.prompts``);
        ValueError unless ``rows`` is ``images`` times that."""
        per_image = len(self.tokenizer.prompts)
        if rows != per_image * images:
            raise ValueError(f"{rows} token sequences for {images} images; the tokenizer writes {per_image} per image")
        return per_image

    def per_sequence(self, memory: torch.Tensor, table: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """encode()'s memory (B, N, D) and table for ``rows`` token rows of generation: as they are when the
        tokenizer writes one sequence per mask, else repeated for each image's rows (adjacent)."""
        per_image = self.sequences_per_image(rows, len(memory))
        return (memory, table) if per_image == 1 else repeat_candidates(memory, table, per_image)

    @property
    def extra_targets(self) -> tuple[str, ...]:
        """The batch entries loss() takes after the tokens: the full-resolution and the grid mask when the
        model has a refiner."""
        return ("mask", "mask_small") if self.refiner is not None else ()

    def loss(self, images: torch.Tensor, target_tokens: torch.Tensor, mask: torch.Tensor | None = None,
             mask_small: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced, token-weighted cross-entropy. target_tokens (R, T) int64: body + EOS + PAD, R = B
        sequences, or B * (C-1) per-class ones (each image's adjacent, as ``Collate`` splits them); the model
        feeds each row's prompt (:meth:`first_tokens`: BOS, or its class's prompt) + target_tokens[:, :-1].
        Returns a scalar: sum(w * ce) / sum(w), plus ``aux_dense_weight`` times the auxiliary per-cell loss
        when that is on, plus ``refine_weight`` times the refinement loss (:meth:`refine_loss` of the first
        ``refine_batch`` images; it needs the batch's ``mask`` (B, P, P) and ``mask_small`` (B, h, w)) when the
        model has a refiner."""
        memory, table, cells = self.encode(images)
        self.sequences_per_image(len(target_tokens), len(memory))
        first = self.first_tokens(len(target_tokens), device=target_tokens.device)[:, None]
        inputs = torch.cat([first, target_tokens[:, :-1]], dim=1)
        logits = self.token_logits(inputs, memory, table)  # (R, T, V)
        ce = F.cross_entropy(
            logits.flatten(0, 1).float(), target_tokens.flatten(), reduction="none",
            label_smoothing=self.config.label_smoothing,
        )  # (B*T,)
        weight = self.token_loss_weight[target_tokens.flatten()]
        loss = (ce * weight).sum() / weight.sum()
        if self.aux_head is not None:
            loss = loss + self.config.aux_dense_weight * self.aux_loss(cells, target_tokens)
        if self.refiner is not None:
            if mask is None or mask_small is None:
                raise ValueError("a model with a refiner (refine_band > 0) trains on the batch's mask and mask_small")
            first = slice(0, self.config.refine_batch or None)
            loss = loss + self.config.refine_weight * self.refine_loss(images[first], cells[first], mask[first],
                                                                       mask_small[first])
        return loss

    def refine_loss(self, images: torch.Tensor, cells: torch.Tensor, mask: torch.Tensor, mask_small: torch.Tensor
                    ) -> torch.Tensor:
        """The refiner's band cross-entropy against ``mask``, from the grid mask ``mask_small`` as the tokens
        encode it (ignored labels as 0) with ``refine_jitter`` of its cells moved."""
        classes = self.tokenizer.num_classes
        coarse = torch.where((mask_small >= 0) & (mask_small < classes), mask_small, torch.zeros_like(mask_small))
        coarse = jitter_boundaries(coarse, self.config.refine_jitter)
        return self.refiner.loss(images, self.cells_on_grid(cells), coarse, mask)

    @torch.no_grad()
    def refine(self, images: torch.Tensor, cells: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Decoded masks (B, h, w) int64 on the tokenizer's grid -> refined labels (B, P, P) int64 at the
        images' resolution (:class:`~rleseg.models.refine.Refiner`); ``cells``: encode()'s pyramid features."""
        if self.refiner is None:
            raise ValueError("this model has no refiner (refine_band 0)")
        return self.refiner.labels(images, self.cells_on_grid(cells), coarse)

    def cells_on_grid(self, cells: torch.Tensor) -> torch.Tensor:
        """Pyramid features (B, S, D) in scan order -> (B, D, H, W) on the mask grid, rows first."""
        x = cells.transpose(1, 2).reshape(cells.shape[0], cells.shape[-1], *self.tokenizer.grid)
        return x.transpose(-1, -2) if self.tokenizer.order == "F" else x

    def aux_loss(self, cells: torch.Tensor, target_tokens: torch.Tensor) -> torch.Tensor:
        """Per-cell cross-entropy of the pyramid features (B, S, D) against the masks the target tokens
        encode (decoded leniently: a truncated sequence gives the mask of its runs)."""
        flat = target_tokens.reshape(len(cells), -1).cpu().numpy()  # an image's rows joined: its flat form
        masks = np.stack([self.tokenizer.decode(seq, errors="ignore") for seq in flat])
        if self.tokenizer.order == "F":
            masks = masks.transpose(0, 2, 1)
        labels = torch.from_numpy(masks.reshape(len(masks), -1).astype(np.int64)).to(cells.device)  # (B, S)
        return F.cross_entropy(self.aux_head(cells).flatten(0, 1).float(), labels.flatten())

    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor,
        max_len: int | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        constrained: bool = True,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        eos_by_mass: bool = False,
        encoded: tuple | None = None,
        beams: int = 1,
        samples: int = 1,
        length_penalty: float = 0.0,
    ) -> Generation:
        """Sample up to ``max_len`` tokens (default max_seq_len) after BOS for every image: one row per image,
        or with per-class or band sequences (``tokenizer.prompts``, one per class / band) a row per prompt,
        an image's adjacent, each after its prompt, all decoded as one batch from the image's memory computed
        once. Rows that ended leave the batch as they go, and a step scores only the grammar's candidates
        once the table is larger than ``generate.CACHED_TABLE``: neither changes a token.

        temperature=0 is greedy; ``top_k`` (0 = off) and ``top_p`` (1 = off) narrow the sampling. With
        ``constrained`` only tokens the tokenizer's grammar allows are sampled, so every sequence ends in
        EOS within max_len and decodes strictly. ``eos_by_mass`` ends a sequence only where EOS holds half
        of the allowed probability. ``use_cache`` changes the speed, not the result. Each sequence stops at
        its EOS (PAD after it); the loop stops when all have. Returns tokens and log-probabilities
        (:class:`Generation`); decoding them into masks is the caller's. ``encoded``: what
        ``encode(images)`` gave in eval mode, when the caller needs it too (the refiner reads its pyramid).

        Search over whole sequences (models/search.py), the image's candidates batched through one cache:
        ``beams`` > 1 is beam search of that width (temperature 0); ``samples`` > 1 draws that many
        sequences per image (temperature > 0) and keeps the likeliest. Both rank by total log-probability
        divided by length ** ``length_penalty``.
        """
        check_sampling(temperature, top_k, top_p)
        check_search(beams, samples, temperature, length_penalty)
        max_len = self.config.max_seq_len if max_len is None else int(max_len)
        if not 1 <= max_len <= self.config.max_seq_len:
            raise ValueError(f"max_len must be in 1 .. max_seq_len = {self.config.max_seq_len}, got {max_len}")
        was_training = self.training
        self.eval()
        memory, table, _ = self.encode(images) if encoded is None else encoded  # table built once, not per step
        # per-class and band sequences: one row per class / band, decoded as one batch
        memory, table = self.per_sequence(memory, table, len(memory) * len(self.tokenizer.prompts))
        copies = max(beams, samples)
        if beams > 1 and self.config.run_step:
            raise ValueError("beam search is not available with run_step (a step writes two tokens); "
                             "use samples for best-of-N")
        if copies > 1:
            memory, table = repeat_candidates(memory, table, copies)
        try:
            if beams > 1:
                return beam_search(self, memory, table, beams, max_len, constrained, use_cache, eos_by_mass,
                                   length_penalty)
            out = sample(self, memory, table, max_len, temperature, top_k, top_p, constrained, use_cache, generator,
                         eos_by_mass, samples)
            return out if samples == 1 else best_of(out, samples, length_penalty)
        finally:
            self.train(was_training)

    def first_tokens(self, rows: int, copies: int = 1, device: torch.device | None = None) -> torch.Tensor:
        """(rows,) int64, the decoder's first input token of each row: rows run over (image, sequence, copy),
        ``copies`` adjacent candidates of each sequence, so row r reads ``tokenizer.prompts[r // copies % n]``
        (BOS when the tokenizer writes one sequence per mask)."""
        prompts = torch.tensor(self.tokenizer.prompts, dtype=torch.long, device=device)
        return prompts.repeat_interleave(copies).repeat(rows // (len(prompts) * copies))

    def next_states(self, tokens: torch.Tensor, step: int, memory: torch.Tensor, table: torch.Tensor,
                    cache: DecoderCache | None) -> torch.Tensor:
        """The decoder state (R, 1, D) after the input of generation step ``step``: tokens[:, : step + 1] (the
        first token and what is generated so far), or with ``run_step`` the run pairs of tokens[:, : 2 step + 1].
        With a ``cache`` only the step's own input goes through the decoder (the past is in the cache);
        without one, the whole prefix does again."""
        if self.config.run_step:
            inputs = run_pairs(tokens[:, : 2 * step + 1]) if cache is None else last_pair(tokens, step)
        else:
            inputs = tokens[:, : step + 1] if cache is None else tokens[:, step : step + 1]
        if cache is None:
            return self.decoder(inputs, memory, table=table)[:, -1:]
        return self.decoder(inputs, cache=cache, pos=step, table=table)

    def next_logits(
        self, tokens: torch.Tensor, step: int, memory: torch.Tensor, table: torch.Tensor, cache: DecoderCache | None,
        columns: tuple | None = None,
    ) -> torch.Tensor:
        """Logits (B, V) float32 for the token after tokens[:, : step + 1] (one token a step: beam search).
        ``columns``: the grammar's candidates, the only tokens scored (the rest -inf, :meth:`Decoder.scores`)."""
        x = self.next_states(tokens, step, memory, table, cache)
        return self.decoder.logits(x, table, columns=columns)[:, -1].float()


RUN_STEP_SLOTS = (("start", "end"), ("start", "end_class"))  # the runs model.run_step writes in one step


def describe_runs(tokenizer: MaskTokenizer) -> str:
    """What a tokenizer's sequences are made of, for an error message."""
    slots = getattr(tokenizer, "slots", None)
    return f"runs of {' + '.join(slots)}" if slots else f"{type(tokenizer).__name__} sequences"


def run_pairs(tokens: torch.Tensor) -> torch.Tensor:
    """A first input token and whole runs of two, (R, 1 + 2k) -> the decoder's run-step inputs (R, 1 + k, 2):
    (first, PAD), then (start, end) of each run."""
    head = F.pad(tokens[:, :1], (0, 1), value=PAD)
    return torch.cat([head[:, None], tokens[:, 1:].reshape(len(tokens), -1, 2)], dim=1)


def last_pair(tokens: torch.Tensor, step: int) -> torch.Tensor:
    """Run-step generation's input at step ``step`` from tokens (R, 1 + 2k), as :func:`run_pairs` lays it
    out: (R, 1, 2)."""
    return run_pairs(tokens[:, :1]) if step == 0 else tokens[:, 2 * step - 1 : 2 * step + 1][:, None]
