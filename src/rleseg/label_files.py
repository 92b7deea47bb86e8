"""Label maps as files viewers open: palette PNGs of classes, instance-id PNGs or TIFFs (as StarDist and
Cellpose write), and TIFF stacks of the input's shape, axes and pixel sizes (``rleseg predict``'s outputs; the
layout is in :mod:`rleseg.predict`'s doc)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from .imageio import StackLayout
from .visualize import palette


def instance_dtype(instances: np.ndarray) -> type:
    """uint16 for instance ids below 65536, else uint32."""
    return np.uint16 if instances.max(initial=0) < 2**16 else np.uint32


def save_labels(path: Path, labels: np.ndarray, num_classes: int, colours: np.ndarray | None = None) -> None:
    """A palette PNG (the index is the class, ``colours`` or the default palette its colours), 16-bit grey
    beyond 256 classes."""
    if num_classes <= 256:
        image = Image.fromarray(labels.astype(np.uint8))
        image.putpalette((palette(num_classes) if colours is None else np.asarray(colours, np.uint8)).tobytes())
    else:
        image = Image.fromarray(labels.astype(np.uint16))
    image.save(path)


def save_instances(path: Path, instances: np.ndarray) -> Path:
    """A 16-bit grey PNG of instance ids, or a 32-bit TIFF beside it (suffix .tif) past 65535; the path written."""
    if instance_dtype(instances) == np.uint16:
        Image.fromarray(instances.astype(np.uint16)).save(path)
        return path
    path = path.with_suffix(".tif")
    tifffile.imwrite(path, instances.astype(np.uint32))
    return path


def save_label_stack(path: Path, frames: np.ndarray, layout: StackLayout) -> None:
    """(N, H, W) integer maps, one per frame in reading order -> one TIFF of the input stack's shape, axes and
    physical sizes (``layout``; see the module doc for the flavours)."""
    flavour = "ome" if layout.flavour == "imagej" and frames.dtype == np.uint32 else layout.flavour
    metadata = {"axes": layout.axes, **(layout.metadata if flavour == layout.flavour else {})}
    resolution = {} if layout.resolution is None else dict(zip(("resolution", "resolutionunit"), layout.resolution,
                                                               strict=True))
    tifffile.imwrite(path, frames.reshape(layout.shape), imagej=flavour == "imagej", ome=flavour == "ome",
                     photometric="minisblack", metadata=metadata, **resolution)
