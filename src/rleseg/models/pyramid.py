"""The feature pyramid at the mask grid and the heads of :class:`~rleseg.models.pix2seq.Pix2Seq` that read it.

- :class:`Pyramid`: backbone maps + encoder memory -> features at every mask cell, (B, S, D) in the
  tokenizer's scan order (the refiner reads them too, :func:`on_grid`).
- :class:`PointerHead` (``start_head: pointer``): the image content added to the rows of the tied token
  table that point at cells: start rows and, with tokenizer extent "end", run-end rows (:class:`EndPointer`).
  Choosing a start is then a dot product between the decoder state and the image at each cell.
- :class:`CellHead` (``aux_dense_weight > 0``): a per-cell classifier of the pyramid, trained with an
  auxiliary cross-entropy against the target's mask; its label map is the draft that greedy decoding
  verifies (models/draft.py).

Shapes: B = batch, S = mask cells, D = width, P = pointer rows of the table, C = classes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rleseg.tokens import MaskTokenizer


class Pyramid(nn.Module):
    """Backbone maps + encoder memory -> features at every start cell, (B, S, D) in the tokenizer's scan order.

    A light top-down feature pyramid: the memory (the coarsest map after the transformer) is upsampled
    level by level and summed with a 1x1 projection of each finer backbone map down to ``stride``; the
    result is resampled to the mask grid (one cell per start token) and layer-normalised.
    """

    def __init__(self, dim: int, stride: int, channels: list[int], strides: list[int], tokenizer: MaskTokenizer):
        super().__init__()
        levels = [i for i, s in enumerate(strides[:-1]) if s >= stride]
        if not levels:
            raise ValueError(f"pyramid_stride {stride} is finer than every backbone level but the last "
                             f"(strides {strides})")
        self.levels = levels
        self.laterals = nn.ModuleList(nn.Conv2d(channels[i], dim, 1) for i in levels)
        self.ln = nn.LayerNorm(dim)
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


def on_grid(cells: torch.Tensor, tokenizer: MaskTokenizer) -> torch.Tensor:
    """Pyramid features (B, S, D) in scan order -> (B, D, H, W) on the mask grid, rows first."""
    x = cells.transpose(1, 2).reshape(cells.shape[0], cells.shape[-1], *tokenizer.grid)
    return x.transpose(-1, -2) if tokenizer.order == "F" else x


def end_range(tokenizer: MaskTokenizer) -> str | None:
    """The name of the tokenizer's range of run ends ("end", or "end_class" fused with the class), if any."""
    return next((name for name in ("end", "end_class") if name in tokenizer.vocab.ranges), None)


def pointer_span(tokenizer: MaskTokenizer) -> tuple[int, int]:
    """(first, stop) of the rows that point at mask cells: the "end" or "end_class" range (extent "end",
    laid out right before the starts) and the "start" range; (0, 0) without starts."""
    ranges = tokenizer.vocab.ranges
    if "start" not in ranges:
        return 0, 0
    end = end_range(tokenizer)
    return ranges[end or "start"].first, ranges["start"].stop


class EndPointer(nn.Module):
    """Pyramid features at the cells (B, S, D) -> the image content of the run-end rows (tokenizer extent
    "end"): a zero-initialised projection of the features at each end cell plus a learned vector per class
    of "end_class" rows (class-major, as the fused values), one shared vector for "end" rows. The vector
    also tells an end row from the start row of the same cell, whose geometry is the same."""

    def __init__(self, dim: int, init_std: float, tokenizer: MaskTokenizer):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        kinds = tokenizer.num_classes - 1 if end_range(tokenizer) == "end_class" else 1
        self.kinds = nn.Parameter(torch.randn(kinds, dim) * init_std)

    def forward(self, cells: torch.Tensor) -> torch.Tensor:
        return (self.proj(cells)[:, None] + self.kinds[None, :, None]).flatten(1, 2)  # (B, kinds * S, D)


class PointerHead(nn.Module):
    """Pyramid features (B, S, D) -> the content (B, P, D) of the table's :func:`pointer_span` rows: the
    image's feature at each start cell through a zero-initialised projection (a video model gives the
    cells of its starts: per frame, or per TAC cell), preceded by the run-end rows' (:class:`EndPointer`)
    when the tokenizer writes run ends."""

    def __init__(self, dim: int, init_std: float, tokenizer: MaskTokenizer):
        super().__init__()
        self.start_proj = nn.Linear(dim, dim)
        self.end = EndPointer(dim, init_std, tokenizer) if end_range(tokenizer) else None

    def reset_parameters(self) -> None:
        """Image content enters the rows as a residual, zero at initialisation."""
        nn.init.zeros_(self.start_proj.weight)
        if self.end is not None:
            nn.init.zeros_(self.end.proj.weight)

    def forward(self, cells: torch.Tensor) -> torch.Tensor:
        content = self.start_proj(cells)
        return content if self.end is None else torch.cat([self.end(cells), content], dim=1)  # (B, P, D)


class CellHead(nn.Module):
    """A per-cell classifier of the pyramid features (B, S, D) -> logits (B, S, C), trained with an auxiliary
    cross-entropy (:meth:`loss`) against the masks the target tokens encode. Panoptic tokenizers: one more
    class, C, for the first cell (in scan order) of each thing instance, where a group's first start points."""

    def __init__(self, dim: int, tokenizer: MaskTokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.panoptic = tokenizer.task == "panoptic"
        self.classify = nn.Linear(dim, tokenizer.num_classes + self.panoptic)

    def forward(self, cells: torch.Tensor) -> torch.Tensor:
        return self.classify(cells)

    def draft(self, cells: torch.Tensor) -> np.ndarray:
        """The head's label map (B, h, w) int64 on the mask grid: a draft of the mask (models/draft.py)."""
        labels = self(cells).argmax(-1).cpu().numpy().reshape(len(cells), *self.tokenizer.grid)
        return labels.transpose(0, 2, 1) if self.tokenizer.order == "F" else labels

    def labels(self, tokens: np.ndarray) -> np.ndarray:
        """The (S,) cell labels of one image's flat tokens, decoded leniently (a truncated sequence gives the
        mask of its runs), in the cells' order, which is the tokenizer's scan order."""
        tokenizer = self.tokenizer
        if not self.panoptic:
            return tokenizer.decode(tokens, errors="ignore").ravel(order=tokenizer.order)
        semantic, _ = tokenizer.decode(tokens, errors="ignore")
        labels = semantic.ravel(order=tokenizer.order).astype(np.int64)
        firsts = [g.runs.starts[0] for g in tokenizer.decode_groups(tokens, errors="ignore")
                  if tokenizer.is_thing[g.label]]
        labels[np.asarray(firsts, dtype=np.int64)] = tokenizer.num_classes
        return labels

    def loss(self, cells: torch.Tensor, target_tokens: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each cell against the masks of ``target_tokens`` (an image's rows joined: its flat
        form)."""
        flat = target_tokens.reshape(len(cells), -1).cpu().numpy()
        labels = torch.from_numpy(np.stack([self.labels(seq) for seq in flat])).to(cells.device)  # (B, S)
        return F.cross_entropy(self(cells).flatten(0, 1).float(), labels.long().flatten())
