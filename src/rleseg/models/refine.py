"""Boundary refinement: a decoded mask on the tokenizer's grid (1/factor of the patch) -> labels at the patch's
full resolution that differ from its nearest upsampling only near its class boundaries.

The token model decides every object (what is there, where, which class) on the mask grid. The
:class:`Refiner` only redraws the pixels within ``band`` mask cells of a class boundary of that mask,
reading the image (a small full-resolution convolution stem) and the model's feature pyramid at the mask
grid; every other pixel is the nearest upsampling of the decoded mask, exactly. With ``band`` 0 nothing is
redrawn (token-only output).

Training (:meth:`Refiner.training_loss`): the coarse input is the target's own mask on the grid, a share of its boundary
cells moved by one cell (:func:`jitter_boundaries`) so that the refiner learns to correct masks as
imperfect as decoded ones; the loss is the cross-entropy of the band pixels against the full-resolution
mask.

Panoptic masks (:func:`refine_instances`): the refiner redraws the classes; a redrawn pixel of a thing class
takes the instance of the nearest cell of that class within ``band`` cells of its own in the decoded
instance map (one of the instances on either side of the boundary it lies on), so every decoded instance
keeps its id and only band pixels change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STEM_WIDTH = 8  # channels of the full-resolution image stem: edges, no semantics (the pyramid has those)
FEATURE_WIDTH = 16  # the pyramid's features projected to this before they are upsampled
HEAD_WIDTH = 16
# The coarse mask enters the logits as this times its one-hot: the head's last layer starts at zero, so an
# untrained refiner reproduces the coarse mask, and it learns corrections rather than the whole mask.
PRIOR_GAIN = 4.0


def boundary_band(coarse: torch.Tensor, num_classes: int, band: int) -> torch.Tensor:
    """Labels (B, h, w) int64 on the mask grid -> (B, h, w) bool: the cells within ``band`` cells (in the
    max norm, 8-neighbourhood steps) of a cell of another class. ``band`` 0: no cell."""
    if band <= 0:
        return torch.zeros_like(coarse, dtype=torch.bool)
    onehot = F.one_hot(coarse, num_classes).movedim(-1, 1).float()  # (B, C, h, w)
    present = F.max_pool2d(onehot, 2 * band + 1, stride=1, padding=band)  # pads with -inf: borders are not a class
    return present.sum(1) > 1


def upsample_nearest(labels: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, h, w) -> (B, h * factor, w * factor), each cell repeated (as ``rleseg.tokens.upsample_mask``)."""
    return labels.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def jitter_boundaries(coarse: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each cell takes the label of a random one of its 8 neighbours with probability ``rate``: inside a
    region nothing changes, at a boundary the boundary moves by a cell there (edges replicate the border)."""
    if rate <= 0:
        return coarse
    batch, height, width = coarse.shape
    padded = F.pad(coarse[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0].long()  # (B, h+2, w+2)
    offsets = [(dy, dx) for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1)]
    neighbours = torch.stack([padded[:, dy : dy + height, dx : dx + width] for dy, dx in offsets])  # (8, B, h, w)
    pick = torch.randint(0, len(offsets), (1, batch, height, width), generator=generator, device=coarse.device)
    moved = neighbours.gather(0, pick)[0]
    flip = torch.rand(coarse.shape, generator=generator, device=coarse.device) < rate
    return torch.where(flip, moved, coarse)


class Refiner(nn.Module):
    """(images (B, 3, P, P), pyramid features on the mask grid (B, D, h, w), coarse labels (B, h, w)) ->
    full-resolution logits (B, C, P, P); :meth:`labels` applies the band."""

    def __init__(self, dim: int, num_classes: int, band: int):
        super().__init__()
        self.num_classes, self.band = num_classes, band
        self.stem = nn.Sequential(nn.Conv2d(3, STEM_WIDTH, 3, padding=1), nn.GELU())
        self.features = nn.Conv2d(dim, FEATURE_WIDTH, 1)
        self.head = nn.Sequential(
            nn.Conv2d(STEM_WIDTH + FEATURE_WIDTH + num_classes, HEAD_WIDTH, 3, padding=1), nn.GELU(),
            nn.Conv2d(HEAD_WIDTH, HEAD_WIDTH, 3, padding=1), nn.GELU(),
            nn.Conv2d(HEAD_WIDTH, num_classes, 1),
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, images: torch.Tensor, cells: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        factor = grid_factor(images, coarse)
        size = images.shape[-2:]
        prior = upsample_nearest(F.one_hot(coarse, self.num_classes).movedim(-1, 1), factor).to(images.dtype)
        features = F.interpolate(self.features(cells), size=size, mode="bilinear", align_corners=False)
        # channels last: the head's small convolutions run about twice as fast on a CPU (oneDNN)
        x = torch.cat([self.stem(images), features, prior], dim=1).contiguous(memory_format=torch.channels_last)
        return self.head(x) + PRIOR_GAIN * prior  # (B, C, P, P)

    def band_pixels(self, coarse: torch.Tensor, factor: int) -> torch.Tensor:
        """(B, h, w) labels -> (B, h * factor, w * factor) bool: the pixels the refiner may change."""
        return upsample_nearest(boundary_band(coarse, self.num_classes, self.band), factor)

    def labels(self, images: torch.Tensor, cells: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Refined labels (B, P, P) int64: the logits' argmax in the band, the coarse labels elsewhere."""
        factor = grid_factor(images, coarse)
        labels = upsample_nearest(coarse, factor)
        band = self.band_pixels(coarse, factor)
        redraw = band.flatten(1).any(1)  # (B,) only patches with a class boundary go through the convolutions
        if redraw.any():
            logits = self(images[redraw], cells[redraw], coarse[redraw])
            labels[redraw] = torch.where(band[redraw], logits.argmax(1), labels[redraw])
        return labels

    def training_loss(self, images: torch.Tensor, cells: torch.Tensor, mask: torch.Tensor, mask_small: torch.Tensor,
                      jitter: float) -> torch.Tensor:
        """:meth:`loss` from the grid mask ``mask_small`` (B, h, w) as the tokens encode it (ignored labels as
        0), a share ``jitter`` of its cells moved (:func:`jitter_boundaries`), against ``mask`` (B, P, P)."""
        known = (mask_small >= 0) & (mask_small < self.num_classes)
        coarse = torch.where(known, mask_small, torch.zeros_like(mask_small))
        return self.loss(images, cells, jitter_boundaries(coarse, jitter), mask)

    def loss(self, images: torch.Tensor, cells: torch.Tensor, coarse: torch.Tensor, mask: torch.Tensor
             ) -> torch.Tensor:
        """Cross-entropy of the band pixels against the full-resolution ``mask`` (B, P, P); labels outside
        0 .. C-1 (ignored pixels) do not count. 0 when no band pixel counts."""
        band = self.band_pixels(coarse, grid_factor(images, coarse))
        valid = band & (mask >= 0) & (mask < self.num_classes)
        target = torch.where(valid, mask, torch.full_like(mask, -100))
        logits = self(images, cells, coarse).float()
        return F.cross_entropy(logits, target, ignore_index=-100, reduction="sum") / valid.sum().clamp(min=1)


def refine_instances(coarse: torch.Tensor, instances: torch.Tensor, refined: torch.Tensor, thing_classes: list[int],
                     band: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded classes and instance ids on the grid (B, h, w) int64 and the refined classes (B, P, P) ->
    (classes, instances) (B, P, P) int64 at the patch's resolution.

    A pixel the refiner left at its cell's class keeps its cell's instance. A redrawn pixel of a thing class
    takes the instance of the nearest (centre to centre) cell of that class among the cells within ``band``
    of its own; with none there it keeps its cell's class and instance. A redrawn pixel of any other class
    has no instance (0). A decoded instance all of whose pixels were redrawn keeps its decoded pixels: what
    is there is the tokens' decision."""
    factor = refined.shape[-1] // coarse.shape[-1]
    rows, cols = coarse.shape[-2:]
    semantic, ids = upsample_nearest(coarse, factor), upsample_nearest(instances, factor)
    b, y, x = (refined != semantic).nonzero(as_tuple=True)  # (N,) each: the redrawn pixels
    wanted = refined[b, y, x]
    nearest = torch.full(wanted.shape, float("inf"), device=refined.device)
    chosen = torch.zeros_like(wanted)
    for dy in range(-band, band + 1):
        for dx in range(-band, band + 1):
            ny, nx = y // factor + dy, x // factor + dx
            inside = (ny >= 0) & (ny < rows) & (nx >= 0) & (nx < cols)
            ny, nx = ny.clamp(0, rows - 1), nx.clamp(0, cols - 1)
            distance = ((y + 0.5 - (ny + 0.5) * factor) ** 2 + (x + 0.5 - (nx + 0.5) * factor) ** 2).float()
            better = inside & (coarse[b, ny, nx] == wanted) & (distance < nearest)
            nearest = torch.where(better, distance, nearest)
            chosen = torch.where(better, instances[b, ny, nx], chosen)
    thing = torch.isin(wanted, torch.tensor(list(thing_classes), device=refined.device, dtype=wanted.dtype))
    keep = thing & nearest.isinf()  # a thing pixel with no instance of its class near: the decoded pixel stays
    decoded_semantic, decoded_ids = semantic.clone(), ids.clone()
    semantic[b, y, x] = torch.where(keep, semantic[b, y, x], wanted)
    ids[b, y, x] = torch.where(keep, ids[b, y, x], torch.where(thing, chosen, 0))
    present = torch.zeros(len(ids), int(instances.max()) + 1, dtype=torch.bool, device=ids.device)  # (B, n + 1)
    lost = present.scatter(1, decoded_ids.flatten(1), True) & ~present.scatter(1, ids.flatten(1), True)
    erased = lost.gather(1, decoded_ids.flatten(1)).view_as(ids) & (decoded_ids > 0)
    return torch.where(erased, decoded_semantic, semantic), torch.where(erased, decoded_ids, ids)


def grid_factor(images: torch.Tensor, coarse: torch.Tensor) -> int:
    """The patch size over the mask grid's, checked to be one whole factor on both axes."""
    (height, width), (rows, cols) = images.shape[-2:], coarse.shape[-2:]
    if height % rows or width % cols or height // rows != width // cols:
        raise ValueError(f"images of {height}x{width} px are not a whole multiple of the {rows}x{cols} mask grid")
    return height // rows
