"""The training step and the in-training validation on patches, as plain functions.

They know nothing of the tokenizer's or the model's internals: a model has ``loss(images, targets)``
(``targets``: the batch entries ``model.target_keys`` names, models/protocol.py), and validation predicts through
``rleseg.inference.predict_batch``, as inference does; batches are dicts from ``rleseg.data.Collate``.
Scoring whole images from files is ``rleseg.evaluate``'s job, not this one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from .inference import InferenceOptions, autocast, predict_batch
from .metrics import PanopticMeter, RefinementMeter, SegmentationMeter, VideoMeter
from .models import DecodingOptions
from .progress import progress
from .tokens import upsample_mask
from .typed_yaml import check_range


@dataclass
class TrainConfig:
    steps: int = 2000  # optimizer steps of the schedule
    # Wall-clock budget in minutes (> 0): the schedule is shortened to end within it. null: no budget. The
    # warm-up stays warmup_steps steps: a run warns at its start when, at the pace of its first steps, the
    # budget would end it inside the warm-up (and at its end when it did). A larger train.steps on --resume
    # of a run whose budget is spent needs more train.minutes too (refused otherwise).
    minutes: float | None = None
    batch_size: int = 16  # per process
    accumulate: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4
    backbone_lr_scale: float = 1.0  # the backbone's learning rate is lr times this
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100  # linear warm-up to lr; a run that ends inside it warns (it never trained at lr)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.05  # the schedule decays to lr times this
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    # fp32, or autocast to bf16 or fp16 (GPUs without bf16); fp16 scales the loss (torch.amp.GradScaler) so small
    # gradients do not underflow
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False  # torch.compile the loss computation
    seed: int = 0
    deterministic: bool = False  # deterministic kernels, for bit-exact resume tests

    def __post_init__(self) -> None:
        check_range(self, 1, None, "steps", "batch_size", "accumulate")
        check_range(self, 0, None, "lr", "minutes", low_open=True)
        check_range(self, 0, None, "warmup_steps", "backbone_lr_scale", "weight_decay", "grad_clip")
        check_range(self, 0, 1, "min_lr_ratio")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")


@dataclass
class EvalConfig:
    every: int = 0  # steps between evaluations; 0 = only at the end
    max_samples: int | None = 64  # validation patches per evaluation (None = all)
    batch_size: int = InferenceOptions.batch_size  # patches per generation call
    decoding: DecodingOptions = field(default_factory=DecodingOptions)  # as rleseg evaluate's and predict's
    boundary_tolerance: int = 2
    # A dotted path into the scores: metrics.json's "semantic" section (e.g. pooled.mean.iou) or panoptic.*
    best_metric: str = "pooled.mean_without_background.dice"

    def __post_init__(self) -> None:
        check_range(self, 0, None, "every", "boundary_tolerance")
        check_range(self, 1, None, "max_samples", "batch_size")


def learning_rate(step: int, total_steps: int, config: TrainConfig, time_fraction: float = 0.0) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine or linear decay to ``lr * min_lr_ratio``.

    With a wall-clock budget, ``time_fraction`` (the share of the budget used) moves the decay along when it
    is ahead of the steps, so the schedule ends on time even if the machine slows down.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    progress = min(1.0, max(progress, time_fraction))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if config.schedule == "cosine" else 1 - progress
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * decay)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms and embeddings; the backbone at its own learning rate.

    Each group carries ``lr_scale``, which :func:`set_learning_rate` multiplies into the schedule.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim >= 2 and "embed" not in name and "pos" not in name
        groups.setdefault((name.startswith("encoder.backbone."), decay), []).append(param)
    param_groups = [
        {
            "params": params,
            "weight_decay": config.weight_decay if decay else 0.0,
            "lr_scale": config.backbone_lr_scale if backbone else 1.0,
        }
        for (backbone, decay), params in sorted(groups.items())
    ]
    return torch.optim.AdamW(param_groups, lr=config.lr, betas=config.betas)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


class LossOf(nn.Module):
    """``forward(images, targets) -> loss``: what DistributedDataParallel wraps, so that the
    gradient all-reduce hooks run (DDP only prepares them inside its own forward)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, *targets: torch.Tensor) -> torch.Tensor:
        return self.model.loss(images, *targets)


def grad_scaler(config: TrainConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """The loss scaler ``train_step`` needs under fp16 autocast (it keeps its scale from step to step); None
    otherwise."""
    return torch.amp.GradScaler(device.type) if config.precision == "fp16" else None


def train_step(
    loss_of: nn.Module,
    micro_batches: list[dict],
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    device: torch.device,
    target_keys: tuple[str, ...] = ("tokens",),
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, float]:
    """One optimizer step over ``micro_batches`` (gradient accumulation). Returns (mean loss, grad norm).

    The loss targets are the batch entries ``target_keys`` names (the model's ``target_keys``: token
    sequences for token models, and the masks a refiner learns from; masks for dense ones). ``scaler``
    (:func:`grad_scaler`, fp16): the loss is scaled before the backward pass and the gradients unscaled
    before clipping; a step whose gradients overflowed is skipped and the scale lowered.

    Raises FloatingPointError on a non-finite loss, before the weights are touched.
    """
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(loss_of, "no_sync") else loss_of.no_sync()
        with sync, autocast(device, config.precision):
            targets = [batch[key].to(device) for key in target_keys]
            loss = loss_of(batch["image"].to(device), *targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()}; lower train.lr or check the data")
        share = loss / len(micro_batches)
        (share if scaler is None else scaler.scale(share)).backward()
        total += loss.item()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")
    if scaler is None:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
    else:
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        scaler.step(optimizer)  # skipped when the unscaled gradients hold inf or NaN
        scaler.update()
    return total / len(micro_batches), float(norm)


class PatchScores:
    """The metrics a validation fills: semantic scores always (per frame for video), PQ for panoptic, and
    what a boundary refiner changed (``refinement``, for models that refine)."""

    def __init__(self, task: str, num_classes: int, ignore_index: int, boundary_tolerance: int,
                 thing_classes: list[int] = (), stuff_classes: list[int] = ()):
        """PQ counts only ``thing_classes`` and ``stuff_classes``: background 0, which the panoptic
        tokenizer never encodes, is void there unless listed as stuff."""
        kind = VideoMeter if task == "video" else SegmentationMeter
        self.semantic = kind(num_classes, ignore_index=ignore_index, boundary_tolerance=boundary_tolerance)
        self.panoptic = None
        if task == "panoptic":
            self.panoptic = PanopticMeter(num_classes, list(thing_classes), list(stuff_classes),
                                          ignore_index=ignore_index)
        self.refinement = RefinementMeter()

    def update(self, predictions: list, batch: dict) -> np.ndarray:
        """Score decoded predictions of one batch at full patch resolution; returns the semantic
        predictions (B, [N,] P, P) it scored."""
        truth = batch["mask"].numpy()  # (B, [N,] P, P)
        size = truth.shape[-2:]
        semantic = [p[0] if isinstance(p, tuple) else p for p in predictions]
        factor = -(-size[0] // semantic[0].shape[-2])  # decoded masks live on the tokenizer's grid
        full = np.stack([upsample_mask(m, factor, size) for m in semantic])
        self.semantic.update(full, truth)
        if self.panoptic is not None:
            instances = np.stack([upsample_mask(p[1], factor, size) for p in predictions])
            self.panoptic.update(full, instances, truth, batch["instances"].numpy())
        return full

    def all_reduce(self) -> None:
        for meter in (self.semantic, self.panoptic, self.refinement):
            if meter is not None:
                meter.all_reduce()

    def compute(self) -> dict:
        metrics = self.semantic.compute()
        if self.panoptic is not None:
            metrics["panoptic"] = self.panoptic.compute()
        refinement = self.refinement.compute()
        if refinement is not None:
            metrics["refinement"] = refinement
        return metrics


@torch.no_grad()
def validate(model: nn.Module, batches: Iterable[dict], scores: PatchScores, config: EvalConfig,
             device: torch.device, on_batch: Callable[..., None] | None = None, show_progress: bool = False
             ) -> PatchScores:
    """Predict the patches of ``batches`` (:func:`rleseg.inference.predict_batch`) and score them at full
    patch resolution.

    Decoded masks (the tokenizer's subsampled grid) are upsampled (nearest) to the patch size, so the
    subsampling loss counts, as in the paper. ``on_batch(batch, full_res_predictions, generated_tokens)``
    is called after each batch (pictures, counters; dense models generate no tokens).
    ``show_progress``: a progress display on stderr, counting patches (:func:`rleseg.progress.progress`).
    Returns ``scores`` un-reduced: under DDP call ``all_reduce`` before ``compute``.
    """
    options = InferenceOptions(decoding=config.decoding)
    total = len(batches.dataset) if hasattr(batches, "dataset") else None
    with progress(desc="validate", unit="patch", total=total, enabled=show_progress, leave=False) as bar:
        for batch in batches:
            predicted = predict_batch(model, batch["image"].to(device), options)
            full = scores.update(predicted.masks, batch)
            if predicted.redrawn is not None:
                scores.refinement.update(predicted.redrawn, full.size)
            if on_batch is not None:
                on_batch(batch, full, predicted.tokens)
            bar.update(len(full))
    return scores


def lookup(metrics: dict, path: str) -> float:
    """``metrics["pooled"]["mean"]["dice"]`` for the path "pooled.mean.dice"; NaN when absent."""
    node = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"metric {path!r} not found (no {part!r}); see metrics.json for the names")
        node = node[part]
    return float("nan") if node is None else float(node)
