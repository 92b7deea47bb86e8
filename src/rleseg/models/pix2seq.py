"""The Pix2Seq model: backbone -> transformer encoder -> causal transformer decoder over mask tokens.

Read top to bottom: config, blocks, encoder, decoder, model, create_model (the sin-cos position codes
live in positions.py). Shapes use B = batch, N = visual tokens (feature-map cells), T = sequence
positions, D = width, V = vocabulary, H = heads.
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
    # Loss weights per target token; the paper weights padding 0.1.
    pad_weight: float = 0.1
    eos_weight: float = 1.0
    class_weight: float = 1.0  # tokens that carry a class ("class" and "lac" ranges), against imbalance
    label_smoothing: float = 0.0
    init_std: float = 0.02
    tokenizer: dict | None = None  # the tokenizer's to_dict(): a checkpoint describes its own tokens


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
        self.backbone = Backbone(c.backbone, c.pretrained, c.freeze_backbone, **c.backbone_kwargs)
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
        features = self.backbone(images)  # (B, C, h, w)
        h, w = features.shape[-2:]
        pos = sincos_grid((h, w), self.input_proj.out_features).to(features)  # (N, D)
        x = self.input_proj(features.flatten(2).transpose(1, 2))  # (B, N, D)
        x = self.dropout(x + pos)
        for layer in self.layers:
            x = layer(x)
        x = self.out_ln(self.out_proj(self.ln(x))) + pos
        return self.out_mlp_ln(x + self.out_mlp(x))  # (B, N, D)


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
        self.output_bias = nn.Parameter(torch.zeros(vocab_size))
        self.pos_embedding = nn.Parameter(torch.randn(c.max_seq_len, c.dim) * c.init_std)
        self.dropout = nn.Dropout(c.dropout)
        rates = torch.linspace(0, c.drop_path, c.decoder_layers).tolist()
        self.layers = nn.ModuleList(DecoderLayer(c.dim, c.heads, c.mlp_dim, c.dropout, r) for r in rates)
        self.ln = nn.LayerNorm(c.dim)

    def embedding_table(self) -> torch.Tensor:
        return self.token_weight + self.geometry  # (V, D)

    def forward(self, tokens, memory=None, memory_kv=None, caches=None, pos=0, table=None, last_only=False):
        """``last_only``: logits of the last position only, (B, 1, V) (generation without a cache)."""
        length = tokens.shape[1]
        if pos + length > self.pos_embedding.shape[0]:
            raise ValueError(f"sequence of {pos + length} positions exceeds max_seq_len {self.pos_embedding.shape[0]}")
        table = self.embedding_table() if table is None else table
        x = self.dropout(F.embedding(tokens, table) + self.pos_embedding[pos : pos + length])  # (B, T, D)
        for i, layer in enumerate(self.layers):
            x = layer(
                x, memory, None if memory_kv is None else memory_kv[i], None if caches is None else caches[i], pos
            )
        if last_only:
            x = x[:, -1:]
        return self.ln(x) @ table.T + self.output_bias  # (B, T, V)


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
        self.config, self.tokenizer = config, tokenizer
        self.encoder = self.build_encoder(config)
        self.decoder = Decoder(config, tokenizer)
        backbone = set(self.encoder.backbone.modules())  # keeps timm's own (or pretrained) init
        for module in self.modules():
            if isinstance(module, nn.Linear) and module not in backbone:
                nn.init.normal_(module.weight, std=config.init_std)
                nn.init.zeros_(module.bias)
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

    def forward(self, images: torch.Tensor, input_tokens: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W), input_tokens (B, T) int64 starting with BOS -> logits (B, T, V) float;
        logits[:, t] predict the token after input_tokens[:, t]."""
        return self.decoder(input_tokens, self.encoder(images))

    def loss(self, images: torch.Tensor, target_tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced, token-weighted cross-entropy. target_tokens (B, T) int64: body + EOS + PAD;
        the model feeds BOS + target_tokens[:, :-1]. Returns a scalar: sum(w * ce) / sum(w)."""
        bos = torch.full_like(target_tokens[:, :1], self.tokenizer.bos)
        logits = self(images, torch.cat([bos, target_tokens[:, :-1]], dim=1))  # (B, T, V)
        ce = F.cross_entropy(
            logits.flatten(0, 1).float(), target_tokens.flatten(), reduction="none",
            label_smoothing=self.config.label_smoothing,
        )  # (B*T,)
        weight = self.token_loss_weight[target_tokens.flatten()]
        return (ce * weight).sum() / weight.sum()

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
        memory = self.encoder(images)  # (B, N, D)
        batch, device = memory.shape[0], memory.device
        table = self.decoder.embedding_table()  # (V, D), built once, not per step
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


# ----------------------------------------------------------------------------- construction
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
