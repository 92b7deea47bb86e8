"""The ONNX export against PyTorch on trained runs: whether the label maps of the validation patches are equal,
and images (patches) per second of each on this CPU.

    python benchmarks/bench_onnx.py RUN [RUN ...] [--patches 32] [--batch 8] [--threads 2] [--repeat 3]

Each RUN is a run folder: its best.safetensors is exported with ``rleseg.onnx_export`` to a temporary folder,
and its validation patches (config.yaml's; the first ``--patches``, repeated when there are fewer) go through
both ``--batch`` at a time: rleseg's ``model.predict`` (fp32, the default decoding: greedy, under the grammar,
step by step, the refiner on) and ``rleseg.onnx_runtime``'s ``predict`` (onnxruntime, numpy decoding loop).
Both use ``--threads`` threads. Rounds alternate, the best of ``--repeat`` kept.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_draft import patches
from rleseg.models import DecodingOptions, load_checkpoint
from rleseg.onnx_export import export_onnx
from rleseg.onnx_runtime import load


def torch_maps(model, images: torch.Tensor, batch: int, refine: bool) -> list[np.ndarray]:
    return [m for first in range(0, len(images), batch) for m in predictions(model, images[first : first + batch],
                                                                             refine).masks]


def predictions(model, images: torch.Tensor, refine: bool = True):
    return model.predict(images, DecodingOptions(refine=refine))


def onnx_maps(model, images: np.ndarray, batch: int, refine: bool) -> list[np.ndarray]:
    return [m for first in range(0, len(images), batch) for m in model.predict(images[first : first + batch], refine)]


def best_seconds(model, runtime, images: torch.Tensor, batch: int, repeat: int) -> tuple[float, float]:
    """(PyTorch s, onnxruntime s) for all ``images``, the best of ``repeat`` rounds that alternate the two."""
    array = images.numpy()
    runs = (lambda: torch_maps(model, images, batch, True), lambda: onnx_maps(runtime, array, batch, True))
    best = [float("inf")] * 2
    for _ in range(repeat):
        for i, run in enumerate(runs):
            started = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - started)
    return best[0], best[1]


def equal(a: list[np.ndarray], b: list[np.ndarray]) -> int:
    return sum(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--patches", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} "
          f"thread(s); load {os.getloadavg()[0]:.2f}")
    print("| run | model | patches | tokens a patch | equal label maps | equal token-only maps | export s | "
          "PyTorch img/s | onnxruntime img/s | onnxruntime / PyTorch |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in args.runs:
        model = load_checkpoint(run / "best.safetensors", "cpu").eval()
        images, _ = patches(run, model, args.patches)
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            export_onnx(model, folder)
            exported = time.perf_counter() - started
            runtime = load(folder, args.threads)
            array = images.numpy()
            maps = [(torch_maps(model, images, args.batch, r), onnx_maps(runtime, array, args.batch, r))
                    for r in (True, False)]
            seconds = best_seconds(model, runtime, images, args.batch, args.repeat)
        kind = f"{type(model).__name__}{' + refiner' if model.refines else ''}"
        rates = [len(images) / s for s in seconds]
        tokens = np.mean([len(t) for t in predictions(model, images[: args.batch]).tokens])
        print(f"| {run.name} | {kind} | {len(images)} | {tokens:.1f} | {equal(*maps[0])} | {equal(*maps[1])} | "
              f"{exported:.1f} | {rates[0]:.1f} | {rates[1]:.1f} | {rates[1] / rates[0]:.2f}x |")


if __name__ == "__main__":
    main()
