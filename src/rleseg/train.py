"""``rleseg train``: build everything from an experiment config and run the training loop.

Single process or DDP under torchrun (gloo on CPU, NCCL on GPU); only rank 0 writes. :func:`train` reads
top to bottom: build, resume if asked, then step / log / validate / checkpoint until the schedule or the
wall-clock budget ends, or a signal asks to stop (a checkpoint is written first). Where the run stands
is one :class:`~rleseg.training_state.TrainingState` that only the loop changes; the helpers below take
plain values and return new ones. (A little over 400 lines: the loop and the helpers it calls, kept
beside it so that a step can be followed in one file; DDP is distributed.py's, what a run prints
training_output.py's.)
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Subset

from .atomic import write_json, write_text
from .data import ClassList, Collate
from .data.sampler import ResumableSampler
from .distributed import Distributed, agree, setup_distributed, sync_buffers
from .engine import (
    LossOf,
    TrainConfig,
    build_optimizer,
    grad_scaler,
    learning_rate,
    lookup,
    set_learning_rate,
    train_step,
    validate,
)
from .experiment import (
    ExperimentConfig,
    build_datasets,
    build_model,
    build_patch_scores,
    build_tokenizer,
    config_to_dict,
    init_checkpoint,
    validate_config,
)
from .models import load_weights_into
from .progress import progress
from .report import metrics_document
from .training_output import (
    TrainingLog,
    TruncationCount,
    ValidationPictures,
    WarmupCheck,
    end_summary,
    end_warnings,
    report_step,
    start_summary,
    tensorboard_writer,
)
from .training_state import (
    TrainingState,
    check_no_run,
    end_segment,
    load_latest_checkpoint,
    resume_changes,
    run_lock,
    save_best,
    save_run_checkpoint,
    start_segment,
    starting_run,
)
from .typed_yaml import from_dict, load_yaml
from .visualize import palette


class StopFlag:
    """SIGINT/SIGTERM set a flag the loop checks after each step, so it can checkpoint and exit cleanly."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    metrics: dict | None
    interrupted: bool
    model: torch.nn.Module
    losses: list[float]  # training loss of each step of this call
    signal: int | None = None  # the signal that stopped the run (None: it ran to the end, or stop_at_step)


def train(config: ExperimentConfig, run_dir: str | Path | None = None, resume: bool = False,
          overwrite: bool = False, stop_at_step: int | None = None, device: str | None = None,
          show_progress: bool = True) -> TrainResult:
    """Train as ``config`` says; ``resume`` continues from the newest complete checkpoint in ``run_dir``.

    ``device``: cpu, cuda or cuda:N (None: cuda when available, else cpu; under torchrun each process takes
    cuda:LOCAL_RANK). The main process prints a summary before the first step and another at the end;
    ``show_progress=False`` turns the progress displays off (a bar on a terminal, else a line every
    ``output.log_every`` steps).

    A new run refuses a ``run_dir`` that holds a run, unless ``overwrite``: then the old run is deleted,
    but only once the new one is built, so that a config that fails to build never costs it. A new run
    that fails before its first checkpoint leaves no run files behind.
    ``stop_at_step`` acts like a signal arriving at that step (checkpoint, then return): what tests use
    to interrupt a run. Once ``run_dir/config.yaml`` exists, SIGINT and SIGTERM end the run with a
    checkpoint.
    """
    if resume and overwrite:
        raise ValueError("resume continues the run in run_dir and overwrite replaces it: choose one")
    env = setup_distributed(device)
    run_dir = Path(run_dir or config.output.dir)
    # One process trains in a run folder at a time (training_state.run_lock); the main one holds it.
    with run_lock(run_dir) if env.main else contextlib.nullcontext():
        try:
            return _train(config, run_dir, resume, overwrite, stop_at_step, env, show_progress)
        except OSError as error:  # a full disk while writing a log or picture names no file: name the run
            if error.errno is None or error.filename is not None:
                raise
            raise OSError(f"{run_dir}: {error.strerror} (while training this run)") from None


def _train(config: ExperimentConfig, run_dir: Path, resume: bool, overwrite: bool, stop_at_step: int | None,
           env: Distributed, show_progress: bool) -> TrainResult:
    """:func:`train` in ``run_dir``, which this process holds (``env``: its distributed setup)."""
    if not resume and not overwrite:
        check_no_run(run_dir)
    validate_config(config)  # a config built in Python gets the checks load_config gives a YAML file
    changes = _changes_on_resume(run_dir, config) if resume else {}
    tc = config.train
    _seed(tc, env.rank)

    tokenizer = build_tokenizer(config)
    model = build_model(config, tokenizer).to(env.device)
    init_from = None if resume else init_checkpoint(config)  # a resumed run's weights are its checkpoint's
    if init_from is not None:
        load_weights_into(model, init_from)
    train_set, val_set = build_datasets(config, tokenizer)
    extra = model_file_extra(config, val_set)  # what every model file of the run stores beside its weights
    optimizer = build_optimizer(model, tc)
    scaler = grad_scaler(tc, env.device)  # fp16 only; checkpoints keep its scale
    per_rank = -(-len(train_set) // env.world)
    if per_rank < tc.batch_size:
        raise ValueError(f"the training set has {per_rank} samples per process, fewer than train.batch_size")
    if resume:
        state = _continued(load_latest_checkpoint(run_dir, model, optimizer, env.main, scaler), tc, changes, run_dir)
        if _already_complete(state, run_dir):  # nothing to train, and its final evaluation is written
            if env.main:
                print(_complete_line(state, tc, run_dir))
            return TrainResult(run_dir, state.step, None, False, model, [])
        if env.main and changes:
            print(f"train: resuming {run_dir} at step {state.step} with "
                  + ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changes.items()))
    else:
        state = TrainingState(total_steps=tc.steps)

    loss_of = _loss_function(model, tc, env)
    collate = _collate(model)
    stream = _batches(train_set, collate, tc, config.data.num_workers, env,
                      state.epoch, state.position)
    if env.main:
        print(start_summary(config, model, train_set, val_set, state, env.device, env.world, run_dir, init_from),
              flush=True)
    bar = progress(desc="train", unit="step", enabled=env.main and show_progress, total=state.total_steps,
                   initial=state.step, every=config.output.log_every)
    losses, seen, interrupted, truncation = [], 0, False, TruncationCount(collate.max_seq_len)
    warmup = WarmupCheck(tc.steps, tc.warmup_steps, tc.minutes)
    starting = starting_run(run_dir, overwrite) if env.main and not resume else contextlib.nullcontext()
    # The handlers go in before config.yaml is written: once it exists, a signal ends in a checkpoint.
    with StopFlag() as stop, starting, bar:  # the bar closes before an error is printed
        if env.main:
            write_text(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
            start_segment(run_dir, state.step, changes, None if init_from is None else str(init_from))
        writer = tensorboard_writer(run_dir, config) if env.main else None
        log = TrainingLog.for_run(run_dir, config.tokenizer.task, model, state.step) if env.main else None
        call_started = time.perf_counter()
        started = call_started - state.elapsed  # the run's clock: earlier calls of a resumed run count
        while state.step < state.total_steps:
            budget_used = state.elapsed / (tc.minutes * 60) if tc.minutes else 0.0
            lr = learning_rate(state.step, state.total_steps, tc, budget_used)
            set_learning_rate(optimizer, lr)
            micro = [next(stream) for _ in range(tc.accumulate)]  # (batch, epoch, position after it)
            _, state.epoch, state.position = micro[-1]
            batches = [batch for batch, _, _ in micro]
            loss, grad_norm = train_step(loss_of, batches, optimizer, tc, env.device, model.target_keys, scaler)
            state.step += 1
            losses.append(loss)
            seen += tc.batch_size * tc.accumulate * env.world
            now = time.perf_counter()
            state.elapsed = now - started
            if env.main and out_of_time(state.elapsed, tc):
                state.total_steps = state.step  # the budget is spent: this step is the last
            state.total_steps, state.elapsed, stop_requested = agree(
                state.total_steps, state.elapsed, stop.signal is not None or state.step == stop_at_step, env)
            if env.main:
                speed = seen / (time.perf_counter() - call_started)
                truncated = sum(batch["num_truncated"] for batch in batches)
                truncation.add(truncated, tc.batch_size * tc.accumulate, bar)
                warmup.observe(state.step, state.elapsed, bar)
                tokens = {"truncated": truncated} if collate.max_seq_len is not None else {}  # dense: no tokens
                report_step(bar, writer, state.step, state.total_steps, config.output.log_every,
                            {"loss": loss, "lr": lr, "grad_norm": grad_norm, **tokens, "images_per_s": speed},
                            log, state.elapsed)
            finished = state.step >= state.total_steps
            if stop_requested and not finished:
                interrupted = True
                break
            if config.eval.every and state.step % config.eval.every == 0 and not finished:
                _, state.best = _validate_and_keep_best(model, val_set, config, env, run_dir, writer,
                                                        state.step, state.best, extra, show_progress, log)
            if log is not None and not finished:  # the last step's row waits for the final validation's scores
                log.flush()
            if env.main and state.step % config.output.save_every == 0 and not finished:
                save_run_checkpoint(run_dir, model, optimizer, state, config.output.keep_last, extra, scaler)
        bar.close()  # before the final validation's own bar
        # The trained weights are saved before the final validation, so nothing that fails there loses them.
        if env.main:
            save_run_checkpoint(run_dir, model, optimizer, state, config.output.keep_last, extra, scaler)
    metrics = None
    if not interrupted:
        metrics, best = _validate_and_keep_best(model, val_set, config, env, run_dir, writer, state.step, state.best,
                                                extra, show_progress, log)
        if env.main and best != state.best:  # a resumed run must compare against this score
            state.best = best
            save_run_checkpoint(run_dir, model, optimizer, state, config.output.keep_last, extra, scaler)
    if env.main:
        print(f"stopped at step {state.step}; continue with: rleseg train --resume {run_dir}" if interrupted
              else _what_ended(state, tc))
        end_segment(run_dir, state.step,
                    "interrupted" if interrupted else "budget" if out_of_time(state.elapsed, tc) else "schedule")
        log.flush()
        if metrics is not None:
            print(end_summary(metrics, config, run_dir, state.step, state.best), flush=True)
            for warning in end_warnings(config, run_dir, state.step, metrics):
                print(f"rleseg: warning: {warning}", file=sys.stderr)
    if writer is not None:
        writer.close()
    env.barrier()
    return TrainResult(run_dir, state.step, metrics, interrupted, model, losses, stop.signal)


def _seed(tc: TrainConfig, rank: int) -> None:
    torch.manual_seed(tc.seed + rank)
    np.random.seed(tc.seed)  # noqa: NPY002 - user code may draw from the legacy global generator
    if tc.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def _loss_function(model: torch.nn.Module, tc: TrainConfig, env: Distributed) -> torch.nn.Module:
    """``model.loss`` as a module, wrapped for DDP and compiled as the config asks."""
    loss_of = LossOf(model)
    if env.world > 1:
        loss_of = torch.nn.parallel.DistributedDataParallel(loss_of)
    if tc.compile:
        loss_of = torch.compile(loss_of, dynamic=True)  # token lengths vary by batch: no recompiles
    return loss_of


def _collate(model: torch.nn.Module) -> Collate:
    """Token models learn from sequences cut at their ``max_seq_len``; the dense model (None) from masks."""
    return Collate(model.max_seq_len)


def _batches(dataset: Dataset, collate: Collate, tc: TrainConfig, num_workers: int, env: Distributed,
             epoch: int, position: int) -> Iterator[tuple[dict, int, int]]:
    """Micro-batches of this rank forever, epoch after epoch, from ``(epoch, position)`` on.

    Each comes with the (epoch, position) just after it: what a checkpoint written after it records, so
    that a resumed run draws exactly the batches the uninterrupted one would have drawn next.
    """
    sampler = ResumableSampler(len(dataset), tc.seed, env.rank, env.world)
    while True:
        sampler.set_epoch(epoch, position)
        dataset.set_epoch(epoch)
        # Its own generator: a DataLoader otherwise draws worker seeds from the global RNG, and a resumed
        # run (which starts a loader mid-epoch) would then diverge from an uninterrupted one.
        seeds = torch.Generator().manual_seed(tc.seed * 100_003 + epoch)
        loader = DataLoader(dataset, tc.batch_size, sampler=sampler, collate_fn=collate,
                            num_workers=num_workers, drop_last=True, generator=seeds)
        for batch in loader:
            position += tc.batch_size
            yield batch, epoch, position
        epoch, position = epoch + 1, 0


def _changes_on_resume(run_dir: Path, config: ExperimentConfig) -> dict[str, list]:
    """``{key: [old, new]}``: how ``config`` differs from the run's config.yaml (nothing without one).

    ValueError naming the first key that a resumed run may not change (training_state.RESUMABLE)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    stored = config_to_dict(from_dict(ExperimentConfig, load_yaml(path)))  # the defaults filled in, as written
    return resume_changes(run_dir, stored, config_to_dict(config))


def _continued(state: TrainingState, tc: TrainConfig, changes: dict[str, list], run_dir: Path) -> TrainingState:
    """The state of a resumed run, its schedule set by the config it resumes with.

    The schedule's length is the config's ``train.steps``, not the one the checkpoint stored, so a larger
    train.steps (or a new train.minutes budget) extends the run. The learning rate is a function of the step
    and the schedule's length (engine.learning_rate), so the steps after the old end get what a run planned
    for the new length from the start gives them: the warm-up, long past, is not repeated, and the decay is
    stretched to the new end. A finished run's rate rises from lr * min_lr_ratio to that schedule's value
    at this step (cosine, 4 -> 8 steps: about half of lr) and decays to lr * min_lr_ratio again at the new
    end. Chosen over decaying from the current rate, which for a finished run stays at the minimum and
    learns little, and over a warm restart at the full lr, which the warm-up was there to avoid; and it
    needs no state beyond the step: a run extended to N before it ended trains as one planned for N.
    ``train.minutes`` stays the budget of the whole run: the time of the earlier calls counts, so a larger
    train.steps for a run whose budget is spent is refused unless train.minutes grows (or goes) too.
    """
    if tc.steps < state.step:
        raise ValueError(f"{run_dir}: train.steps {tc.steps} is fewer than the {state.step} steps the run has done; "
                         f"give train.steps {state.step} or more")
    if "train.minutes" in changes and out_of_time(state.elapsed, tc):
        raise ValueError(f"{run_dir}: train.minutes {tc.minutes:g} is spent already (the run has trained "
                         f"{state.elapsed / 60:.1f} minutes); give more minutes, or null for no budget")
    if "train.steps" in changes and tc.steps > state.step and out_of_time(state.elapsed, tc):
        # More steps within a spent budget would train none; refused rather than guessing how many minutes.
        raise ValueError(f"{run_dir}: its {tc.minutes:g}-minute budget (train.minutes) ended it at step {state.step}, "
                         f"so train.steps {tc.steps} alone trains no step; give train.minutes too: more minutes "
                         "(--set train.minutes=M) or no budget (--set train.minutes=null)")
    if "eval.best_metric" in changes:
        state.best = None  # a score of another metric: the next evaluation starts the comparison afresh
    state.total_steps = state.step if out_of_time(state.elapsed, tc) else tc.steps
    return state


def _already_complete(state: TrainingState, run_dir: Path) -> bool:
    """Whether the run has trained its schedule and written its final evaluation (metrics.json of this step):
    a run killed during the final evaluation is not complete, and resuming it evaluates."""
    if state.step < state.total_steps:
        return False
    try:
        return json.loads((run_dir / "metrics.json").read_text())["step"] == state.step
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _complete_line(state: TrainingState, tc: TrainConfig, run_dir: Path) -> str:
    if out_of_time(state.elapsed, tc):
        return (f"train: {run_dir} is complete: its {tc.minutes:g}-minute budget ended it at step {state.step}; to "
                "train on, resume with a larger --set train.minutes=M (or null for no budget)")
    return (f"train: {run_dir} is complete at step {state.step} of train.steps {tc.steps}; to train on, resume "
            f"with --set train.steps=N (N > {state.step})")


def model_file_extra(config: ExperimentConfig, dataset: Dataset) -> dict[str, list | dict]:
    """The class names and colours every model file of a run stores (``extra``), for predict's and evaluate's
    legends: names from data.class_names, else the dataset's class list, else "class c"; colours from the
    dataset's colour table, else the default palette. Beside them ``normalize``: data.normalize, so that
    predict and evaluate turn image values into [0, 1] as training did."""
    listed = getattr(dataset, "classes", None)
    listed = listed if isinstance(listed, ClassList) else None
    names = config.data.class_names or (list(listed.names) if listed is not None else config.class_names())
    colours = listed.colours if listed is not None and listed.colours is not None else palette(len(names))
    return {"class_names": list(names), "class_colours": np.asarray(colours, np.uint8).tolist(),
            "normalize": vars(config.data.normalize)}


def _what_ended(state: TrainingState, tc: TrainConfig) -> str:
    clock = f"{state.elapsed / 60:.1f} min"
    if out_of_time(state.elapsed, tc):
        return f"train: the {tc.minutes:g}-minute budget ended the run at step {state.step} of {tc.steps} ({clock})"
    return f"train: the schedule ended the run at step {state.step} ({clock})"


def out_of_time(elapsed: float, tc: TrainConfig) -> bool:
    """Whether a wall-clock budget (``tc.minutes``) is spent after ``elapsed`` seconds of the run.

    A budget schedules by time: the learning rate decays with the share of the budget used
    (:func:`rleseg.engine.learning_rate`), and the run ends at the first step that ends past the budget, or
    at ``tc.steps``, whichever comes first. Time-budgeted runs are therefore not bit-reproducible.
    """
    return tc.minutes is not None and elapsed >= tc.minutes * 60


def _validate_and_keep_best(model: torch.nn.Module, val_set: Dataset, config: ExperimentConfig, env: Distributed,
                            run_dir: Path, writer, step: int, best: float | None, extra: dict,
                            show_progress: bool = True, log: TrainingLog | None = None) -> tuple[dict, float | None]:
    """Validate on disjoint shards of the validation patches (so pooled metrics stay exact under DDP).

    Rank 0 then writes metrics.json (:func:`rleseg.report.metrics_document`, "what": "patches"), a line of
    eval_log.jsonl and of ``log`` (metrics.csv), the pictures (in ``extra``'s class names and colours,
    :func:`model_file_extra`), and best.safetensors (with ``extra``) when the score beats ``best``. Returns
    (the scores, ``PatchScores.compute()``; the best score so far).
    """
    ec = config.eval
    sync_buffers(model, env)
    count = len(val_set) if ec.max_samples is None else min(len(val_set), ec.max_samples)
    loader = DataLoader(Subset(val_set, list(range(env.rank, count, env.world))), ec.batch_size,
                        collate_fn=_collate(model), num_workers=config.data.num_workers)
    writes_tokens = model.max_seq_len is not None and model.tokenizer.task != "video"
    tokenizer = model.tokenizer if writes_tokens else None
    pictures = ValidationPictures(config.output.pictures, extra["class_names"], config.data.ignore_index, tokenizer,
                                  extra["class_colours"])
    scores = validate(model, loader, build_patch_scores(config, model.tokenizer), ec, env.device,
                      pictures.add if env.main else None, show_progress and env.main)
    scores.all_reduce()
    metrics = scores.compute()
    if not env.main:
        return metrics, best
    score = lookup(metrics, ec.best_metric)
    images = metrics["num_images"] if config.tokenizer.task == "video" else _images_of(val_set, count)
    write_json(run_dir / "metrics.json", metrics_document(config.tokenizer.task, "patches", config.class_names(),
                                                          images, metrics, count, step=step, metric=ec.best_metric,
                                                          value=score))
    with (run_dir / "eval_log.jsonl").open("a") as eval_log:
        eval_log.write(json.dumps({"step": step, ec.best_metric: score}) + "\n")
    pictures.save(run_dir / "pictures", step, writer)
    if writer is not None:
        writer.add_scalar(f"val/{ec.best_metric}", score, step)
    if log is not None:
        log.validation(step, metrics)
    if best is None or (score == score and score > best):  # a NaN score never replaces a number
        best = score
        save_best(run_dir, model, {"step": step, ec.best_metric: score, **extra})
    return metrics, best


def _images_of(dataset: Dataset, count: int) -> int:
    """The images the first ``count`` patches come from (``count`` itself for a dataset that cannot say)."""
    if not hasattr(dataset, "locate"):
        return count
    return len({dataset.locate(item)[0] for item in range(count)})
