"""Synthetic scenes: textured shapes of several classes, with instances and, for video, motion.

Every class has a fixed appearance (base colour + stripes of a class-specific frequency and angle),
so a model can learn the classes from the pixels. Shapes (ellipses, rectangles, diamonds) are placed,
sized, rotated and moved at random; later shapes occlude earlier ones. Scenes are a pure function of
the generator state, so ``np.random.default_rng(seed)`` makes them reproducible.

Arrays: image (H, W, 3) float32 in [0, 1]; semantic (H, W) int64 in 0..C-1 (0 = background);
instances (H, W) int64, 0 = no instance, 1..n in painting order. Video adds a leading frame axis T.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import PatchDataset
from .patches import PatchConfig

_SHAPES = 3  # ellipse, rectangle, diamond


@dataclass(frozen=True)
class SyntheticConfig:
    """What a synthetic scene looks like. Sizes are in pixels of the generated image."""

    size: tuple[int, int] = (128, 128)
    num_classes: int = 3  # background included
    num_shapes: tuple[int, int] = (2, 6)  # inclusive range of shapes per scene
    radius: tuple[float, float] = (0.06, 0.22)  # half-axes as fractions of min(H, W)
    noise: float = 0.04  # std of the pixel noise
    frames: int = 1  # > 1 for video
    speed: float = 0.03  # max displacement per frame, as a fraction of min(H, W)

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes counts background and must be >= 2, got {self.num_classes}")
        low, high = self.num_shapes
        if not 0 <= low <= high:
            raise ValueError(f"num_shapes must be a range (low, high) with 0 <= low <= high, got {self.num_shapes}")
        if min(self.size) < 1 or self.frames < 1:
            raise ValueError(f"size and frames must be positive, got size={self.size}, frames={self.frames}")


def _class_appearance(num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed per-class colour (C, 3), stripe frequency (C,) in cycles/pixel and stripe angle (C,)."""
    classes = np.arange(num_classes)
    hue = (classes * 0.618034) % 1.0  # golden-ratio hues stay distinct for any class count
    phase = 2 * np.pi * (hue[:, None] + np.array([0.0, 1 / 3, 2 / 3]))
    colour = 0.5 + 0.35 * np.cos(phase)
    colour[0] = (0.45, 0.45, 0.45)
    frequency = 0.04 + 0.16 * ((classes * 0.381966) % 1.0)
    angle = np.pi * ((classes * 0.7548777) % 1.0)
    return colour.astype(np.float32), frequency.astype(np.float32), angle.astype(np.float32)


def _draw_shapes(rng: np.random.Generator, config: SyntheticConfig) -> dict[str, np.ndarray]:
    height, width = config.size
    count = int(rng.integers(config.num_shapes[0], config.num_shapes[1] + 1))
    scale = min(height, width)
    return {
        "kind": rng.integers(0, _SHAPES, count),
        "cls": rng.integers(1, config.num_classes, count),
        "centre": rng.uniform(0, 1, (count, 2)) * (height, width),
        "axes": rng.uniform(*config.radius, (count, 2)) * scale,
        "theta": rng.uniform(0, np.pi, count),
        "velocity": rng.uniform(-1, 1, (count, 2)) * config.speed * scale,
        "spin": rng.uniform(-0.05, 0.05, count),
        "gain": rng.uniform(0.85, 1.15, count).astype(np.float32),
    }


def _inside(shapes: dict[str, np.ndarray], size: tuple[int, int], t: np.ndarray) -> np.ndarray:
    """(T, K, H, W) bool: pixel inside shape k at frame t."""
    height, width = size
    centre = shapes["centre"][None] + t[:, None, None] * shapes["velocity"][None]  # (T, K, 2)
    theta = shapes["theta"][None] + t[:, None] * shapes["spin"][None]  # (T, K)
    cos = np.cos(theta).astype(np.float32)[..., None, None]
    sin = np.sin(theta).astype(np.float32)[..., None, None]
    axes = shapes["axes"].astype(np.float32)
    dy = np.arange(height, dtype=np.float32)[:, None] - centre[..., 0, None, None].astype(np.float32)
    dx = np.arange(width, dtype=np.float32)[None, :] - centre[..., 1, None, None].astype(np.float32)
    u = np.abs(cos * dx + sin * dy) / axes[None, :, 1, None, None]  # (T, K, H, W)
    v = np.abs(cos * dy - sin * dx) / axes[None, :, 0, None, None]
    kind = shapes["kind"][None, :, None, None]
    return np.where(kind == 0, u * u + v * v <= 1, np.where(kind == 1, np.maximum(u, v) <= 1, u + v <= 1))


def _render(
    rng: np.random.Generator, config: SyntheticConfig, shapes: dict[str, np.ndarray], inside: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    count = inside.shape[1]
    height, width = config.size
    covered = inside.any(axis=1)  # (T, H, W)
    top = count - 1 - np.argmax(inside[:, ::-1], axis=1) if count else np.zeros(covered.shape, np.int64)
    instances = np.where(covered, top + 1, 0).astype(np.int64)
    cls = np.concatenate(([0], shapes["cls"])).astype(np.int64)
    semantic = cls[instances]
    gain = np.concatenate(([np.float32(1.0)], shapes["gain"]))[instances]

    colour, frequency, angle = _class_appearance(config.num_classes)
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    phase = xx * np.cos(angle)[semantic] + yy * np.sin(angle)[semantic]
    stripes = 0.12 * np.sin(2 * np.pi * frequency[semantic] * phase)
    image = colour[semantic] * gain[..., None] + stripes[..., None]
    image += np.float32(config.noise) * rng.standard_normal(image.shape, dtype=np.float32)
    # Renumber the visible instances 1..n so fully occluded shapes leave no gaps.
    visible = np.bincount(instances.ravel(), minlength=count + 1) > 0
    renumber = np.zeros(count + 1, dtype=np.int64)
    renumber[visible] = np.arange(int(visible.sum())) + (0 if visible[0] else 1)
    instances = renumber[instances]
    return np.clip(image, 0, 1).astype(np.float32), semantic, instances


def synthetic_scene(
    rng: np.random.Generator, config: SyntheticConfig | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: image (H, W, 3) float32, semantic (H, W) int64, instances (H, W) int64.

    With ``config.frames > 1`` every array gains a leading frame axis T and shapes move.
    """
    config = config or SyntheticConfig()
    shapes = _draw_shapes(rng, config)
    t = np.arange(config.frames, dtype=np.float64)
    image, semantic, instances = _render(rng, config, shapes, _inside(shapes, config.size, t))
    if config.frames == 1:
        return image[0], semantic[0], instances[0]
    return image, semantic, instances


def synthetic_setup(
    tokenizer, config: SyntheticConfig | dict | None, patch: PatchConfig | None, frames: int = 1
) -> tuple[SyntheticConfig, PatchConfig]:
    """Fill what the caller left out from the tokenizer: classes = ``tokenizer.num_classes``, scenes
    one patch in size (``patch.patch_size``, or about 128 pixels when no patch is given), and a patch
    covering the whole scene. ``config`` may be a dict of SyntheticConfig fields (from YAML)."""
    if isinstance(config, SyntheticConfig):
        values = {}
    else:
        values = {key: tuple(v) if isinstance(v, list) else v for key, v in (config or {}).items()}
        side = tokenizer.mask_size[0]
        scene = patch.patch_size if patch is not None else side * max(1, 128 // side)
        values = {"num_classes": tokenizer.num_classes, "size": (scene, scene), "frames": frames, **values}
        try:
            config = SyntheticConfig(**values)
        except TypeError as error:
            raise ValueError(f"synthetic config: {error}") from None
    if patch is None:
        height, width = config.size
        if height != width:
            raise ValueError(f"give a PatchConfig for non-square scenes of size {config.size}")
        patch = PatchConfig(patch_size=height, factor=max(1, height // tokenizer.mask_size[0]))
    return config, patch


class SyntheticDataset(PatchDataset):
    """``length`` synthetic scenes; scene ``i`` is generated from ``(seed, i)``, so it never changes.

    Goes through the same patch pipeline as real data (patches, augmentation, subsampling,
    tokenization). Unless told otherwise (see :func:`synthetic_setup`) a scene is one patch and has
    the tokenizer's classes.
    """

    def __init__(
        self,
        tokenizer,
        length: int = 1000,
        config: SyntheticConfig | dict | None = None,
        patch: PatchConfig | None = None,
        seed: int = 0,
    ):
        self.config, patch = synthetic_setup(tokenizer, config, patch)
        if self.config.frames != 1:
            raise ValueError("SyntheticDataset makes still images; use SyntheticVideoDataset for frames > 1")
        if self.config.num_classes > tokenizer.num_classes:
            raise ValueError(
                f"synthetic scenes of {self.config.num_classes} classes, the tokenizer has {tokenizer.num_classes}"
            )
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.length = int(length)
        super().__init__(tokenizer, patch, seed=seed, ignore_index=255)

    def num_images(self) -> int:
        return self.length

    def image_shape(self, index: int) -> tuple[int, int]:
        return self.config.size

    def read(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        image, semantic, instances = synthetic_scene(rng, self.config)
        return {"image": image, "mask": semantic, "instances": instances, "name": f"synthetic_{index}"}
