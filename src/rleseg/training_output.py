"""What a training run tells its user: the summaries before the first step and after the final validation,
the progress and TensorBoard scalars of each step (and metrics.csv), the warnings about cut training
sequences and about a run too short for its settings, and the pictures each validation draws."""

from __future__ import annotations

import csv
import io
import itertools
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .atomic import atomic_path, write_text
from .engine import lookup
from .experiment import ExperimentConfig
from .metrics.refinement import IDLE_SHARE
from .patch_stats import summarise, token_lengths
from .training_state import TrainingState
from .visualize import comparison_panel, tokens_picture

TOKEN_SAMPLE = 32  # training patches whose token lengths the start-up summary measures
TOKEN_SAMPLE_SECONDS = 1.0  # ... for at most about this long
WARMUP_PROBE_STEPS = 3  # steps timed after the first of a call (which pays for start-up) to foresee a budget's end
# A validation score that rose by at least this much (0.02 = two points of Dice or PQ) between the last two
# validations "still rises steeply": training as long again would likely add about as much.
STILL_RISING = 0.02


def start_summary(config: ExperimentConfig, model: torch.nn.Module, train_set: Dataset, val_set: Dataset,
                  state: TrainingState, device: torch.device, world: int, run_dir: Path,
                  init_from: Path | None = None) -> str:
    """What a run is about to do, printed before its first step: device, precision, model size, the weights
    it starts from (``init_from``: model.init_from's checkpoint), data, batches, tokens per patch against
    ``max_seq_len`` (token models), validation, and what ends it."""
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
        *([f"  weights     from {init_from} (model.init_from); a fresh optimizer and schedule"] if init_from else []),
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
    files = [f"checkpoints/step_{step:07d} (last)", "best.safetensors (best score)", "metrics.json",
             "metrics.csv (the training log)", "eval_log.jsonl",
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


@dataclass
class WarmupCheck:
    """Warns once when a run will end inside its learning-rate warm-up (so the rate never reaches train.lr):
    at once when train.steps is below train.warmup_steps; under a budget (train.minutes), when the steps the
    budget leaves at the pace of :data:`WARMUP_PROBE_STEPS` steps (timed after the first step of this call)
    end before the warm-up does. The schedule itself is left as configured."""

    steps: int  # train.steps
    warmup_steps: int
    minutes: float | None
    probe: tuple[int, float] | None = None  # (step, seconds elapsed) where the timing starts
    done: bool = False

    def observe(self, step: int, elapsed: float, bar) -> None:
        """After each step (``elapsed``: seconds of the run so far): the warning, once, on the bar's stream."""
        if self.done or step >= self.warmup_steps or (self.minutes is None and self.steps >= self.warmup_steps):
            self.done = True
            return
        if self.steps < self.warmup_steps:
            self.done = True
            self._warn(bar, f"train.steps {self.steps} ends the run", "")
            return
        if self.probe is None or step - self.probe[0] < WARMUP_PROBE_STEPS:
            self.probe = self.probe or (step, elapsed)
            return
        self.done = True
        per_step = (elapsed - self.probe[1]) / (step - self.probe[0])
        ends = step + int(max(0.0, self.minutes * 60 - elapsed) / max(per_step, 1e-9))
        if ends < min(self.steps, self.warmup_steps):
            self._warn(bar, f"at {per_step:.2f} s a step, the {self.minutes:g}-minute budget (train.minutes) ends the "
                       f"run at about step {ends}", f" (to about {max(1, ends // 10)}) or raise train.minutes")

    def _warn(self, bar, cause: str, remedy: str) -> None:
        bar.write(f"rleseg: warning: {cause}, inside its {self.warmup_steps}-step warm-up (train.warmup_steps): the "
                  f"learning rate would never reach train.lr; lower train.warmup_steps{remedy}", file=sys.stderr)


def end_warnings(config: ExperimentConfig, run_dir: Path, step: int, metrics: dict) -> list[str]:
    """What says that a finished run was too short: a learning rate that never reached train.lr (the run ended
    inside its warm-up), a validation score still rising steeply (by :data:`STILL_RISING` or more between the
    last two validations of eval_log.jsonl), a refiner that changed under :data:`IDLE_SHARE` of the final
    validation's pixels."""
    tc, warnings = config.train, []
    if step < tc.warmup_steps:  # step k trains at lr * k / warmup_steps (engine.learning_rate)
        warnings.append(f"the learning rate never reached its peak: the run ended at step {step}, inside its "
                        f"{tc.warmup_steps}-step warm-up (train.warmup_steps), at {step / tc.warmup_steps:.0%} of "
                        f"train.lr {tc.lr:g}; lower train.warmup_steps, or train longer")
    rise = _last_two_scores(run_dir / "eval_log.jsonl", config.eval.best_metric)
    if rise is not None and rise[3] - rise[1] >= STILL_RISING:
        (before, old), (after, new) = rise[:2], rise[2:]
        warnings.append(f"validation {config.eval.best_metric} was still rising steeply: {old:.3f} at step {before}, "
                        f"{new:.3f} at step {after} (+{new - old:.3f}; steeply: +{STILL_RISING:g} or more between the "
                        f"last two validations); the run is likely too short: train on with 'rleseg train --resume "
                        f"{run_dir}' and a larger train.steps (train.minutes where a budget ended it)")
    refinement = metrics.get("refinement")
    if refinement is not None and refinement["changed_share"] < IDLE_SHARE:
        warnings.append(f"the refiner (model.refine_band) changed {refinement['changed_pixels']:,} of the "
                        f"{refinement['patch_pixels']:,} validation pixels (under {100 * IDLE_SHARE:g}%): it has not "
                        "learnt to correct the token masks yet; train longer, or compare 'rleseg evaluate "
                        "--token-only'")
    return warnings


def _last_two_scores(path: Path, metric: str) -> tuple[int, float, int, float] | None:
    """(step, score, step, score) of the last two validations in eval_log.jsonl that scored ``metric`` (a
    step validated twice, by a resumed run, counts once: its last line), or None with fewer than two."""
    scores = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            entry = json.loads(line)
            scores[int(entry["step"])] = float(entry[metric])
        except (ValueError, KeyError, TypeError):
            continue  # another metric's line, or a line a kill cut short
    steps = sorted(step for step, score in scores.items() if score == score)  # NaN scores say nothing
    return None if len(steps) < 2 else (steps[-2], scores[steps[-2]], steps[-1], scores[steps[-1]])


class TrainingLog:
    """metrics.csv of a run folder, the training log in a file that any tool reads: a row every
    ``output.log_every`` steps with TensorBoard's scalars (step, elapsed_s, loss, lr, grad_norm, images_per_s,
    and truncated for token models), and the scores of each validation on its step's row: ``val_dice`` and
    ``val_iou`` (pooled over the classes without background, as the end summary), ``val_pq`` (panoptic),
    ``val_refined_share`` (models that refine). A row is appended once its step is done (a kill loses at most
    the rows after the last checkpoint); a run that resumes at step N first keeps the rows up to N only
    (rewritten atomically), so the steps it trains again are not listed twice."""

    def __init__(self, path: Path, columns: list[str], resume_step: int):
        self.path, self.columns, self.pending = Path(path), columns, None
        self._keep_until(resume_step)

    @classmethod
    def for_run(cls, run_dir: Path, task: str, model: torch.nn.Module, resume_step: int) -> TrainingLog:
        """The log of ``run_dir`` with the columns of ``model`` (a token model's, a refiner's) and ``task``."""
        columns = ["step", "elapsed_s", "loss", "lr", "grad_norm", "images_per_s",
                   *(["truncated"] if model.max_seq_len is not None else []), "val_dice", "val_iou",
                   *(["val_pq"] if task == "panoptic" else []), *(["val_refined_share"] if model.refines else [])]
        return cls(Path(run_dir) / "metrics.csv", columns, resume_step)

    def add(self, step: int, elapsed: float, scalars: dict[str, float]) -> None:
        """The training row of ``step``."""
        self.flush()
        self.pending = {"step": step, "elapsed_s": round(elapsed, 3), **scalars}

    def validation(self, step: int, metrics: dict) -> None:
        """The validation scores of ``step`` (``PatchScores.compute()``), on that step's row."""
        if self.pending is None or self.pending["step"] != step:
            self.flush()
            self.pending = {"step": step}
        means = metrics["pooled"]["mean_without_background"]
        self.pending.update(val_dice=means["dice"], val_iou=means["iou"])
        if "panoptic" in metrics:
            self.pending["val_pq"] = metrics["panoptic"]["all"]["pq"]
        if "refinement" in metrics:
            self.pending["val_refined_share"] = metrics["refinement"]["changed_share"]

    def flush(self) -> None:
        """Append the row being filled, if any."""
        if self.pending is None:
            return
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, self.columns, restval="", extrasaction="ignore")
            if handle.tell() == 0:
                writer.writeheader()
            writer.writerow(self.pending)
        self.pending = None

    def _keep_until(self, step: int) -> None:
        if not self.path.exists():
            return
        with self.path.open(newline="") as handle:
            # A line a kill cut short lacks fields (None): it is dropped with the rows past ``step``.
            rows = [row for row in csv.DictReader(handle) if None not in row.values() and row["step"].isdigit()
                    and int(row["step"]) <= step]
        text = io.StringIO()
        writer = csv.DictWriter(text, self.columns, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.path, text.getvalue())


def report_step(bar, writer, step: int, total_steps: int, log_every: int, scalars: dict[str, float],
                log: TrainingLog | None = None, elapsed: float = 0.0) -> None:
    """Advance the progress display; every ``log_every`` steps write ``scalars`` to TensorBoard as train/NAME
    and to ``log`` (metrics.csv, with ``elapsed``: seconds of the run)."""
    bar.total = total_steps
    bar.set_postfix(loss=f"{scalars['loss']:.3f}", lr=f"{scalars['lr']:.1e}", img_s=f"{scalars['images_per_s']:.1f}")
    bar.update(1)  # after the postfix: a log line shows this step's values
    if step % log_every:
        return
    if writer is not None:
        for name, value in scalars.items():
            writer.add_scalar(f"train/{name}", value, step)
    if log is not None:
        log.add(step, elapsed, scalars)


def tensorboard_writer(run_dir: Path, config: ExperimentConfig):
    """A TensorBoard writer into the run folder's tensorboard/, or None when ``output.tensorboard`` is off."""
    if not config.output.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tensorboard"))
