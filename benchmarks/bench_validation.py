"""Validation time with each decoding: in-training validation (the patches ``rleseg train`` scores, as
``engine.validate`` runs them) and ``rleseg evaluate`` (full validation images, sliding windows, stitched), each
with the default decoding (draft-and-verify where the model has the per-cell head, models/draft.py) and step by
step. Both write the same tokens, so the scores must agree; the benchmark prints them to show it.

    python benchmarks/bench_validation.py RUN [RUN ...] [--threads 2] [--repeat 2] [--limit 8]

Each RUN is a token model's run folder. Rounds of the two decodings alternate; the best round is kept.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from rleseg.data import Collate
from rleseg.engine import lookup, validate
from rleseg.evaluate import evaluate_checkpoint
from rleseg.experiment import build_patch_scores, build_plain_dataset, load_config
from rleseg.models import load_checkpoint

METHODS = ("draft", "stepwise")


def patch_validation(run: Path, method: str) -> tuple[float, float]:
    """(seconds, the run's best metric: pooled Dice without background) of its in-training validation with
    ``method``."""
    config = load_config(run / "config.yaml")
    model = load_checkpoint(run / "best.safetensors", "cpu").eval()
    patches = build_plain_dataset(config, model.tokenizer, config.data.val_split)
    count = len(patches) if config.eval.max_samples is None else min(len(patches), config.eval.max_samples)
    loader = DataLoader(Subset(patches, range(count)), config.eval.batch_size, collate_fn=Collate(model.max_seq_len))
    eval_config = replace(config.eval, decoding=replace(config.eval.decoding, method=method))
    started = time.perf_counter()
    scores = validate(model, loader, build_patch_scores(config, model.tokenizer), eval_config, torch.device("cpu"))
    seconds = time.perf_counter() - started
    return seconds, lookup(scores.compute(), config.eval.best_metric)


def full_evaluation(run: Path, method: str, limit: int | None) -> tuple[float, float]:
    """(seconds, pooled Dice without background) of ``rleseg evaluate RUN --decoding method``."""
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        metrics = evaluate_checkpoint(run, out, options={"method": method}, limit=limit, pictures=0, progress=False,
                                      overwrite=True)
        seconds = time.perf_counter() - started
    return seconds, lookup(metrics, "semantic.pooled.mean_without_background.dice")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="validation images of rleseg evaluate at most")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} "
          f"thread(s); load {os.getloadavg()[0]:.2f}")
    print("| run | what | s stepwise | s default (draft) | speed-up | Dice stepwise | Dice default |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for run in args.runs:
        for what, measure in (("in-training validation (patches)", patch_validation),
                              ("rleseg evaluate (full images)",
                               lambda r, m: full_evaluation(r, m, args.limit))):
            best: dict[str, tuple[float, float]] = {}
            for _ in range(args.repeat):
                for method in METHODS:
                    seconds, dice = measure(run, method)
                    if method not in best or seconds < best[method][0]:
                        best[method] = (seconds, dice)
            (fast, fast_dice), (slow, slow_dice) = best["draft"], best["stepwise"]
            print(f"| {run.name} | {what} | {slow:.2f} | {fast:.2f} | {slow / fast:.2f}x | {slow_dice:.4f} | "
                  f"{fast_dice:.4f} |", flush=True)
    print(f"load at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
