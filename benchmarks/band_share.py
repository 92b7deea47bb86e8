"""How much of a patch the boundary refiner may redraw, and how much it does, for trained run folders.

On the validation patches of each run (up to ``--patches``): the share of pixels inside the refiner's band
(within ``refine_band`` mask cells of a class boundary of the decoded mask: the only pixels it may change),
the same share for the ground truth's own grid mask, and the share of pixels the refined output changes
against the decoded mask upsampled (nearest). A band that covers most of a patch makes the refiner decide
most pixels, whatever the tokens said: the figure that tells a boundary refinement from a dense head.

    python benchmarks/band_share.py RUN [RUN ...] [--patches 64] [--threads 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from rleseg.data.loading import collate
from rleseg.experiment import build_datasets, load_config
from rleseg.inference import InferenceOptions, predict_batch
from rleseg.models import load_checkpoint, resolve_checkpoint
from rleseg.models.pyramid import on_grid
from rleseg.models.refine import upsample_nearest


def shares(run: Path, patches: int) -> dict:
    model = load_checkpoint(resolve_checkpoint(run), "cpu").eval()
    if model.refiner is None:
        raise SystemExit(f"{run}: the model has no refiner (refine_band 0)")
    config = load_config(run / "config.yaml")
    _, val = build_datasets(config, model.tokenizer)
    batch = collate([val[i] for i in range(min(patches, len(val)))])
    images, factor = batch["image"], config.data.patch.factor
    token_only = InferenceOptions.from_fields(refine=False)
    coarse = torch.from_numpy(np.stack(predict_batch(model, images, token_only).masks)).long()
    with torch.no_grad():  # the same decoded masks refined: no second generation
        refined = model.refiner.labels(images, on_grid(model.encode(images).cells, model.tokenizer), coarse)
    truth = batch["mask_small"].clamp(0, model.tokenizer.num_classes - 1).long()
    return {
        "run": str(run), "patches": len(images), "band": model.refiner.band,
        "band share, decoded": model.refiner.band_pixels(coarse, factor).float().mean().item(),
        "band share, truth": model.refiner.band_pixels(truth, factor).float().mean().item(),
        "changed share": (refined != upsample_nearest(coarse, factor)).float().mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--patches", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| run | patches | band | band share, decoded | band share, truth | changed share |")
    print("|---|---:|---:|---:|---:|---:|")
    for run in args.runs:
        r = shares(run, args.patches)
        print(f"| {r['run']} | {r['patches']} | {r['band']} | {r['band share, decoded']:.3f} | "
              f"{r['band share, truth']:.3f} | {r['changed share']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
