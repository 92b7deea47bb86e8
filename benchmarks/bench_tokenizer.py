"""Encode and decode of ~20-class label maps: rleseg's tokenizer and COCO interop against pycocotools.

Run: .venv/bin/python benchmarks/bench_tokenizer.py [--repeat 7]

pycocotools does "the same job" as our tokenizer: label map -> one COCO RLE per class present
(``mask.encode`` of each class's binary mask), and back (``mask.decode`` of each RLE, painted into a
label map). We give it its fastest form we found: the label map is made Fortran-ordered once, so that
each ``label_map == c`` is already the column-major uint8 array ``mask.encode`` wants (calling
``np.asfortranarray`` per class is up to 8x slower), and decoding paints into a Fortran-ordered map.
Ours: ``Tokenizer(scheme="lac", starts="1d", order="C").encode`` (runs + tokens + EOS) and ``decode``.
Every result is checked against the input before it is timed. Times are medians over repeats.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import timeit
from collections.abc import Callable

import numpy as np
from pycocotools import mask as coco

from rleseg.tokens import Tokenizer, formats, mask_to_runs

SIZES = ((80, 80), (512, 512), (1024, 2048))
NUM_CLASSES = 20


def blobby_label_map(shape: tuple[int, int], num_classes: int, seed: int = 0, cycles: float = 3.0) -> np.ndarray:
    """Smooth random regions: each class gets a sum of three random low-frequency plane waves (up to
    ``cycles`` periods across the shorter side) and each pixel takes the class whose field is highest.
    Class 0 (background) competes like the others, so every class appears, in blobs of similar scale
    at every size (about 13 runs per row of a square map in row-major order)."""
    rng = np.random.default_rng(seed)
    height, width = shape
    y = (np.arange(height) / min(shape))[:, None].astype(np.float32)
    x = (np.arange(width) / min(shape))[None, :].astype(np.float32)
    best = np.full(shape, -np.inf, dtype=np.float32)
    label_map = np.zeros(shape, dtype=np.uint8)
    for label in range(num_classes):
        field = np.zeros(shape, dtype=np.float32)
        for _ in range(3):
            fy, fx = rng.uniform(0.5, cycles, 2) * 2 * np.pi
            py, px = rng.uniform(0, 2 * np.pi, 2)
            field += np.cos(fy * y + py) * np.cos(fx * x + px)
        higher = field > best
        best[higher] = field[higher]
        label_map[higher] = label
    return label_map


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of one call, in ms; fast calls are looped to last at least ~20 ms per sample."""
    timer = timeit.Timer(fn)
    number = 1
    while timer.timeit(number) < 0.02 and number < 10_000:
        number *= 2
    return float(np.median(timer.repeat(repeat, number)) / number * 1e3)


def pycocotools_encode(label_map_f: np.ndarray, labels: list[int]) -> dict[int, dict]:
    return {label: coco.encode((label_map_f == label).view(np.uint8)) for label in labels}


def pycocotools_decode(rles: dict[int, dict], shape: tuple[int, int]) -> np.ndarray:
    label_map = np.zeros(shape, dtype=np.uint8, order="F")
    for label, rle in rles.items():
        label_map[coco.decode(rle).view(bool)] = label
    return label_map


def bench_size(shape: tuple[int, int], repeat: int) -> dict:
    label_map = blobby_label_map(shape, NUM_CLASSES)
    labels = [int(v) for v in np.unique(label_map) if v != 0]
    tokenizer = Tokenizer(shape, NUM_CLASSES, scheme="lac")
    tokens = tokenizer.encode(label_map)
    assert np.array_equal(tokenizer.decode(tokens), label_map)
    label_map_f = np.asfortranarray(label_map)
    theirs = pycocotools_encode(label_map_f, labels)
    assert np.array_equal(pycocotools_decode(theirs, shape), label_map)
    ours = formats.label_map_to_coco_rles(label_map, NUM_CLASSES)
    assert ours == theirs, "our COCO export differs from pycocotools"
    assert np.array_equal(formats.coco_rles_to_label_map(theirs, shape), label_map)
    return {
        "size": f"{shape[0]}x{shape[1]}",
        "classes": len(labels) + 1,
        "runs": len(mask_to_runs(label_map)),
        "tokens": len(tokens),
        "encode": median_ms(lambda: tokenizer.encode(label_map), repeat),
        "decode": median_ms(lambda: tokenizer.decode(tokens), repeat),
        "coco_export": median_ms(lambda: formats.label_map_to_coco_rles(label_map, NUM_CLASSES), repeat),
        "coco_import": median_ms(lambda: formats.coco_rles_to_label_map(theirs, shape), repeat),
        "pyc_encode": median_ms(lambda: pycocotools_encode(label_map_f, labels), repeat),
        "pyc_decode": median_ms(lambda: pycocotools_decode(theirs, shape), repeat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timing samples per figure (median)")
    args = parser.parse_args()

    rows = [bench_size(shape, args.repeat) for shape in SIZES]
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, numpy {np.__version__}, pycocotools "
          f"{importlib.metadata.version('pycocotools')}; load average {load}\n")
    print("| size | classes | runs | tokens (lac) | ours encode ms | ours decode ms | pycocotools encode ms "
          "| pycocotools decode ms | encode speedup | decode speedup |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['classes']} | {r['runs']} | {r['tokens']} | {r['encode']:.3f} | "
              f"{r['decode']:.3f} | {r['pyc_encode']:.3f} | {r['pyc_decode']:.3f} | "
              f"{r['pyc_encode'] / r['encode']:.1f}x | {r['pyc_decode'] / r['decode']:.1f}x |")
    print("\nCOCO interop (rleseg.tokens.formats, byte-identical RLEs):\n")
    print("| size | ours label map -> RLEs ms | ours RLEs -> label map ms | pycocotools encode ms "
          "| pycocotools decode ms | export speedup | import speedup |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['coco_export']:.3f} | {r['coco_import']:.3f} | {r['pyc_encode']:.3f} | "
              f"{r['pyc_decode']:.3f} | {r['pyc_encode'] / r['coco_export']:.1f}x | "
              f"{r['pyc_decode'] / r['coco_import']:.1f}x |")
    met = all(r["encode"] < r["pyc_encode"] and r["decode"] < r["pyc_decode"] for r in rows)
    print(f"\nfloor (our encode and decode faster than pycocotools at every size): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
