"""Token model vs dense head at the same wall-clock budget, scored by the same full-image evaluation.

For each dataset config: train the token model as the config ships it (LAC, constrained greedy decoding)
and the dense head (``model.architecture=dense``: same backbone, data and patches) for ``--minutes`` each, one
after the other, then evaluate both on the validation split with :func:`rleseg.evaluate.evaluate_checkpoint`
(full images, sliding windows, stitched, scored at full resolution). Writes ``OUT/results.json`` and
``OUT/results.md`` and prints the markdown.

    python benchmarks/side_by_side.py [--minutes 3] [--datasets stardist-tiny,...] [--out runs/side_by_side]
        [--extra stardist-tiny:2d:tokenizer.starts=2d] [--eval-only] [--threads 1]

``--extra NAME:LABEL:OVERRIDE[,OVERRIDE]`` adds one more token run of a dataset with overrides (a lever).
``--eval-only`` re-evaluates run folders already trained under OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from rleseg.evaluate import evaluate_checkpoint
from rleseg.experiment import load_config
from rleseg.train import train

DEFAULT = "stardist-tiny,trackastra-tiny,mni152-tiny,synthetic-tiny"
SCORES = ("dice", "iou", "precision", "recall", "boundary_f")


def run_one(name: str, label: str, overrides: list[str], minutes: float, out: Path, eval_only: bool,
            pictures: int, steps: int | None = None) -> dict:
    run_dir = out / f"{name}-{label}"
    # A huge step count makes the wall-clock budget the only limit (the schedule is refitted to it);
    # ``steps`` instead: a step budget, for machines too contended for wall-clock comparisons.
    limit = [f"train.steps={steps}"] if steps else [f"train.minutes={minutes}", "train.steps=1000000"]
    budget = [*limit, "eval.every=0", f"output.dir={run_dir}", "output.save_every=1000000"]
    record: dict = {"dataset": name, "run": label, "overrides": overrides, "run_dir": str(run_dir)}
    if not eval_only:
        config = load_config(name, [*overrides, *budget])
        load_before = os.getloadavg()
        started = time.perf_counter()
        result = train(config, run_dir, overwrite=True)
        seconds = time.perf_counter() - started
        record.update(steps=result.step, batch_size=config.train.batch_size,
                      images_seen=result.step * config.train.batch_size * config.train.accumulate,
                      train_minutes=seconds / 60, load_before=load_before, load_after=os.getloadavg(),
                      patch_metrics=result.metrics)
        (run_dir / "side_by_side.json").write_text(json.dumps(record, indent=1, default=str))
    else:
        record = json.loads((run_dir / "side_by_side.json").read_text())
    evaluation = out / f"eval-{name}-{label}"
    started = time.perf_counter()
    results = evaluate_checkpoint(run_dir, evaluation, split="val", pictures=pictures, overwrite=True,
                                  progress=False)
    record["eval_seconds"] = time.perf_counter() - started
    record["eval_dir"] = str(evaluation)
    record["evaluation"] = {k: results.get(k, {}) for k in ("class_names", "num_images", "semantic", "generation",
                                                            "settings")}  # dense runs: no generation
    return record


def foreground(record: dict, aggregation: str, score: str) -> float | None:
    return record["evaluation"]["semantic"][aggregation]["mean_without_background"].get(score)


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(records: list[dict]) -> str:
    lines = ["| dataset | run | steps | images seen | train min | load (1 min) | val images | fg Dice pooled | "
             "fg IoU pooled | fg Dice per image | boundary F pooled | invalid runs | truncated |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        gen = {"invalid_runs": "-", "truncated": "-", **r["evaluation"]["generation"]}  # dense: no tokens
        lines.append(f"| {r['dataset']} | {r['run']} | {r['steps']} | {r['images_seen']} | {r['train_minutes']:.2f} | "
                     f"{r['load_before'][0]:.2f}-{r['load_after'][0]:.2f} | {r['evaluation']['num_images']} | "
                     f"{_f(foreground(r, 'pooled', 'dice'))} | {_f(foreground(r, 'pooled', 'iou'))} | "
                     f"{_f(foreground(r, 'per_image', 'dice'))} | {_f(foreground(r, 'pooled', 'boundary_f'))} | "
                     f"{gen['invalid_runs']} | {gen['truncated']} |")
    lines += ["", "Per class (pooled / per image):", "",
              "| dataset | run | class | " + " | ".join(f"{s} pooled" for s in SCORES) + " | "
              + " | ".join(f"{s} image" for s in SCORES) + " |",
              "|---|---|---|" + "---:|" * (2 * len(SCORES))]
    for r in records:
        sem = r["evaluation"]["semantic"]
        for c, cname in enumerate(r["evaluation"]["class_names"]):
            pooled = [_f(sem["pooled"]["per_class"].get(s, [None] * (c + 1))[c]) for s in SCORES]
            image = [_f(sem["per_image"]["per_class"].get(s, [None] * (c + 1))[c]) for s in SCORES]
            lines.append(f"| {r['dataset']} | {r['run']} | {cname} | " + " | ".join(pooled + image) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=DEFAULT)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=Path("runs/side_by_side"))
    parser.add_argument("--extra", action="append", default=[], help="NAME:LABEL:OVERRIDE[,OVERRIDE]")
    parser.add_argument("--eval-only", action="store_true")
    parser.add_argument("--pictures", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 on a shared CPU (OpenMP threads waiting on each other stall steps)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for name in filter(None, args.datasets.split(",")):  # --datasets "": only the --extra runs
        jobs += [(name, "token", []), (name, "dense", ["model.architecture=dense"])]
    for extra in args.extra:
        name, label, overrides = extra.split(":", 2)
        jobs.append((name, label, overrides.split(",")))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.minutes} min per run")
    records = []
    path = args.out / "results.json"
    for name, label, overrides in jobs:
        record = run_one(name, label, overrides, args.minutes, args.out, args.eval_only, args.pictures)
        records.append(record)
        path.write_text(json.dumps(records, indent=1, default=str))  # after every run: partial results survive
        print(f"{name} {label}: fg Dice pooled {_f(foreground(record, 'pooled', 'dice'))}, "
              f"{record['steps']} steps", flush=True)
    text = markdown(records)
    (args.out / "results.md").write_text(text + "\n")
    print(text)
    if shutil.which("uptime"):
        os.system("uptime")  # the load at the end, for the record


if __name__ == "__main__":
    main()
