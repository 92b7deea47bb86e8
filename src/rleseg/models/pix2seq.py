"""The Pix2Seq model: backbone -> transformer encoder -> causal transformer decoder over mask tokens.

Read top to bottom: config, blocks, encoder (with the feature pyramid of the pointer start head), decoder,
model, create_model (the sin-cos position codes live in positions.py). Shapes use B = batch, N = visual
tokens (feature-map cells), S = mask cells, T = sequence positions, D = width, V = vocabulary, H = heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rleseg.tokens import EOS, PAD

from .backbone import Backbone
from .generate import Generation, check_sampling, sample_next
from .positions import sincos_grid, start_geometry


@dataclass
class ModelConfig:
    head: str = "token"  # "token": this Pix2Seq; "dense": the per-pixel baseline of models/dense.py
    backbone: str = "resnet50"  # any timm model with features_only; the last feature map is used
    pretrained: bool | str = False  # False, True (timm's cache), "packaged" or a local weights file
    freeze_backbone: bool = False  # the paper froze its (COCO-pretrained) backbone
    backbone_kwargs: dict = field(default_factory=dict)  # passed to timm.create_model
    image_size: int = 640  # training/inference crop size; informative, any size the stride divides works
    dim: int = 256
    heads: int = 8
    mlp_dim: int = 1024
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout: float = 0.1
    drop_path: float = 0.1  # stochastic depth of the last layer; earlier layers get linearly less
    max_seq_len: int = 512  # longest token sequence (body + EOS) trained on or generated; also the positions
    # Start tokens carry geometry: their embedding (tied with their output row) is a fixed sin-cos code of
    # the start's position on the mask grid plus a zero-initialised learned residual. Measured as a large
    # gain in learning speed (docs learning-notes); False gives plain learned embeddings.
    start_geometry: bool = True
    # "pointer": the start rows of the (tied) embedding table also carry the image's own features at each
    # start cell (a feature pyramid brought to the mask grid, through a zero-initialised projection), so
    # choosing a start reads the image where it lands; needs 1-D starts. "table": the rows are the same for
    # every image (the paper's model). "auto": pointer where the tokenizer allows it, else table. Measured
    # on nuclei at 3 CPU minutes: Dice 0.23 (table, 2-D starts) -> 0.65 (pointer), docs/results.md.
    start_head: str = "auto"
    pyramid_stride: int = 4  # finest backbone level the pyramid of start_head "pointer" / aux_dense_weight uses
    # Weight of an auxiliary per-cell cross-entropy on the pyramid's features at the mask grid (training
    # only; the mask comes from the target tokens). 0 = off. Semantic image tokenizers only.
    aux_dense_weight: float = 0.0
    # The decoder also cross-attends to the pyramid's features (pooled 2x2, one token per 2x2 mask cells),
    # a finer visual grid than the backbone's last map. Needs a pyramid (start_head "pointer" or the aux loss).
    pyramid_memory: bool = False
    # Loss weights per target token; the paper weights padding 0.1.
    pad_weight: float = 0.1
    eos_weight: float = 1.0
    class_weight: float = 1.0  # tokens that carry a class ("class" and "lac" ranges), against imbalance
    label_smoothing: float = 0.0
    init_std: float = 0.02
    tokenizer: dict | None = None  # the tokenizer's to_dict(): a checkpoint describes its own tokens


START_HEADS = ("auto", "table", "pointer")

PRESETS = {
    "paper": ModelConfig(),
    "small": ModelConfig(
        backbone="resnet18", image_size=256, dim=256, heads=8, mlp_dim=1024, encoder_layers=2, decoder_layers=2
    ),
    "tiny": ModelConfig(
        backbone="resnet10t", image_size=128, dim=128, heads=4, mlp_dim=512, encoder_layers=2, decoder_layers=2,
        max_seq_len=256,
    ),
}


# ----------------------------------------------------------------------------- blocks
class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for whole samples during training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.ndim - 1)), device=x.device) >= self.p
        return x * keep / (1.0 - self.p)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.proj = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Attention(nn.Module):
    """Multi-head attention; self-attention (optionally causal, with a KV cache) or cross-attention."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.resid_dropout = nn.Dropout(dropout)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)  # (B, H, T, D/H)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(context).chunk(2, dim=-1)  # (B, S, D) each
        return self.split_heads(k), self.split_heads(v)  # (B, H, S, D/H)

    def forward(self, x, context=None, kv=None, causal=False, cache=None, pos=0) -> torch.Tensor:
        """x (B, T, D) attends to ``context`` (B, S, D), to precomputed ``kv``, or to itself. With a
        ``cache`` (self-attention only) x holds positions pos .. pos+T-1 and attends to the cached past."""
        batch, length, dim = x.shape
        q = self.split_heads(self.q(x))  # (B, H, T, D/H)
        k, v = kv if kv is not None else self.keys_values(x if context is None else context)
        if cache is not None:
            cache.k[:, :, pos : pos + length] = k
            cache.v[:, :, pos : pos + length] = v
            k, v = cache.k[:, :, : pos + length], cache.v[:, :, : pos + length]
            causal = causal and length > 1  # one new query may see the whole cached past
            if causal and pos:
                raise ValueError("a cached multi-token step must start at position 0")
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, D/H)
        y = y.transpose(1, 2).reshape(batch, length, dim)  # (B, T, D)
        return self.resid_dropout(self.proj(y))


@dataclass
class KVCache:
    k: torch.Tensor  # (B, H, max_len, D/H)
    v: torch.Tensor


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float, drop_path: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.mlp = MLP(dim, mlp_dim, dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.ln1(x)))
        return x + self.drop_path(self.mlp(self.ln2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float, drop_path: float):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, dropout)
        self.cross_attn = Attention(dim, heads, dropout)
        self.mlp = MLP(dim, mlp_dim, dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, memory=None, memory_kv=None, cache=None, pos=0) -> torch.Tensor:
        x = x + self.drop_path(self.self_attn(self.ln1(x), causal=True, cache=cache, pos=pos))
        x = x + self.drop_path(self.cross_attn(self.ln2(x), context=memory, kv=memory_kv))
        return x + self.drop_path(self.mlp(self.ln3(x)))


# ----------------------------------------------------------------------------- encoder
class Encoder(nn.Module):
    """images (B, 3, H, W) in [0, 1] -> memory (B, N, D), N = (H/stride) * (W/stride), row-major cells."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        kwargs = dict(c.backbone_kwargs)
        if uses_pyramid(c):
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

    def __init__(self, config: ModelConfig, channels: list[int], strides: list[int], tokenizer):
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


def uses_pyramid(config: ModelConfig) -> bool:
    return config.start_head == "pointer" or config.aux_dense_weight > 0


# ----------------------------------------------------------------------------- decoder
class Decoder(nn.Module):
    """tokens (B, T) at positions pos .. pos+T-1, memory (B, N, D) -> logits (B, T, V)."""

    def __init__(self, config: ModelConfig, tokenizer):
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
        self.start_range = tokenizer.vocab.ranges.get("start")
        self.output_bias = nn.Parameter(torch.zeros(vocab_size))
        self.pos_embedding = nn.Parameter(torch.randn(c.max_seq_len, c.dim) * c.init_std)
        self.dropout = nn.Dropout(c.dropout)
        rates = torch.linspace(0, c.drop_path, c.decoder_layers).tolist()
        self.layers = nn.ModuleList(DecoderLayer(c.dim, c.heads, c.mlp_dim, c.dropout, r) for r in rates)
        self.ln = nn.LayerNorm(c.dim)

    def embedding_table(self, start_content: torch.Tensor | None = None) -> torch.Tensor:
        """The tied table, (V, D); with ``start_content`` (B, S, D), the image's own features at the S start
        cells added to the start rows, (B, V, D)."""
        table = self.token_weight + self.geometry  # (V, D)
        if start_content is None:
            return table
        start = self.start_range
        return table + F.pad(start_content, (0, 0, start.first, table.shape[0] - start.stop))  # (B, V, D)

    def forward(self, tokens, memory=None, memory_kv=None, caches=None, pos=0, table=None, last_only=False):
        """``table``: (V, D) or per image (B, V, D), default :meth:`embedding_table`. ``last_only``: logits
        of the last position only, (B, 1, V) (generation without a cache)."""
        length = tokens.shape[1]
        if pos + length > self.pos_embedding.shape[0]:
            raise ValueError(f"sequence of {pos + length} positions exceeds max_seq_len {self.pos_embedding.shape[0]}")
        table = self.embedding_table() if table is None else table
        if table.ndim == 2:
            embedded = F.embedding(tokens, table)
        else:
            embedded = table[torch.arange(tokens.shape[0], device=tokens.device)[:, None], tokens]
        x = self.dropout(embedded + self.pos_embedding[pos : pos + length])  # (B, T, D)
        for i, layer in enumerate(self.layers):
            x = layer(
                x, memory, None if memory_kv is None else memory_kv[i], None if caches is None else caches[i], pos
            )
        if last_only:
            x = x[:, -1:]
        return self.ln(x) @ table.transpose(-1, -2) + self.output_bias  # (B, T, V)


# ----------------------------------------------------------------------------- model
class Pix2Seq(nn.Module):
    """Image -> mask tokens. Build with :func:`rleseg.models.create_model`.

    Images are (B, 3, H, W) float RGB in [0, 1], H and W divisible by the backbone stride (32 for ResNets).
    Token sequences follow ``self.tokenizer``: inputs start with its BOS; targets are body + EOS, padded
    with PAD (0).
    """

    def __init__(self, config: ModelConfig, tokenizer):
        super().__init__()
        if config.dim % config.heads:
            raise ValueError(f"dim {config.dim} must be divisible by heads {config.heads}")
        if config.start_head not in START_HEADS:
            raise ValueError(f"start_head must be one of {START_HEADS}, got {config.start_head!r}")
        config = resolve_start_head(config, tokenizer)
        self.config, self.tokenizer = config, tokenizer
        self.encoder = self.build_encoder(config)
        self.decoder = Decoder(config, tokenizer)
        self.pyramid = self.start_proj = self.aux_head = None
        if uses_pyramid(config):
            check_pyramid_task(config, tokenizer)
            backbone = self.encoder.backbone
            self.pyramid = Pyramid(config, backbone.feature_channels, backbone.feature_strides, tokenizer)
            if config.start_head == "pointer":
                self.start_proj = nn.Linear(config.dim, config.dim)
            if config.aux_dense_weight > 0:
                self.aux_head = nn.Linear(config.dim, tokenizer.num_classes)
        if config.pyramid_memory and self.pyramid is None:
            raise ValueError("pyramid_memory needs the pyramid: start_head 'pointer' or aux_dense_weight > 0")
        self.memory_proj = nn.Linear(config.dim, config.dim) if config.pyramid_memory else None
        backbone = set(self.encoder.backbone.modules())  # keeps timm's own (or pretrained) init
        for module in self.modules():
            if isinstance(module, nn.Linear) and module not in backbone:
                nn.init.normal_(module.weight, std=config.init_std)
                nn.init.zeros_(module.bias)
        if self.start_proj is not None:  # image content enters the start rows as a residual, zero at init
            nn.init.zeros_(self.start_proj.weight)
        self.register_buffer("token_loss_weight", self._token_loss_weight(), persistent=False)

    def build_encoder(self, config: ModelConfig) -> Encoder:
        """images -> memory (B, N, D). The video models (models/video.py) return an Encoder subclass that
        reads windows of frames; ``self.config`` and ``self.tokenizer`` are set when this runs."""
        return Encoder(config)

    def _token_loss_weight(self) -> torch.Tensor:
        c, vocab = self.config, self.tokenizer.vocab
        weight = torch.ones(vocab.size)
        weight[PAD], weight[EOS] = c.pad_weight, c.eos_weight
        for name in ("class", "lac"):
            if name in vocab.ranges:
                weight[vocab[name].first : vocab[name].stop] = c.class_weight
        return weight  # (V,)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """images -> (memory (B, N, D), embedding table (V, D) or per image (B, V, D), pyramid features at
        the start cells (B, S, D) or None when the model has no pyramid)."""
        if self.pyramid is None:
            return self.encoder(images), self.decoder.embedding_table(), None
        maps = self.encoder.backbone.features(images)
        memory = self.encoder.encode(maps)
        cells = self.pyramid(maps, memory)
        content = None if self.start_proj is None else self.start_proj(cells)
        if self.memory_proj is not None:
            memory = torch.cat([memory, self.pooled_cells(cells)], dim=1)
        return memory, self.decoder.embedding_table(content), cells

    def pooled_cells(self, cells: torch.Tensor) -> torch.Tensor:
        """Pyramid features (B, S, D) on the scan grid -> 2x2-pooled memory tokens with their position codes."""
        grid = self.tokenizer.grid
        x = cells.transpose(1, 2).reshape(cells.shape[0], cells.shape[-1], *grid)  # (B, D, major, minor)
        x = F.avg_pool2d(x, 2, ceil_mode=True)
        pos = sincos_grid(tuple(x.shape[-2:]), x.shape[1]).to(x)
        return self.memory_proj(x.flatten(2).transpose(1, 2)) + pos  # (B, S/4, D)

    def forward(self, images: torch.Tensor, input_tokens: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W), input_tokens (B, T) int64 starting with BOS -> logits (B, T, V) float;
        logits[:, t] predict the token after input_tokens[:, t]."""
        memory, table, _ = self.encode(images)
        return self.decoder(input_tokens, memory, table=table)

    def loss(self, images: torch.Tensor, target_tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced, token-weighted cross-entropy. target_tokens (B, T) int64: body + EOS + PAD;
        the model feeds BOS + target_tokens[:, :-1]. Returns a scalar: sum(w * ce) / sum(w), plus
        ``aux_dense_weight`` times the auxiliary per-cell loss when that is on."""
        bos = torch.full_like(target_tokens[:, :1], self.tokenizer.bos)
        memory, table, cells = self.encode(images)
        logits = self.decoder(torch.cat([bos, target_tokens[:, :-1]], dim=1), memory, table=table)  # (B, T, V)
        ce = F.cross_entropy(
            logits.flatten(0, 1).float(), target_tokens.flatten(), reduction="none",
            label_smoothing=self.config.label_smoothing,
        )  # (B*T,)
        weight = self.token_loss_weight[target_tokens.flatten()]
        loss = (ce * weight).sum() / weight.sum()
        if self.aux_head is not None:
            loss = loss + self.config.aux_dense_weight * self.aux_loss(cells, target_tokens)
        return loss

    def aux_loss(self, cells: torch.Tensor, target_tokens: torch.Tensor) -> torch.Tensor:
        """Per-cell cross-entropy of the pyramid features (B, S, D) against the masks the target tokens
        encode (decoded leniently: a truncated sequence gives the mask of its runs)."""
        masks = np.stack([self.tokenizer.decode(seq, errors="ignore") for seq in target_tokens.cpu().numpy()])
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
    ) -> Generation:
        """Sample up to ``max_len`` tokens (default max_seq_len) after BOS for every image.

        temperature=0 is greedy. With ``constrained`` only tokens the tokenizer's grammar allows are
        sampled, so every sequence ends in EOS within max_len and decodes strictly. Each sequence stops
        at its EOS (PAD after it); the loop stops when all have. See :class:`Generation` for the output.
        """
        check_sampling(temperature, top_k, top_p)
        was_training = self.training
        self.eval()
        max_len = self.config.max_seq_len if max_len is None else int(max_len)
        if not 1 <= max_len <= self.config.max_seq_len:
            raise ValueError(f"max_len must be in 1 .. max_seq_len = {self.config.max_seq_len}, got {max_len}")
        memory, table, _ = self.encode(images)  # table built once, not per step
        batch, device = memory.shape[0], memory.device
        grammar = self.tokenizer.grammar(batch) if constrained else None
        memory_kv = [layer.cross_attn.keys_values(memory) for layer in self.decoder.layers] if use_cache else None
        caches = None
        if use_cache:
            shape = (batch, self.config.heads, max_len, self.config.dim // self.config.heads)
            caches = [KVCache(memory.new_empty(shape), memory.new_empty(shape)) for _ in self.decoder.layers]
        tokens = torch.full((batch, max_len + 1), PAD, dtype=torch.long, device=device)  # BOS + generated
        tokens[:, 0] = self.tokenizer.bos
        logprobs = torch.zeros(batch, max_len, device=device)
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        steps = 0
        for step in range(max_len):
            if use_cache:
                last = tokens[:, step : step + 1]  # (B, 1)
                logits = self.decoder(last, memory_kv=memory_kv, caches=caches, pos=step, table=table)
            else:
                logits = self.decoder(tokens[:, : step + 1], memory, table=table, last_only=True)
            logits = logits[:, -1].float()  # (B, V)
            if grammar is not None:
                allowed = torch.from_numpy(grammar.allowed(max_len - step)).to(device)
            else:  # finished sequences emit PAD, the others anything
                allowed = torch.ones_like(logits, dtype=torch.bool)
                allowed[done] = False
                allowed[done, PAD] = True
            if eos_by_mass:
                allowed = drop_outweighed_eos(logits, allowed)
            next_token, logprob = sample_next(logits, allowed, temperature, top_k, top_p, generator)
            tokens[:, step + 1], logprobs[:, step] = next_token, logprob.masked_fill(done, 0.0)
            if grammar is not None:
                grammar.advance(next_token.cpu().numpy())
            done |= next_token == EOS
            steps = step + 1
            if bool(done.all()):
                break
        self.train(was_training)
        out = tokens[:, 1 : steps + 1].cpu()
        errors = "strict" if constrained else "ignore"
        masks = [self.tokenizer.decode(np.asarray(seq), errors=errors) for seq in out.numpy()]
        return Generation(out, logprobs[:, :steps].cpu(), masks)


def drop_outweighed_eos(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """allowed (B, V) without EOS in the rows where other tokens are allowed and EOS holds less than half
    of the allowed probability of logits (B, V)."""
    probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    outweighed = allowed[:, EOS] & (probs[:, EOS] < 0.5) & (allowed.sum(dim=-1) > 1)
    allowed = allowed.clone()
    allowed[:, EOS] &= ~outweighed
    return allowed


# ----------------------------------------------------------------------------- construction
def has_start_per_cell(tokenizer) -> bool:
    """Whether an image or panoptic tokenizer writes one start token per mask cell (1-D starts): what the
    pointer start head needs."""
    start = tokenizer.vocab.ranges.get("start")
    image = getattr(tokenizer, "task", None) in ("semantic", "panoptic")
    return image and start is not None and start.size == math.prod(tokenizer.mask_size)


def resolve_start_head(config: ModelConfig, tokenizer) -> ModelConfig:
    """start_head "auto" -> "pointer" where :func:`has_start_per_cell`, else "table"."""
    if config.start_head != "auto":
        return config
    return replace(config, start_head="pointer" if has_start_per_cell(tokenizer) else "table")


def check_pyramid_task(config: ModelConfig, tokenizer) -> None:
    """start_head "pointer" needs one start token per mask cell; the auxiliary loss a semantic mask."""
    if getattr(tokenizer, "task", None) not in ("semantic", "panoptic"):
        raise ValueError("start_head 'pointer' and aux_dense_weight need an image tokenizer, "
                         f"got {type(tokenizer).__name__}")
    if config.start_head == "pointer" and not has_start_per_cell(tokenizer):
        raise ValueError("start_head 'pointer' needs 1-D starts (one start token per mask cell); "
                         f"the tokenizer has starts={tokenizer.starts!r}")
    if config.aux_dense_weight > 0 and tokenizer.task != "semantic":
        raise ValueError(f"aux_dense_weight needs a semantic tokenizer, got task {tokenizer.task!r}")


def tokenizer_from_dict(data: dict):
    """Rebuild a tokenizer from its ``to_dict()``, whatever its type."""
    kind = data.get("type", "image") if isinstance(data, dict) else None
    if kind == "image":
        from rleseg.tokens import Tokenizer as cls
    elif kind == "video":
        from rleseg.tokens.video import VideoTokenizer as cls
    elif kind == "panoptic":
        from rleseg.tokens.panoptic import PanopticTokenizer as cls
    else:
        raise ValueError(f"unknown tokenizer type {kind!r}; expected 'image', 'video' or 'panoptic'")
    return cls.from_dict(data)


def resolve_config(config: str | ModelConfig) -> ModelConfig:
    """A preset name ("tiny", "small", "paper") or a ModelConfig, as a ModelConfig."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown model preset {config!r}; choose one of {sorted(PRESETS)}")
        config = PRESETS[config]
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a preset name or a ModelConfig, got {type(config).__name__}")
    return config


def create_model(config: str | ModelConfig, tokenizer=None) -> nn.Module:
    """A model for ``tokenizer`` from a preset name ("tiny", "small", "paper") or a ModelConfig.

    The tokenizer's ``to_dict()`` is stored in ``model.config.tokenizer``; ``tokenizer`` may be omitted
    when the config already holds one. ``config.head`` "token" gives a :class:`Pix2Seq`, "dense" the
    dense baseline (``rleseg.models.dense.DenseModel``); a ``VideoModelConfig`` gives a video model
    (``rleseg.models.video.create_video_model``).
    """
    config = resolve_config(config)
    if config.head not in ("token", "dense"):
        raise ValueError(f"unknown model head {config.head!r}; expected 'token' or 'dense'")
    from .video import VideoModelConfig, create_video_model  # imported here: video.py imports this module

    if isinstance(config, VideoModelConfig):
        return create_video_model(config, tokenizer)
    if tokenizer is None:
        if config.tokenizer is None:
            raise ValueError("no tokenizer: pass one, or a ModelConfig whose tokenizer field is set")
        tokenizer = tokenizer_from_dict(config.tokenizer)
    config = replace(config, tokenizer=tokenizer.to_dict())
    if config.head == "dense":
        from .dense import DenseModel

        return DenseModel(config, tokenizer)
    return Pix2Seq(config, tokenizer)
