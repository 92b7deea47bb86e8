"""Class maps -> instance maps for the dense baseline of a panoptic task: connected components, a boundary
band, seeded growth, in torch on the model's device (no scipy at run time).

A dense model of a panoptic task (``DenseConfig.instances``) composes one of two rules, the usual
instance baselines of microscopy:

- ``components`` (:class:`Components`): the model learns the task's classes; each connected region of one
  thing class is an instance. Touching objects of a class merge.
- ``interiors`` (:class:`Interiors`): the model learns one more class, *boundary* (class C, after the
  task's C), the band of ``width`` pixels inside each object's edge, made from the batch's instance maps
  (:func:`boundary_band`); at prediction the connected interiors (thing pixels) are the seeds, grown back
  over the boundary pixels (:func:`grow_seeds`), so that objects which touch only across their boundaries
  stay apart. A connected patch of boundary pixels that no seed reaches is an instance of its own (a small
  object can be all boundary). One thing class only: the boundary class says nothing of the class.

Shapes: labels and instance maps are (B, H, W) int64; ids are 1..n per image in the raster order of
each instance's first pixel (:func:`label_regions`), 0 where no instance is.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

RULES = ("components", "interiors")


def _shifted(x: torch.Tensor, dy: int, dx: int, fill: int) -> torch.Tensor:
    """(B, H, W) -> (B, H, W): out[:, y, x] = x[:, y + dy, x + dx], ``fill`` past the border."""
    height, width = x.shape[-2:]
    out = torch.full_like(x, fill)
    out[:, max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)] = \
        x[:, max(0, dy) : height + min(0, dy), max(0, dx) : width + min(0, dx)]
    return out


def neighbour_offsets(connectivity: int) -> list[tuple[int, int]]:
    """(dy, dx) of the 4 (connectivity 1) or 8 (connectivity 2) neighbours, as skimage.measure.label counts."""
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 (4 neighbours) or 2 (8 neighbours), got {connectivity}")
    return [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if 0 < abs(dy) + abs(dx) <= connectivity]


def label_regions(values: torch.Tensor, connectivity: int = 1) -> torch.Tensor:
    """(B, H, W) integer -> (B, H, W) int64 ids 1..n per image: the connected regions of equal non-zero
    value (0 stays 0), numbered in the raster order of their first pixel (as ``skimage.measure.label``).

    Vectorised min-label propagation with pointer jumping: every pixel starts with its own flat index,
    takes the least index among its neighbours of the same value, then the label of the pixel its label
    names; labels only fall and stay inside the region, so at the fixed point each region holds the
    index of its first pixel. The passes grow with the regions' widest winding, not their area.
    """
    values = values.long()
    batch, height, width = values.shape
    size = batch * height * width
    foreground = values != 0
    labels = torch.where(foreground, torch.arange(size, device=values.device).view_as(values), size)
    same = [(dy, dx, foreground & (_shifted(values, dy, dx, 0) == values)) for dy, dx in
            neighbour_offsets(connectivity)]
    while True:
        least = labels
        for dy, dx, joined in same:
            least = torch.minimum(least, torch.where(joined, _shifted(labels, dy, dx, size), size))
        flat = torch.cat([least.flatten(), least.new_full((1,), size)])  # index ``size``: no pixel
        jumped = flat[least]  # the label of the pixel each label names (pointer jumping)
        if torch.equal(jumped, labels):
            break
        labels = jumped
    roots, ids = torch.unique(labels[foreground], return_inverse=True)
    # ids count over the whole batch; roots lead with the image, so each image's first id is its offset
    first = torch.searchsorted(roots, torch.arange(batch, device=values.device) * height * width)
    out = torch.zeros_like(values)
    out[foreground] = ids + 1 - first.repeat_interleave(foreground.flatten(1).sum(1))
    return out


def boundary_band(instances: torch.Tensor, width: int) -> torch.Tensor:
    """(B, H, W) instance ids (0: none) -> (B, H, W) bool: the pixels of an instance within ``width``
    pixels (max norm) of a pixel of another id, background included. The map's own border is not an edge
    (patches cut objects; the whole image does not end there)."""
    ids = instances.double()[:, None]  # (B, 1, H, W); float64: exact for any id
    padded = F.pad(ids, (width,) * 4, mode="replicate")
    window = 2 * width + 1
    high = F.max_pool2d(padded, window, stride=1)
    low = -F.max_pool2d(-padded, window, stride=1)
    return ((instances > 0) & ((high != ids) | (low != ids))[:, 0])


def grow_seeds(seeds: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Seed ids (B, H, W) int64 (0: none) grown over the pixels of ``region`` (B, H, W) bool, one pixel
    step (8 neighbours) a pass until nothing changes: each region pixel takes the id of the seed nearest
    to it along the region (the larger id where two arrive in the same pass). Pixels no seed reaches stay 0."""
    grown = seeds
    while True:
        reach = F.max_pool2d(grown.double()[:, None], 3, stride=1, padding=1)[:, 0].long()  # (B, H, W)
        step = torch.where(region & (grown == 0), reach, grown)
        if torch.equal(step, grown):
            return grown
        grown = step


class Components:
    """Each connected region of one thing class is an instance; the model learns the task's classes."""

    target_keys: ClassVar[tuple[str, ...]] = ("mask",)

    def __init__(self, num_classes: int, thing_classes: list[int]):
        self.num_classes, self.thing_classes = num_classes, list(thing_classes)

    @property
    def outputs(self) -> int:
        """The classes the dense model predicts."""
        return self.num_classes

    def targets(self, mask: torch.Tensor) -> torch.Tensor:
        """The batch's (B, H, W) classes as they are."""
        return mask

    def __call__(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted classes (B, H, W) -> (semantic (B, H, W), instances (B, H, W)) int64."""
        things = torch.isin(labels, torch.tensor(self.thing_classes, device=labels.device))
        return labels, label_regions(torch.where(things, labels, 0))


class Interiors:
    """Interiors grown back over a learnt boundary class (see the module doc); one thing class."""

    target_keys: ClassVar[tuple[str, ...]] = ("mask", "instances")

    def __init__(self, num_classes: int, thing_classes: list[int], width: int):
        if len(thing_classes) != 1:
            raise ValueError(f"model.instances 'interiors' needs exactly one thing class (its boundary class has "
                             f"none), got thing_classes {list(thing_classes)}; use 'components'")
        self.num_classes, self.thing, self.width = num_classes, int(thing_classes[0]), width

    @property
    def outputs(self) -> int:
        """The task's classes and the boundary class (the last, C)."""
        return self.num_classes + 1

    def targets(self, mask: torch.Tensor, instances: torch.Tensor) -> torch.Tensor:
        """The batch's classes (B, H, W) with the band of its thing instances (:func:`boundary_band` of
        ``instances``, (B, H, W)) as the boundary class; ignored pixels stay ignored."""
        band = boundary_band(instances, self.width) & (mask == self.thing)
        return torch.where(band, self.num_classes, mask)

    def __call__(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted classes with the boundary class (B, H, W) -> (semantic, instances) (B, H, W) int64:
        boundary pixels become the thing class, and the instance of the interior they are grown from."""
        boundary = labels == self.num_classes
        grown = grow_seeds(label_regions(labels == self.thing), boundary)
        alone = label_regions(boundary & (grown == 0))  # boundary no interior reaches: objects of their own
        offset = grown.flatten(1).amax(1).view(-1, 1, 1)
        instances = torch.where(alone > 0, alone + offset, grown)
        return torch.where(boundary, self.thing, labels), instances


def instance_rule(name: str | None, num_classes: int, thing_classes: list[int], width: int
                  ) -> Components | Interiors | None:
    """The rule ``DenseConfig.instances`` names (None: a semantic model, no instances)."""
    if name is None:
        return None
    if name == "components":
        return Components(num_classes, thing_classes)
    if name == "interiors":
        return Interiors(num_classes, thing_classes, width)
    raise ValueError(f"model.instances must be one of {', '.join(RULES)}, got {name!r}")
