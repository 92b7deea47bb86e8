"""The transformer blocks of the token models: stochastic depth, MLP, attention with a KV cache, and the
encoder and decoder layers (pre-norm). Shapes use B = batch, T = query positions, S = context positions,
D = width, H = heads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block, back in the mode it was in after. A module already in eval
    mode is left as it is (its submodules are assumed to be too): switching walks every submodule, about 4 ms
    a call on the tiny model, twice a predicted batch."""
    if not module.training:
        yield module
        return
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


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


@dataclass
class KVCache:
    """A self-attention layer's keys and values of the positions generated so far."""

    k: torch.Tensor  # (B, H, max_len, D/H)
    v: torch.Tensor

    def write_rows(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, D/H) of positions pos[b] .. pos[b]+T-1, each row at its own ``pos`` (B,) ->
        (the cached keys and values up to the furthest position written, the (B, 1, T, P) bool mask of the
        ones each query may see: its own row's positions up to its own). Entries past a row's position are
        left over from drafts it rejected; the mask hides them until they are written again."""
        index = pos[:, None] + torch.arange(k.shape[2], device=pos.device)  # (B, T)
        slots = index[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[-1])
        self.k.scatter_(2, slots, k)
        self.v.scatter_(2, slots, v)
        seen = int(index.max()) + 1
        mask = torch.arange(seen, device=pos.device) <= index[:, :, None]  # (B, T, P)
        return self.k[:, :, :seen], self.v[:, :, :seen], mask[:, None]


class Attention(nn.Module):
    """Multi-head attention; self-attention (optionally causal, with a KV cache) or cross-attention."""

    def __init__(self, dim: int, heads: int, dropout: float, attention_dropout: float | None = None):
        """``dropout``: on the output; ``attention_dropout``: on the attention weights (None: ``dropout``)."""
        super().__init__()
        self.heads, self.dropout = heads, dropout if attention_dropout is None else attention_dropout
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

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        pos: int | torch.Tensor = 0,
    ) -> torch.Tensor:
        """x (B, T, D) attends to ``context`` (B, S, D), to precomputed ``kv``, or to itself. With a
        ``cache`` (self-attention only) x holds positions pos .. pos+T-1 and attends to the cached past;
        ``pos`` may be a (B,) tensor, each row at its own position (draft verification, models/draft.py)."""
        batch, length, dim = x.shape
        q = self.split_heads(self.q(x))  # (B, H, T, D/H)
        k, v = kv if kv is not None else self.keys_values(x if context is None else context)
        mask = None
        if cache is not None and isinstance(pos, torch.Tensor):
            k, v, mask = cache.write_rows(k, v, pos)
            causal = False  # the mask is causal by each row's positions
        elif cache is not None:
            cache.k[:, :, pos : pos + length] = k
            cache.v[:, :, pos : pos + length] = v
            k, v = cache.k[:, :, : pos + length], cache.v[:, :, : pos + length]
            causal = causal and length > 1  # one new query may see the whole cached past
            if causal and pos:
                raise ValueError("a cached multi-token step must start at position 0")
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, D/H)
        y = y.transpose(1, 2).reshape(batch, length, dim)  # (B, T, D)
        return self.resid_dropout(self.proj(y))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float, drop_path: float,
                 attention_dropout: float | None = None):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout, attention_dropout)
        self.mlp = MLP(dim, mlp_dim, dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.ln1(x)))
        return x + self.drop_path(self.mlp(self.ln2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float, drop_path: float,
                 attention_dropout: float | None = None):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, dropout, attention_dropout)
        self.cross_attn = Attention(dim, heads, dropout, attention_dropout)
        self.mlp = MLP(dim, mlp_dim, dropout)
        self.drop_path = DropPath(drop_path)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        pos: int = 0,
    ) -> torch.Tensor:
        x = x + self.drop_path(self.self_attn(self.ln1(x), causal=True, cache=cache, pos=pos))
        x = x + self.drop_path(self.cross_attn(self.ln2(x), context=memory, kv=memory_kv))
        return x + self.drop_path(self.mlp(self.ln3(x)))
