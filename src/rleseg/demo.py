"""``rleseg demo``: the main job on a fresh machine with no data and no GPU.

Generates the synthetic dataset, trains the tiny token model for a bounded time, evaluates it with real
autoregressive generation, and writes a run folder with the checkpoint, metrics, a markdown report and
pictures of predictions and of their token sequences.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Subset

from .atomic import write_text
from .data import Collate
from .engine import lookup, validate
from .experiment import build_datasets, build_patch_scores, build_tokenizer, load_config
from .inference import predict_batch
from .metrics import SegmentationMeter
from .tokens import downsample_mask, upsample_mask
from .train import TrainResult, train
from .visualize import tokens_picture

CONFIG = Path(__file__).with_name("configs") / "synthetic-tiny.yaml"
FOREGROUND_DICE = "pooled.mean_without_background.dice"


def run_demo(minutes: float, out: Path, overrides: list[str] = (), overwrite: bool = False) -> TrainResult:
    """Train and evaluate the demo model into ``out`` (its report: ``out/report.md``); returns the training's
    result (``interrupted`` when a signal stopped it: no report then).

    An earlier demo in ``out`` (it has a report.md) is replaced; any other run only with ``overwrite``."""
    config = load_config(CONFIG, [f"output.dir={out}", f"train.minutes={minutes}", *overrides])
    print(f"rleseg demo: training the '{config.model.get('preset')}' token model on generated shapes for at most "
          f"{minutes:g} min ({config.data.num_classes} classes, {config.data.patch.patch_size}px patches, "
          f"{config.data.patch.mask_size[0]}x{config.data.patch.mask_size[1]} masks, {config.tokenizer.scheme} tokens)")
    result = train(config, overwrite=overwrite or (out / "report.md").is_file())
    if result.interrupted:
        return result
    tokenizer = build_tokenizer(config)
    _, val = build_datasets(config, tokenizer)
    count = min(len(val), config.eval.max_samples or len(val))
    samples = [val[i] for i in range(count)]
    ceiling = subsampling_ceiling((sample["mask"].numpy() for sample in samples), config)
    background = _all_background(samples, config)
    token_only = _token_only_scores(result.model, val, count, config)
    _token_picture(result.model, samples[0], config, out / "tokens.png")
    report = _write_report(out, config, result, ceiling, background, count, token_only)
    print(f"\nvalidation foreground Dice {lookup(result.metrics, FOREGROUND_DICE):.3f}"
          + ("" if token_only is None else f", token-only {lookup(token_only, FOREGROUND_DICE):.3f}")
          + f" (all-background prediction: {lookup(background, FOREGROUND_DICE):.3f}; "
          f"subsampling ceiling: {lookup(ceiling, FOREGROUND_DICE):.3f})")
    print(f"report: {report}\ncheckpoint: {out / 'best.safetensors'}")
    print(f"pictures: {out / 'pictures'}, {out / 'tokens.png'}")
    return result


def _token_only_scores(model, val, count: int, config) -> dict | None:
    """The validation scores of the decoded masks alone (upsampled, nearest) when the model has a refiner:
    the demo reports both, so that what the tokens do and what the refiner adds are told apart."""
    if not model.refines:
        return None
    loader = DataLoader(Subset(val, range(count)), config.eval.batch_size, collate_fn=Collate(model.max_seq_len))
    token_only = dataclasses.replace(config.eval, decoding=dataclasses.replace(config.eval.decoding, refine=False))
    scores = validate(model, loader, build_patch_scores(config, model.tokenizer), token_only,
                      next(model.parameters()).device)
    return scores.compute()


def _meter(config) -> SegmentationMeter:
    return SegmentationMeter(config.data.num_classes, ignore_index=config.data.ignore_index,
                             boundary_tolerance=config.eval.boundary_tolerance)


def subsampling_ceiling(masks: Iterable[np.ndarray], config) -> dict:
    """Scores of a perfect token model: the ground-truth label maps subsampled as ``config.data.patch``
    says, then upsampled back (SegmentationMeter.compute() of them)."""
    meter, factor = _meter(config), config.data.patch.factor
    for mask in masks:
        small = downsample_mask(mask, factor, config.data.patch.downsample)
        meter.update(upsample_mask(small, factor, mask.shape)[None], mask[None])
    return meter.compute()


def _all_background(samples: list[dict], config) -> dict:
    meter = _meter(config)
    for sample in samples:
        mask = sample["mask"].numpy()
        meter.update(np.zeros_like(mask)[None], mask[None])
    return meter.compute()


def _token_picture(model, sample: dict, config, path: Path) -> None:
    """Ground-truth runs | generated runs (greedy, constrained) of one validation sample, each run a bar on
    the mask grid."""
    truth = np.where(sample["mask_small"].numpy() == config.data.ignore_index, 0, sample["mask_small"].numpy())
    generated = predict_batch(model, sample["image"][None]).tokens[0]
    panels = [("ground truth", model.tokenizer.encode(truth)), ("generated", generated)]
    tokens_picture(model.tokenizer, panels).save(path)


def _class_table(metrics: dict, names: list[str]) -> list[str]:
    pooled, per_image = metrics["pooled"]["per_class"], metrics["per_image"]["per_class"]
    rows = ["| class | Dice (pooled) | IoU (pooled) | precision | recall | Dice (per image) | boundary F |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for c, name in enumerate(names):
        cells = [pooled["dice"][c], pooled["iou"][c], pooled["precision"][c], pooled["recall"][c],
                 per_image["dice"][c], pooled["boundary_f"][c]]
        rows.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
    return rows


def _write_report(out: Path, config, result, ceiling: dict, background: dict, count: int, token_only: dict | None
                  ) -> Path:
    dice = lookup(result.metrics, FOREGROUND_DICE)
    pictures = sorted((out / "pictures").glob("step_*.png"))
    lines = [
        "# rleseg demo",
        "",
        f"A `{config.model.get('preset')}` Pix2Seq token model trained for {result.step} steps on generated "
        f"textured shapes ({config.data.num_classes} classes), then evaluated on {count} held-out patches with "
        "greedy, grammar-constrained generation. Masks are "
        f"{config.data.patch.mask_size[0]}x{config.data.patch.mask_size[1]} ({config.data.patch.patch_size}px "
        f"patches subsampled by {config.data.patch.factor}), tokenized with the `{config.tokenizer.scheme}` scheme "
        f"and {config.tokenizer.starts} starts"
        + (", runs written as their start and last cell (the pointer head chooses both from the image)"
           if config.tokenizer.extent == "end" else "")
        + "; predictions are scored at full resolution: "
        + ("decoded masks upsampled (nearest), then redrawn by the boundary refiner within "
           f"{result.model.config.refine_band} mask cell(s) of their class boundaries." if token_only is not None
           else "decoded masks upsampled (nearest)."),
        "",
        "| | foreground Dice (pooled) |",
        "|---|---:|",
        f"| this model | **{dice:.3f}** |",
        *([] if token_only is None else [
            f"| its decoded tokens alone (no boundary refinement: `--token-only`) | "
            f"{lookup(token_only, FOREGROUND_DICE):.3f} |"]),
        f"| all-background prediction | {lookup(background, FOREGROUND_DICE):.3f} |",
        "| ceiling of the tokens alone (perfect tokens, subsampling loss only) | "
        f"{lookup(ceiling, FOREGROUND_DICE):.3f} |",
        "",
        "## Per class",
        "",
        *_class_table(result.metrics, config.class_names()),
        "",
        "Pooled: TP/FP/FN summed over all patches first (as MMSegmentation reports mIoU/mDice). Per image: the "
        "paper's protocol, averaged over the patches where the class is present. All figures are in metrics.json.",
        "",
        "## Pictures",
        "",
        *(f"![predictions]({p.relative_to(out)})" for p in pictures[-1:]),
        "",
        "Token runs of the first validation patch, ground truth (left) and prediction (right): each bar is one "
        "run, the dot its start token.",
        "",
        "![tokens](tokens.png)",
        "",
        "## Next",
        "",
        "```bash",
        f"rleseg predict {out / 'best.safetensors'} IMAGE.png --out predictions/",
        f"rleseg evaluate {out} --out evaluation/",
        f"rleseg train --resume {out}   # continue an interrupted demo",
        "```",
    ]
    path = out / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path
