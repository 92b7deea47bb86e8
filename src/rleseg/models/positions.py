"""Fixed sin-cos position codes: for the encoder's feature-map cells and for start tokens' geometry."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sincos(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) float positions -> (N, dim) [sin | cos] at geometric frequencies (Transformer-style)."""
    half = dim // 2
    freqs = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / max(half, 1))
    angles = positions.double()[:, None] * freqs  # (N, half)
    out = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(out, (0, dim - 2 * half)).float()


def sincos_grid(shape: tuple[int, ...], dim: int) -> torch.Tensor:
    """Sin-cos code of every cell of an N-D grid, (prod(shape), dim), cells in C order; dim split evenly
    over the axes (any remainder zero)."""
    per_axis = dim // len(shape) // 2 * 2
    coords = torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij")
    parts = [sincos(c.reshape(-1), per_axis) for c in coords]
    return F.pad(torch.cat(parts, dim=1), (0, dim - per_axis * len(shape)))


def start_geometry(tokenizer, dim: int, norm: float) -> torch.Tensor:
    """(V, dim): the geometry code of each start token, zero rows for the other tokens.

    "start" tokens (flat index on the scan grid) get the 2-D code of (major, minor) = divmod(index, minor
    size) of the tokenizer's scan ``grid``, i.e. (row, col) for order "C"; so do "end" tokens (a run's last
    cell) and "end_class" tokens (that cell, for each class). 2-D "coord" tokens get the 1-D code of their
    coordinate. Rows are scaled to ``norm``, the expected norm of a randomly initialised embedding row.
    """
    table = torch.zeros(tokenizer.vocab.size, dim)
    grid = tuple(tokenizer.grid)
    for name, span in tokenizer.vocab.ranges.items():
        if name == "start":
            if math.prod(grid) == span.size:
                code = sincos_grid(grid, dim)
            else:  # no grid known for these starts: their 1-D order still carries nearness
                code = sincos(torch.arange(span.size), dim)
        elif name in ("end", "end_class"):  # a run's last cell, once per class for "end_class"
            code = sincos_grid(grid, dim).repeat(span.size // math.prod(grid), 1)
        elif name == "coord":
            code = sincos(torch.arange(span.size), dim)
        else:
            continue
        table[span.first : span.stop] = code * (norm / code.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return table
