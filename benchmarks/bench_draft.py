"""Draft-and-verify decoding against step-by-step greedy on trained checkpoints: decoder passes per sequence
against tokens per sequence, tokens that differ (fp32 and bf16 autocast), how good the per-cell head's draft
is, and generation time. Hardware-independent figures first: passes and tokens.

    python benchmarks/bench_draft.py RUN [RUN ...] [--patches 64] [--batch 32] [--threads 2] [--repeat 3]

Each RUN is a run folder of a token model with the per-cell head (``model.aux_dense_weight > 0``); its
validation patches (the first ``--patches``, repeated when there are fewer) are generated greedily under the
grammar, ``--batch`` at a time, both ways. Times: rounds of the two methods alternate, best round kept.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from rleseg.experiment import build_datasets, load_config
from rleseg.inference import autocast
from rleseg.models import DecodingOptions, load_checkpoint


def patches(run_dir: Path, model, count: int) -> tuple[torch.Tensor, np.ndarray]:
    """(images (B, 3, P, P), their masks on the grid (B, h, w)) of the run's validation patches."""
    _, val = build_datasets(load_config(run_dir / "config.yaml"), model.tokenizer)
    items = [val[i % len(val)] for i in range(count)]
    return torch.stack([it["image"] for it in items]), np.stack([it["mask_small"].numpy() for it in items])


def generate(model, images: torch.Tensor, batch: int, method: str, precision: str = "fp32"):
    """(tokens per sequence, passes per sequence, the token rows, seconds) over ``images`` in batches."""
    rows, passes, lengths, started = [], [], [], time.perf_counter()
    with torch.no_grad(), autocast(images.device, precision):
        for first in range(0, len(images), batch):
            out = model.generate(images[first : first + batch], DecodingOptions(method=method))
            rows += [r[r != 0] for r in out.tokens.numpy()]
            passes += out.passes.tolist()
            lengths += (out.tokens != 0).sum(1).tolist()
    return np.array(lengths), np.array(passes), rows, time.perf_counter() - started


def differing(a: list[np.ndarray], b: list[np.ndarray]) -> int:
    """Tokens of ``b`` that differ from ``a`` at their position (a length difference counts as its tokens)."""
    return sum(int((x[: min(len(x), len(y))] != y[: min(len(x), len(y))]).sum()) + abs(len(x) - len(y))
               for x, y in zip(a, b, strict=True))


def spread(values: np.ndarray) -> str:
    return f"{values.mean():.1f} / {np.median(values):.0f} / {np.percentile(values, 90):.0f} / {values.max()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--patches", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} "
          f"thread(s); load {os.getloadavg()[0]:.2f}")
    print("| run | patches | tokens / sequence (mean / p50 / p90 / max) | passes, draft (same) | tokens a pass | "
          "differing tokens fp32, bf16 | draft = truth, = greedy (cells) | s stepwise | s draft | speed-up |")
    print("|---|---:|---|---|---:|---|---|---:|---:|---:|")
    for run in args.runs:
        model = load_checkpoint(run / "best.safetensors", "cpu").eval()
        if not model.drafts(DecodingOptions(method="draft")):
            raise SystemExit(f"{run}: no draft decoding for this model (it needs the per-cell head, one sequence "
                             "an image and no run step)")
        images, truth = patches(run, model, args.patches)
        tokens, _, stepwise_rows, _ = generate(model, images, args.batch, "stepwise")
        _, passes, draft_rows, _ = generate(model, images, args.batch, "draft")
        bf16 = [generate(model, images, args.batch, method, "bf16")[2] for method in ("stepwise", "draft")]
        with torch.no_grad():
            drafts = np.concatenate([model.cell_head.draft(model.encode(images[i : i + args.batch]).cells)
                                     for i in range(0, len(images), args.batch)])
        greedy = np.stack([model.tokenizer.decode(r, errors="strict") for r in stepwise_rows])
        known = truth < model.tokenizer.num_classes
        times = {"stepwise": [], "draft": []}
        for _ in range(args.repeat):
            for method in times:
                times[method].append(generate(model, images, args.batch, method)[3])
        slow, fast = min(times["stepwise"]), min(times["draft"])
        print(f"| {run.name} | {len(images)} | {spread(tokens)} | {spread(passes)} | {tokens.sum() / passes.sum():.1f} "
              f"| {differing(stepwise_rows, draft_rows)}, {differing(*bf16)} | {(drafts == truth)[known].mean():.3f}, "
              f"{(drafts == greedy).mean():.3f} | {slow:.2f} | {fast:.2f} | {slow / fast:.2f}x |", flush=True)
    print(f"load at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
