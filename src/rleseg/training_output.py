"""What a training run tells its user: the summaries printed before the first step and after the final
validation, the progress and TensorBoard scalars of each step, the warning about cut training sequences,
and the pictures each validation draws (patches with foreground, a token-runs picture)."""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .atomic import atomic_path
from .engine import lookup
from .experiment import ExperimentConfig
from .patch_stats import summarise, token_lengths
from .training_state import TrainingState
from .visualize import comparison_panel, tokens_picture

TOKEN_SAMPLE = 32  # training patches whose token lengths the start-up summary measures
TOKEN_SAMPLE_SECONDS = 1.0  # ... for at most about this long


def start_summary(config: ExperimentConfig, model: torch.nn.Module, train_set: Dataset, val_set: Dataset,
                  state: TrainingState, device: torch.device, world: int, run_dir: Path) -> str:
    """What a run is about to do, printed before its first step: device, precision, model size, data,
    batches, tokens per patch against ``max_seq_len`` (token models), validation, and what ends it."""
    tc, ec = config.train, config.eval
    parameters = [p.numel() for p in model.parameters()]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    per_step = tc.batch_size * tc.accumulate * world
    steps_per_epoch = len(train_set) // world // tc.batch_size / tc.accumulate
    scored = len(val_set) if ec.max_samples is None else min(len(val_set), ec.max_samples)
    when = f"every {ec.every} steps and at the end" if ec.every else "at the end"
    lines = [
        f"rleseg train: run folder {run_dir}",
        f"  device      {_device_name(device, world)}, {_precision(tc.precision, model)}",
        f"  model       {type(model).__name__} ({config.model.get('preset', 'no preset')}): {sum(parameters):,} "
        f"parameters, {trainable:,} trainable",
        f"  train data  {_describe(train_set)}: {_count(steps_per_epoch, 'step')} per epoch of {per_step} patches "
        f"(train.batch_size {tc.batch_size} x train.accumulate {tc.accumulate} x {world} process(es))",
        f"  val data    {_describe(val_set)}: {scored} patches scored {when}, best by {ec.best_metric}",
    ]
    if model.max_seq_len is not None:
        lines.append(f"  tokens      {_token_lengths(train_set, model.max_seq_len)}")
    lines.append(f"  ends        at step {state.total_steps} (now {state.step})" + (
        f" or a {tc.minutes:g}-minute budget ({state.elapsed / 60:.1f} used), whichever ends first"
        if tc.minutes else ""))
    return "\n".join(lines)


def _device_name(device: torch.device, world: int) -> str:
    name = str(device) if world == 1 else f"{world} processes on {device.type}"
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    return name


def _precision(precision: str, model: torch.nn.Module) -> str:
    weights = str(next(model.parameters()).dtype).removeprefix("torch.")
    return f"{precision} autocast, {weights} weights" if precision != "fp32" else f"{weights} ({precision})"


def _describe(dataset: Dataset) -> str:
    """"N images, M patches": a patch dataset knows both (videos: sequences and windows)."""
    if hasattr(dataset, "num_sequences"):
        return f"{_count(dataset.num_sequences(), 'sequence')}, {_count(len(dataset), 'patch')} of frame windows"
    if hasattr(dataset, "num_images"):
        return f"{_count(dataset.num_images(), 'image')}, {_count(len(dataset), 'patch')}"
    return _count(len(dataset), "sample")


def _count(number: float, noun: str) -> str:
    """"1 image", "3 images", "1.5 steps"."""
    return f"{number:g} {noun}" if number == 1 else f"{number:g} {noun}{'es' if noun.endswith('h') else 's'}"


def _token_lengths(train_set: Dataset, max_seq_len: int) -> str:
    """Tokens per training sequence (:mod:`rleseg.patch_stats`: one a patch, or per-class one a patch and
    class) of up to :data:`TOKEN_SAMPLE` patches spread over the set, measured for about
    :data:`TOKEN_SAMPLE_SECONDS`."""
    items = np.unique(np.linspace(0, len(train_set) - 1, TOKEN_SAMPLE).astype(int))
    lengths, started = [], time.perf_counter()
    for item in items.tolist():
        lengths += token_lengths(train_set, [item])
        if time.perf_counter() - started > TOKEN_SAMPLE_SECONDS:
            break
    found = summarise(lengths, 1, max_seq_len)
    verdict = "fits" if found.p99 <= max_seq_len else "is below p99: raise it ('rleseg stats --config' measures all)"
    return (f"per training sequence p50 {found.p50}, p99 {found.p99}, max {found.max} ({found.patches} sequences "
            f"sampled); model.max_seq_len {max_seq_len} {verdict}")


def end_summary(metrics: dict, config: ExperimentConfig, run_dir: Path, step: int, best: float | None) -> str:
    """The final validation's scores and where the run's files are."""
    semantic = {key: value for key, value in metrics.items() if key not in ("panoptic", "temporal")}
    means = {agg: semantic[agg]["mean_without_background"] for agg in ("pooled", "per_image")}
    scores = ", ".join(f"{name} {_score(means['pooled'].get(key))} pooled / {_score(means['per_image'].get(key))} "
                       f"per patch" for name, key in (("Dice", "dice"), ("IoU", "iou")))
    if "panoptic" in metrics:
        scores += f", PQ {_score(metrics['panoptic']['all']['pq'])}"
    lines = [f"validation at step {step}, classes without background: {scores}",
             f"  {config.eval.best_metric} {_score(lookup(metrics, config.eval.best_metric))} (best {_score(best)}); "
             f"these score patches; 'rleseg evaluate {run_dir} --out DIR' scores stitched full images"]
    files = [f"checkpoints/step_{step:07d} (last)", "best.safetensors (best score)", "metrics.json", "eval_log.jsonl",
             *(str(path.relative_to(run_dir)) for path in sorted((run_dir / "pictures").glob(f"*step_{step:07d}.png"))),
             *(["tensorboard/"] if (run_dir / "tensorboard").is_dir() else [])]
    lines.append(f"written to {run_dir}: " + ", ".join(files))
    return "\n".join(lines)


def _score(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


class ValidationPictures:
    """What a validation draws: image | truth | prediction panels of up to ``count`` patches that hold
    foreground (patches of background alone only when none does), each titled with its image and position,
    and, for a token model (``tokenizer``), the runs of one patch that has some, ground truth beside
    generated. ``colours``: the run's class colours (default the palette), as predict draws them."""

    def __init__(self, count: int, class_names: list[str], ignore_index: int, tokenizer=None,
                 colours: list[list[int]] | None = None):
        self.count, self.class_names, self.ignore_index, self.tokenizer = count, class_names, ignore_index, tokenizer
        self.colours = None if colours is None else np.asarray(colours, np.uint8)
        self.foreground: list[Image.Image] = []
        self.background: list[Image.Image] = []
        self.tokens: tuple[str, np.ndarray, np.ndarray] | None = None

    def add(self, batch: dict, predictions: np.ndarray, generated: list[np.ndarray]) -> None:
        """``engine.validate``'s ``on_batch``: keep the panels and the token runs still wanted."""
        truth = batch["mask"].numpy()
        for i in range(len(predictions)):
            has_foreground = bool(((truth[i] > 0) & (truth[i] != self.ignore_index)).any())
            panels = self.foreground if has_foreground else self.background
            if len(panels) < self.count:
                panels += list(itertools.islice(self._panels(batch, i, predictions[i]), self.count - len(panels)))
            if self.tokenizer is not None and self.tokens is None:
                self._keep_tokens(batch, i, generated[i])

    def _panels(self, batch: dict, i: int, predicted: np.ndarray) -> Iterator[Image.Image]:
        """Image | truth | prediction of patch ``i``, frame by frame for a video window."""
        image, truth = batch["image"][i].numpy(), batch["mask"][i].numpy()
        if image.ndim == 3:  # a still image; a video window has a leading frame axis
            image, truth, predicted = image[None], truth[None], predicted[None]
        title = _patch_title(batch, i)
        for t in range(len(image)):
            yield comparison_panel(image[t], truth[t], predicted[t], self.class_names,
                                   title if len(image) == 1 else f"{title}, frame {t}", colours=self.colours)

    def _keep_tokens(self, batch: dict, i: int, generated: np.ndarray) -> None:
        per_patch = len(self.tokenizer.prompts)  # token rows of a patch: one, or one per class (joined: its flat form)
        rows = range(i * per_patch, (i + 1) * per_patch)
        truth = np.concatenate([batch["tokens"][r][: int(batch["lengths"][r])].numpy() for r in rows])
        if len(self.tokenizer.decode_runs(truth, errors="ignore")):
            self.tokens = (_patch_title(batch, i), truth, generated)

    def save(self, folder: Path, step: int, writer) -> list[Path]:
        """pictures/step_N.png and, for token models, pictures/tokens_step_N.png; returns what it wrote."""
        written = []
        panels = self.foreground or self.background
        if panels:
            written.append(folder / f"step_{step:07d}.png")
            _save_pictures(panels, written[-1], writer, step)
        if self.tokens is not None:
            title, truth, generated = self.tokens
            written.append(folder / f"tokens_step_{step:07d}.png")
            picture = tokens_picture(self.tokenizer, [(f"{title}, ground truth", truth), ("generated", generated)])
            with atomic_path(written[-1]) as tmp:
                picture.save(tmp)
        return written


def _patch_title(batch: dict, i: int) -> str:
    """"<image name> at y Y, x X": where the patch lies in its (resized) image."""
    name = str(batch["name"][i]) if "name" in batch else f"patch {i}"
    if "box" not in batch:
        return name
    y0, x0 = (int(v) for v in batch["box"][i][:2])
    return f"{name} at y {y0}, x {x0}"


def _save_pictures(panels: list[Image.Image], path: Path, writer, step: int) -> None:
    width, height = max(p.width for p in panels), sum(p.height for p in panels)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    y = 0
    for panel in panels:
        sheet.paste(panel, (0, y))
        y += panel.height
    with atomic_path(path) as tmp:
        sheet.save(tmp)
    if writer is not None:
        writer.add_image("val/predictions", np.asarray(sheet), step, dataformats="HWC")


@dataclass
class TruncationCount:
    """Training sequences of this call cut at ``model.max_seq_len``: the model never learns how their masks
    end. TensorBoard gets the count of every step; the console one warning, once more than 1% were cut."""

    max_seq_len: int | None
    cut: int = 0
    sequences: int = 0
    warned: bool = False

    def add(self, cut: int, sequences: int, bar) -> None:
        self.cut, self.sequences = self.cut + cut, self.sequences + sequences
        if not self.warned and self.cut > 0.01 * self.sequences:
            self.warned = True
            bar.write(f"rleseg: warning: {self.cut} of the {self.sequences} training sequences so far "
                      f"({100 * self.cut / self.sequences:.1f}%) were cut at model.max_seq_len {self.max_seq_len}; "
                      "raise model.max_seq_len ('rleseg stats --config CONFIG' shows the token lengths)",
                      file=sys.stderr)


def report_step(bar, writer, step: int, total_steps: int, log_every: int, scalars: dict[str, float]) -> None:
    """Advance the progress display; every ``log_every`` steps write ``scalars`` to TensorBoard as train/NAME."""
    bar.total = total_steps
    bar.set_postfix(loss=f"{scalars['loss']:.3f}", lr=f"{scalars['lr']:.1e}", img_s=f"{scalars['images_per_s']:.1f}")
    bar.update(1)  # after the postfix: a log line shows this step's values
    if writer is not None and step % log_every == 0:
        for name, value in scalars.items():
            writer.add_scalar(f"train/{name}", value, step)


def tensorboard_writer(run_dir: Path, config: ExperimentConfig):
    """A TensorBoard writer into the run folder's tensorboard/, or None when ``output.tensorboard`` is off."""
    if not config.output.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tensorboard"))
