"""Learning efficiency of the token model: levers at a fixed wall-clock budget, against the dense head.

For each dataset config and each lever (a named set of config overrides, with the effect predicted before
it was measured) train for ``--minutes`` of wall clock, then report:

- steps and images seen;
- teacher-forced accuracy per token type on the validation patches (start / length / class / EOS; a
  LAC token fuses length and class and is reported as "lac", 2-D starts as "coord", run ends as "end" or,
  fused with the class, "end_class");
- pooled foreground Dice and boundary F of the full-image evaluation (:func:`rleseg.evaluate.evaluate_checkpoint`:
  sliding windows, stitched, scored at full resolution);
- the fidelity ceiling at the mask size: the validation masks subsampled and upsampled back, scored the same way;
- the dense head (lever "dense") at the same budget, trained and scored the same way.

    python benchmarks/learning_efficiency.py [--minutes 3 | --steps N] [--datasets stardist-tiny,...]
        [--levers dense,before,base] [--decodings overlap,token-only]
        [--out runs/learning_efficiency] [--threads 2] [--eval-only]

Writes ``OUT/results.json`` (after every run) and ``OUT/results.md``; ``--list`` prints the levers with
their predictions. The figures and their commands are in docs/results.md. One run per (dataset, lever): a
run folder that exists already is trained again and overwritten: give each experiment its own ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from rleseg.data.loading import collate
from rleseg.demo import subsampling_ceiling
from rleseg.evaluate import evaluate_checkpoint
from rleseg.experiment import build_datasets, build_tokenizer, load_config
from rleseg.models import load_checkpoint, resolve_checkpoint
from rleseg.tokens import EOS
from side_by_side import foreground, run_one

DATASETS = "stardist-tiny,trackastra-tiny,mni152-tiny,synthetic-tiny"
# The settings the configs shipped with before this harness: every lever below is measured against them
# (exactly the old stardist-tiny and trackastra-tiny; mni152-tiny had 1-D starts, synthetic-tiny lr 1e-3;
# all with run lengths and no refiner: the configs ship run ends and the refiner since).
BEFORE = ["tokenizer.extent=length", "model.refine_band=0", "tokenizer.starts=2d", "model.start_head=table",
          "model.aux_dense_weight=0", "train.lr=0.0005",
          "data.patch.downsample=nearest", "train.precision=fp32"]
POINTER = [*BEFORE, "tokenizer.starts=1d", "model.start_head=pointer"]
POINTER_AUX = [*POINTER, "model.aux_dense_weight=1.0"]
# name -> (overrides, the effect predicted before the first measurement)
LEVERS: dict[str, tuple[list[str], str]] = {
    "dense": (["model.architecture=dense"], "the yardstick"),
    "base": ([], "the config as shipped"),
    "before": (BEFORE, "the settings shipped before the pointer start head"),
    "1d": ([*BEFORE, "tokenizer.starts=1d"], "one start token of H*W: slower than 2-D starts (before: 0.09 vs 0.19)"),
    "no-geometry": ([*BEFORE, "model.start_geometry=false"], "learned start rows only: start accuracy drops"),
    "aux": ([*BEFORE, "model.aux_dense_weight=1.0"], "dense supervision of a pyramid the decoder does not read: small"),
    "lite0": ([*BEFORE, "model.backbone=tf_efficientnet_lite0", "model.pretrained=packaged"],
              "ImageNet features: faster start learning, fewer steps per minute"),
    "pointer": (POINTER, "start rows read the image at their cell: start accuracy well above the table's, Dice x2"),
    "pointer-aux": (POINTER_AUX, "the pointer's features learn foreground from every cell: the largest gain"),
    "pointer-aux-lite0": ([*POINTER_AUX, "model.backbone=tf_efficientnet_lite0", "model.pretrained=packaged"],
                          "pretrained features under the pointer: better boundaries, fewer steps"),
    # Optimisation and data levers, on top of the pointer with the auxiliary loss.
    "lr-2x": ([*POINTER_AUX, "train.lr=0.001"], "faster early progress; risk of instability"),
    "backbone-lr-0.3": ([*POINTER_AUX, "train.backbone_lr_scale=0.3"], "a from-scratch backbone needs its lr: worse"),
    "accumulate-2": ([*POINTER_AUX, "train.accumulate=2"], "half the steps at twice the batch: about equal"),
    "label-smoothing": ([*POINTER_AUX, "model.label_smoothing=0.1"], "softer start targets: small gain in Dice"),
    "bf16": ([*POINTER_AUX, "train.precision=bf16"], "CPU bf16 autocast: slower steps on this CPU, worse"),
    "majority": ([*POINTER_AUX, "data.patch.downsample=mode"], "a higher ceiling and smoother targets: small gain"),
}
# The levers that helped one at a time, together (what the CPU configs now ship), with and without aux.
COMBINED = ["train.lr=0.001", "data.patch.downsample=mode", "train.precision=bf16"]
LEVERS.update({
    "combined": ([*POINTER_AUX, *COMBINED], "pointer + aux + lr 1e-3 + majority + bf16: the best of each"),
    "combined-no-aux": ([*POINTER, *COMBINED], "the auxiliary loss did not help alone: about equal"),
})
# Output beyond the mask grid (issue 16, lever 1), on the config as shipped: score with --decodings token-only
# to get the token-only figure of the same checkpoint beside the refined one.
LEVERS.update({
    "refine": (["model.refine_band=1"],
               "token-only Dice about as base (the refiner's loss also trains the pyramid); refined +0.03 to "
               "+0.05 over token-only: the sub-cell boundary error (1 - ceiling 0.918) is mostly within a "
               "cell of the decoded boundary, but token errors larger than a cell stay"),
    "refine-2": (["model.refine_band=2"],
                 "a wider band fixes boundaries off by two cells too, but lets the refiner err farther: "
                 "about as band 1"),
})
# Long multi-class sequences (issue 16, lever 6), on the config as shipped: one binary sequence per foreground
# class after its class's prompt, the C-1 rows of an image decoded as one batch.
LEVERS.update({
    "per-class": (["tokenizer.scheme=per_class", "tokenizer.extent=length", "model.refine_band=0"],
                  "mni152-tiny: sequences a third as long and no class/lac token to get right, so start and EOS "
                  "accuracy up and fg Dice well above base (0.241), still far below dense (0.903): 0.35-0.5; "
                  "steps about as fast (1.05x measured under contention: the backbone dominates); on 2-class "
                  "data it equals binary"),
})
# Run ends as pointers (issue 16, lever 3), on the config as shipped (refined where it ships the refiner).
LEVERS.update({
    "end": (["tokenizer.extent=end"],
            "a run's end chosen by pointing at its last cell (the image's features there) instead of a length "
            "from a 32-way table: end accuracy above the length accuracy (stardist 0.615 at 10 min), fewer "
            "runs ended early, token-only Dice +0.03 to +0.06; a step a little slower (the output has S more "
            "rows); on mni152 the fused end-and-class token (1728 rows) above the lac accuracy 0.26"),
})
# The refiner on a quarter of each batch (model.refine_batch): a token step 0.77 -> 0.58 s on stardist-tiny.
LEVERS.update({
    "refine-b4": (["model.refine_band=1", "model.refine_batch=4"],
                  "a third more token steps in the budget, the refiner as good from 4 images a step: refined "
                  "Dice +0.01 (10 min stardist, refine: 0.896 mean of 3 seeds)"),
    "end-b4": (["tokenizer.extent=end", "model.refine_batch=4"],
               "the end lever with the cheaper refiner: the gains of both"),
    "lengths": (["tokenizer.extent=length"],
                "the shipped config with run lengths instead of ends: the comparison for lever 3 where the "
                "configs ship ends"),
    "end-refine": (["tokenizer.extent=end", "model.refine_band=1", "model.refine_batch=4"],
                   "mni152-tiny: the ends' tokens reach 0.94 of the grid's ceiling (0.768 of 0.815), so the band "
                   "now lies along nearly right boundaries: refined above the ceiling, about 0.85 of dense"),
})
# Parallel band sequences (issue 16, lever 6 for speed): predicted before it was run.
LEVERS.update({
    "bands4": (["tokenizer.bands=4"],
               "stardist: the longest band of a batch has a third of the tokens of a whole patch (99 -> 33 on the "
               "ground truth of 16 validation patches), so about 2x faster full-image prediction; Dice within 0.02 "
               "of base: each band's sequence still reads the whole image, and a run cut at a band edge is one more "
               "run; a training step about as fast (the same tokens in 4x the rows). mni152: the longest band "
               "81 of 267 tokens, about 2.5x faster prediction; Dice down 0.02-0.05 (a tissue boundary crossing "
               "a band edge is written twice). synthetic (16x16 grid, 4 lines a band): Dice as base"),
})
# One decoder step per run (issue 16, speed): predicted before it was run.
LEVERS.update({
    "runstep": (["model.run_step=true"],
                "stardist: 10-25% more training steps in the budget (half the decoder positions; the encoder and "
                "refiner unchanged); end accuracy down 0.02-0.05 (the end head does not cross-attend to the image "
                "after the start is chosen, it reads the start's row), token-only Dice within 0.03 of base, refined "
                "within 0.01; full-image prediction 1.4-1.6x faster. mni152: end_class accuracy down up to 0.05, Dice "
                "within 0.03; prediction 1.6-1.8x faster (sequential decoding is 80% of its time). trackastra, "
                "synthetic: as stardist"),
})
TOKEN_TYPES = ("start", "coord", "length", "class", "lac", "end", "end_class")
# Decoding levers, scored on the same checkpoint: name -> inference options (patch-size dependent ones filled in).
# EOS by mass, beam search and best-of-N were levers here; they measured no help and were retired (docs/results.md).
DECODINGS = ("overlap", "token-only")


def decoding_options(name: str, patch_size: int) -> dict:
    if name == "overlap":  # windows at half the patch: every pixel is predicted 4 times (context), then voted
        return {"stride": patch_size // 2}
    return {"refine": False}  # token-only: a refined model's decoded masks, upsampled nearest


@torch.no_grad()
def teacher_forced_accuracy(model, samples: list[dict], batch_size: int = 16) -> dict[str, float]:
    """Share of target tokens the model's argmax gets right given the true prefix, per token type."""
    vocab, hits, counts = model.tokenizer.vocab, {}, {}
    model.eval()
    for first in range(0, len(samples), batch_size):
        batch = collate(samples[first : first + batch_size])
        targets = batch["tokens"][:, : model.config.max_seq_len]  # as training truncates them
        first = model.first_tokens(len(targets))[:, None]  # BOS, or per-class rows' prompts
        predicted = model(batch["image"], torch.cat([first, targets[:, :-1]], dim=1)).argmax(-1).numpy()
        targets = targets.numpy()
        kinds = vocab.kind(targets)
        for name in (*TOKEN_TYPES, "eos"):
            where = targets == EOS if name == "eos" else (
                kinds == list(vocab.ranges).index(name) if name in vocab.ranges else np.zeros_like(targets, bool))
            hits[name] = hits.get(name, 0) + int((predicted[where] == targets[where]).sum())
            counts[name] = counts.get(name, 0) + int(where.sum())
    return {name: hits[name] / counts[name] for name in hits if counts[name]}


def measure(dataset: str, lever: str, args) -> dict:
    overrides, prediction = LEVERS[lever]
    overrides = [*overrides, f"train.seed={args.seed}"]
    record = run_one(dataset, lever, overrides, args.minutes, args.out, args.eval_only, pictures=2, steps=args.steps)
    record["prediction"] = prediction
    config = load_config(dataset, overrides)
    _, val = build_datasets(config, build_tokenizer(config))
    # The fidelity ceiling of this lever's mask size and downsampling, on the full validation images.
    ceiling = subsampling_ceiling((np.asarray(val.read(i)["mask"]) for i in range(val.num_images())), config)
    record["ceiling"] = ceiling["pooled"]["mean_without_background"]
    if lever != "dense":
        model = load_checkpoint(resolve_checkpoint(record["run_dir"]))
        record["teacher_forced"] = teacher_forced_accuracy(model, [val[i] for i in range(min(len(val), 64))])
        record["decodings"] = {}
        for name in filter(None, args.decodings.split(",")):
            options = decoding_options(name, config.data.patch.patch_size)
            started = time.perf_counter()
            results = evaluate_checkpoint(record["run_dir"], args.out / f"eval-{dataset}-{lever}-{name}", split="val",
                                          options=options, pictures=1, overwrite=True, progress=False)
            record["decodings"][name] = {**results["semantic"]["pooled"]["mean_without_background"],
                                         "seconds": time.perf_counter() - started,
                                         "tokens": results["generation"].get("tokens")}
    return record


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(records: list[dict]) -> str:
    lines = ["| dataset | lever | steps | load | start acc | length/lac/end acc | class acc | EOS acc | fg Dice | "
             "boundary F | ceiling Dice | Dice / ceiling | Dice / dense |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    dense = {r["dataset"]: foreground(r, "pooled", "dice") for r in records if r["run"] == "dense"}
    for r in records:
        acc = r.get("teacher_forced", {})
        start = next((acc[k] for k in ("start", "coord") if k in acc), None)
        length = next((acc[k] for k in ("lac", "length", "end_class", "end") if k in acc), None)
        dice, ceiling = foreground(r, "pooled", "dice"), r["ceiling"]["dice"]
        versus = dense.get(r["dataset"])
        lines.append(
            f"| {r['dataset']} | {r['run']} | {r['steps']} | {r['load_before'][0]:.1f}-{r['load_after'][0]:.1f} | "
            f"{_f(start)} | {_f(length)} | {_f(acc.get('class'))} | {_f(acc.get('eos'))} | {_f(dice)} | "
            f"{_f(foreground(r, 'pooled', 'boundary_f'))} | {_f(ceiling)} | {_f(dice / ceiling)} | "
            f"{_f(dice / versus if versus else None)} |")
    return "\n".join(lines)


def decodings_markdown(records: list[dict]) -> str:
    rows = [(r, name, scores) for r in records for name, scores in r.get("decodings", {}).items()]
    if not rows:
        return ""
    lines = ["", "", "| dataset | lever | decoding | fg Dice | boundary F | greedy fg Dice | tokens | eval s |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r, name, scores in rows:
        seconds = scores.get("seconds")
        lines.append(f"| {r['dataset']} | {r['run']} | {name} | {_f(scores['dice'])} | {_f(scores['boundary_f'])} | "
                     f"{_f(foreground(r, 'pooled', 'dice'))} | {scores.get('tokens', '-')} | "
                     f"{'-' if seconds is None else f'{seconds:.1f}'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=None,
                        help="a step budget per run instead of --minutes (for a contended machine)")
    parser.add_argument("--datasets", default=DATASETS)
    parser.add_argument("--levers", default="dense,before,base")
    parser.add_argument("--out", type=Path, default=Path("runs/learning_efficiency"))
    parser.add_argument("--decodings", default="",
                        help=f"also score each token checkpoint with these decodings: {','.join(DECODINGS)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="train.seed of every run (data order, initialisation)")
    parser.add_argument("--eval-only", action="store_true", help="re-score run folders already under --out")
    parser.add_argument("--list", action="store_true", help="print the levers and their predictions, then exit")
    args = parser.parse_args()
    if args.list:
        for name, (overrides, prediction) in LEVERS.items():
            print(f"{name}: {' '.join(overrides) or '(none)'}\n    predicted: {prediction}")
        return
    unknown = [lever for lever in args.levers.split(",") if lever not in LEVERS]
    unknown += [name for name in filter(None, args.decodings.split(","))
                if name not in DECODINGS]
    if unknown:
        parser.error(f"unknown levers or decodings {unknown}; --list shows the levers")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; " + (f"{args.steps} steps" if args.steps else f"{args.minutes} min")
          + " per run", flush=True)
    datasets = args.datasets.split(",")
    records, path = [], args.out / "results.json"
    for dataset in datasets:
        for lever in args.levers.split(","):
            started = time.perf_counter()
            records.append(measure(dataset, lever, args))
            path.write_text(json.dumps(records, indent=1, default=str))
            print(f"{dataset} {lever}: fg Dice {_f(foreground(records[-1], 'pooled', 'dice'))}, "
                  f"{records[-1]['steps']} steps, {time.perf_counter() - started:.0f} s", flush=True)
    text = markdown(records) + decodings_markdown(records)
    (args.out / "results.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
