"""Write the bundled example label masks of ``rleseg demo`` into src/rleseg/examples/ (deterministic).

    python benchmarks/make_examples.py [OUT_DIR]

- blobs_3class_160.png: 160x160, 3 classes (background + two kinds of overlapping ellipses), grayscale.
- nuclei_binary_128.png: 128x128, 2 classes, ~40 small round nuclei, some touching, grayscale 0/1.
- scene_20class_256.png: 256x256, 20 classes, a street-like scene (sky, buildings with windows, road with
  lane marks, cars, thin poles and wires), grayscale.
- cells_palette_96.png: 96x96, 4 classes, palette PNG (indices 0..3 with a VOC-like colour palette):
  cells with a one-pixel membrane class and nuclei, the thin structure subsampling loses first.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float, angle: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cos, sin = np.cos(angle), np.sin(angle)
    u = ((yy - cy) * cos + (xx - cx) * sin) / ry
    v = (-(yy - cy) * sin + (xx - cx) * cos) / rx
    return u**2 + v**2 <= 1.0


def blobs(rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((160, 160), np.uint8)
    for label in (1, 2, 1, 2, 1, 2):
        cy, cx = rng.uniform(25, 135, size=2)
        ry, rx = rng.uniform(10, 32, size=2)
        mask[_ellipse(mask.shape, cy, cx, ry, rx, rng.uniform(0, np.pi))] = label
    return mask


def nuclei(rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((128, 128), np.uint8)
    for _ in range(40):
        cy, cx = rng.uniform(4, 124, size=2)
        radius = rng.uniform(2.5, 6.5)
        mask[_ellipse(mask.shape, cy, cx, radius, radius * rng.uniform(0.7, 1.3), rng.uniform(0, np.pi))] = 1
    return mask


def scene(rng: np.random.Generator) -> np.ndarray:
    h, w = 256, 256
    mask = np.full((h, w), 10, np.uint8)  # sky
    mask[150:, :] = 0  # unlabelled ground, background
    mask[170:, :] = 1  # road
    mask[150:170, :] = 2  # sidewalk
    x = 0
    while x < w:  # buildings of random widths and heights, with a grid of windows
        width = int(rng.integers(24, 60))
        top = int(rng.integers(30, 110))
        mask[top:150, x : x + width] = 3 + int(rng.integers(0, 2))  # building or wall
        for wy in range(top + 6, 140, 12):
            for wx in range(x + 4, min(x + width - 6, w - 6), 10):
                mask[wy : wy + 6, wx : wx + 5] = 5  # window
        x += width
    for lane_x in range(8, w, 40):
        mask[210:214, lane_x : lane_x + 20] = 6  # lane marks
    for pole_x in (40, 118, 201):
        mask[60:170, pole_x : pole_x + 2] = 7  # poles, 2 px wide
        mask[58:62, pole_x - 4 : pole_x + 6] = 8  # lamps / signs
    mask[64, :] = np.where(mask[64, :] == 10, 9, mask[64, :])  # a 1 px wire across the sky
    for i, label in enumerate(range(11, 20)):
        cy = 185 + 22 * (i % 3)
        cx = 14 + 27 * i
        mask[_ellipse(mask.shape, cy, cx, 8, 13, 0.0)] = label  # vehicles and people
    return mask


def cells_palette(rng: np.random.Generator) -> np.ndarray:
    h, w = 96, 96
    seeds = rng.uniform(0, [h, w], size=(9, 2))
    yy, xx = np.mgrid[:h, :w]
    dist = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    cell = dist.argmin(-1)
    mask = np.ones((h, w), np.uint8)  # cytoplasm
    edge = np.zeros((h, w), bool)  # one-pixel membranes between Voronoi cells
    edge[1:, :] |= cell[1:, :] != cell[:-1, :]
    edge[:, 1:] |= cell[:, 1:] != cell[:, :-1]
    mask[edge] = 2
    for cy, cx in seeds:
        mask[_ellipse((h, w), cy, cx, 5, 7, rng.uniform(0, np.pi))] = 3  # nucleus
    mask[:, :6] = 0  # background strip
    return mask


def _palette() -> list[int]:
    colours = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    flat = [v for colour in colours for v in colour]
    return flat + [0] * (768 - len(flat))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2026)
    for name, mask in (("blobs_3class_160", blobs(rng)), ("nuclei_binary_128", nuclei(rng)),
                       ("scene_20class_256", scene(rng))):
        Image.fromarray(mask, mode="L").save(out / f"{name}.png", optimize=True)
    image = Image.fromarray(cells_palette(rng), mode="P")
    image.putpalette(_palette())
    image.save(out / "cells_palette_96.png", optimize=True)
    for path in sorted(out.glob("*.png")):
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "src" / "rleseg" / "examples")
