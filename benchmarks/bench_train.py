"""Training throughput (images/s) of the shipped configs on this machine.

Times optimizer steps of each config's model on random batches of its patch size (data loading excluded:
it is measured by the data tests and runs in parallel workers), after warm-up steps.

    python benchmarks/bench_train.py [--steps 8] [--threads 2] [--configs synthetic-tiny,stardist-tiny,...]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from rleseg.engine import LossOf, build_optimizer, train_step
from rleseg.experiment import build_model, build_tokenizer, load_config

DEFAULT = "synthetic-tiny,stardist-tiny,mni152-tiny,paper-ipsc"
# The paper config at its own batch (36 per process) does not fit a useful time on 2 cores: time batch 4.
OVERRIDES = {"paper-ipsc": ["train.batch_size=4", "model.pretrained=false"]}


def throughput(name: str, steps: int, warmup: int, device: torch.device) -> dict:
    config = load_config(name, OVERRIDES.get(name, []))
    tokenizer = build_tokenizer(config)
    model = build_model(config, tokenizer).to(device)
    optimizer = build_optimizer(model, config.train)
    batch_size, size = config.train.batch_size, config.data.patch.patch_size
    length = min(model.config.max_seq_len, 128)
    generator = torch.Generator().manual_seed(0)
    vocab = tokenizer.vocab.size
    batch = {
        "image": torch.rand(batch_size, 3, size, size, generator=generator),
        "tokens": torch.randint(5, vocab, (batch_size, length), generator=generator),
    }
    loss_of = LossOf(model)
    for _ in range(warmup):
        train_step(loss_of, [batch], optimizer, config.train, device)
    started = time.perf_counter()
    for _ in range(steps):
        train_step(loss_of, [batch], optimizer, config.train, device)
    seconds = (time.perf_counter() - started) / steps
    return {
        "config": name, "preset": config.model.get("preset"), "patch": size, "batch": batch_size,
        "tokens": length, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "s_per_step": seconds, "images_per_s": batch_size / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=DEFAULT)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"# training throughput, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, device {device}, sequences of up to 128 tokens")
    print("| config | preset | patch px | batch | params (M) | s/step | images/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.configs.split(","):
        r = throughput(name, args.steps, args.warmup, device)
        print(f"| {r['config']} | {r['preset']} | {r['patch']} | {r['batch']} | {r['params_m']:.1f} | "
              f"{r['s_per_step']:.3f} | {r['images_per_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
