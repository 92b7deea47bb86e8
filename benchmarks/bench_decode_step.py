"""What a decoding step of a trained token model costs, by batch size: greedy generation on B validation
patches (encoded once, not timed), scoring only the grammar's candidates against scoring every token.

A step runs the decoder on one new token per row; its cost has a fixed part (~100 small operations, paid
whatever B is) and a part per row (the decoder's matrix products, the logits over the table). ms per
row-step = step time / B: what a token costs once batches are full.

    python benchmarks/bench_decode_step.py [--runs runs/speed] [--datasets stardist-tiny,mni152-tiny]
        [--batches 1,4,16,32,64] [--threads 2] [--repeat 5]

``--runs`` holds ``NAME-token`` run folders (or links), as for bench_predict.py.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from rleseg.experiment import build_datasets, load_config
from rleseg.models import generate, load_checkpoint


def patches(run_dir: Path, model, count: int) -> torch.Tensor:
    """``count`` validation patches of the run's data (repeated when there are fewer), (B, 3, P, P)."""
    _, val = build_datasets(load_config(run_dir / "config.yaml"), model.tokenizer)
    return torch.stack([val[i % len(val)]["image"] for i in range(count)])


def timed(model, images: torch.Tensor, encoded, restricted: bool) -> tuple[float, int]:
    """(seconds, steps) of greedy generation; ``restricted`` False scores every token at every step."""
    generate.CACHED_TABLE = 0 if restricted else float("inf")
    started = time.perf_counter()
    out = model.generate(images, temperature=0, encoded=encoded)
    return time.perf_counter() - started, out.tokens.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/speed"))
    parser.add_argument("--datasets", default="stardist-tiny,mni152-tiny")
    parser.add_argument("--batches", default="1,4,16,32,64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} "
          f"thread(s); load {os.getloadavg()[0]:.2f}")
    print("| dataset | V | B | steps | scored | ms / step (median) | ms / row-step |")
    print("|---|---:|---:|---:|---|---:|---:|")
    default = generate.CACHED_TABLE
    for name in args.datasets.split(","):
        run_dir = args.runs / f"{name}-token"
        model = load_checkpoint(run_dir / "best.safetensors", "cpu").eval()
        for batch in map(int, args.batches.split(",")):
            images = patches(run_dir, model, batch)
            with torch.no_grad():
                encoded = model.encode(images)
            times: dict[str, list[float]] = {"candidates": [], "every token": []}
            for _ in range(args.repeat):  # interleaved, so that bursts of load hit both alike
                for label in times:
                    seconds, steps = timed(model, images, encoded, label == "candidates")
                    times[label].append(seconds / steps * 1e3)
            for label, per_step in times.items():
                step = statistics.median(per_step)
                print(f"| {name} | {model.tokenizer.vocab.size} | {batch} | {steps} | {label} | {step:.2f} | "
                      f"{step / batch:.3f} |", flush=True)
    generate.CACHED_TABLE = default
    print(f"load at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
