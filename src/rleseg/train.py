"""``rleseg train``: build everything from an experiment config and run the training loop.

Single process or DDP under torchrun (gloo on CPU, NCCL on GPU); only rank 0 writes. The loop reads
top to bottom: set up, resume if asked, then step / log / evaluate / checkpoint until the schedule or
the wall-clock budget ends, or a signal asks to stop (a checkpoint is written first).
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader

from .checkpoints import checkpoint_dirs, load_run_checkpoint, save_best, save_run_checkpoint
from .data import Collate
from .engine import LossOf, build_optimizer, evaluate, learning_rate, lookup, set_learning_rate, train_step
from .experiment import ExperimentConfig, build_datasets, build_meters, build_model, build_tokenizer, config_to_dict
from .sampling import ResumableSampler
from .visualize import comparison_panel

CALIBRATION_STEPS = 10  # steps timed before a wall-clock budget first sets the schedule's length


@dataclass
class Distributed:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Distributed:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without them this is a single CPU or GPU process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Distributed(device=torch.device("cuda" if cuda else "cpu"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Distributed(device, dist.get_rank(), dist.get_world_size())


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


def _agree(state: dict, requested: bool, env: Distributed) -> bool:
    """Make every rank take rank 0's clock and schedule length, and stop when any rank was asked to.

    Ranks time their steps differently; without this a wall-clock budget would give them different
    learning rates and step counts (diverging weights, then a hang in the next collective).
    """
    if env.world == 1:
        return requested
    own = [float(requested), float(state["total_steps"]), state["elapsed"]] if env.main else [float(requested), 0, 0]
    shared = torch.tensor(own, dtype=torch.float64)
    dist.all_reduce(shared)
    state["total_steps"], state["elapsed"] = int(shared[1].item()), float(shared[2].item())
    return bool(shared[0].item() > 0)


def train(config: ExperimentConfig, run_dir: str | Path | None = None, resume: bool = False,
          stop_at_step: int | None = None) -> TrainResult:
    """Train as ``config`` says; ``resume`` continues from the newest checkpoint in ``run_dir``.

    ``stop_at_step`` acts like a signal arriving at that step (checkpoint, then return): what tests use
    to interrupt a run.
    """
    env = setup_distributed()
    run_dir = Path(run_dir or config.output.dir)
    tc = config.train
    torch.manual_seed(tc.seed + env.rank)
    np.random.seed(tc.seed)  # noqa: NPY002 - user code may draw from the legacy global generator
    if tc.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    tokenizer = build_tokenizer(config)
    model = build_model(config, tokenizer).to(env.device)
    train_set, val_set = build_datasets(config, tokenizer)
    optimizer = build_optimizer(model, tc)
    per_rank = -(-len(train_set) // env.world)
    if per_rank < tc.batch_size:
        raise ValueError(f"the training set has {per_rank} samples per process, fewer than train.batch_size")

    state = {"step": 0, "epoch": 0, "position": 0, "total_steps": tc.steps, "elapsed": 0.0, "best": None}
    if resume:
        found = checkpoint_dirs(run_dir)
        if not found:
            raise ValueError(f"{run_dir}: no checkpoint to resume from (looked in {run_dir / 'checkpoints'})")
        state.update(load_run_checkpoint(found[-1], model, optimizer))
    if env.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))

    loss_of = LossOf(model)
    if env.world > 1:
        loss_of = torch.nn.parallel.DistributedDataParallel(loss_of)
    if tc.compile:
        loss_of = torch.compile(loss_of, dynamic=True)  # token lengths vary by batch: no recompiles
    collate = Collate(model.config.max_seq_len)
    sampler = ResumableSampler(len(train_set), tc.seed, env.rank, env.world)
    writer = _tensorboard(run_dir, config) if env.main else None
    progress = _progress(env, state, tc)

    def batches():
        """Micro-batches forever, epoch after epoch, from the saved (epoch, position) on."""
        while True:
            sampler.set_epoch(state["epoch"], state["position"])
            train_set.set_epoch(state["epoch"])
            # Its own generator: a DataLoader otherwise draws worker seeds from the global RNG, and a
            # resumed run (which starts a loader mid-epoch) would then diverge from an uninterrupted one.
            seeds = torch.Generator().manual_seed(tc.seed * 100_003 + state["epoch"])
            loader = DataLoader(train_set, tc.batch_size, sampler=sampler, collate_fn=collate,
                                num_workers=config.data.num_workers, drop_last=True, generator=seeds)
            for batch in loader:
                state["position"] += tc.batch_size
                yield batch
            state["epoch"], state["position"] = state["epoch"] + 1, 0

    stream = batches()
    target_key = getattr(model, "target_key", "tokens")  # dense models learn from masks
    started, seen, interrupted, losses = time.perf_counter() - state["elapsed"], 0, False, []
    call_started, call_start_step = time.perf_counter(), state["step"]
    with StopFlag() as stop:
        while state["step"] < state["total_steps"]:
            budget_used = state["elapsed"] / (tc.minutes * 60) if tc.minutes else 0.0
            lr = learning_rate(state["step"], state["total_steps"], tc, budget_used)
            set_learning_rate(optimizer, lr)
            micro = [next(stream) for _ in range(tc.accumulate)]
            loss, grad_norm = train_step(loss_of, micro, optimizer, tc, env.device, target_key)
            state["step"] += 1
            losses.append(loss)
            seen += tc.batch_size * tc.accumulate * env.world
            state["elapsed"] = time.perf_counter() - started
            if env.main:
                _fit_budget(state, tc, call_start_step, call_started)
            requested = _agree(state, stop.signal is not None or state["step"] == stop_at_step, env)
            if env.main:
                truncated = sum(b["num_truncated"] for b in micro)
                progress.update(1)
                progress.total = state["total_steps"]
                speed = seen / (time.perf_counter() - call_started)
                progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}", img_s=f"{speed:.1f}")
                if writer is not None and state["step"] % config.output.log_every == 0:
                    for name, value in (("loss", loss), ("lr", lr), ("grad_norm", grad_norm),
                                        ("truncated", truncated), ("images_per_s", speed)):
                        writer.add_scalar(f"train/{name}", value, state["step"])
            finished = state["step"] >= state["total_steps"]
            if requested and not finished:
                interrupted = True
                break
            every = config.eval.every
            if every and state["step"] % every == 0 and not finished:
                _evaluate_and_keep_best(model, val_set, config, env, state, run_dir, writer)
            if state["step"] % config.output.save_every == 0 and not finished and env.main:
                save_run_checkpoint(run_dir, model, optimizer, state, config.output.keep_last)
    progress.close()
    metrics = None
    if not interrupted:
        metrics = _evaluate_and_keep_best(model, val_set, config, env, state, run_dir, writer)
    if env.main:
        save_run_checkpoint(run_dir, model, optimizer, state, config.output.keep_last)
        if interrupted:
            print(f"stopped at step {state['step']}; continue with: rleseg train --resume {run_dir}")
    if writer is not None:
        writer.close()
    if env.world > 1:
        dist.barrier()
    return TrainResult(run_dir, state["step"], metrics, interrupted, model, losses)


def _fit_budget(state: dict, tc, call_start_step: int, call_started: float) -> None:
    """Shorten the schedule so that it ends within ``tc.minutes``, from the step time measured so far.

    Refitted at steps 10, 20, 40, ... of this call: the first steps (start-up, warm caches) are slow, and
    the machine's speed may drift. A time-budgeted schedule is therefore not bit-reproducible.
    """
    if tc.minutes is not None and state["elapsed"] >= tc.minutes * 60:
        state["total_steps"] = state["step"]  # out of time: end here, whatever the estimate said
        return
    blocks, rest = divmod(state["step"] - call_start_step, CALIBRATION_STEPS)
    if tc.minutes is None or blocks == 0 or rest or blocks & (blocks - 1):
        return  # only after CALIBRATION_STEPS * 2**k steps of this call
    done = blocks * CALIBRATION_STEPS
    per_step = (time.perf_counter() - call_started) / done
    remaining = tc.minutes * 60 - state["elapsed"]
    state["total_steps"] = max(state["step"], min(tc.steps, state["step"] + int(remaining / per_step)))


def _sync_buffers(model: torch.nn.Module, env: Distributed) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics drift apart, each rank seeing its own
    batches), so that all ranks evaluate the model rank 0 saves."""
    if env.world > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def _evaluate_and_keep_best(model, val_set, config: ExperimentConfig, env: Distributed, state: dict,
                            run_dir: Path, writer) -> dict:
    ec = config.eval
    _sync_buffers(model, env)
    count = len(val_set) if ec.max_samples is None else min(len(val_set), ec.max_samples)
    indices = list(range(env.rank, count, env.world))  # disjoint shards: pooled metrics stay exact
    loader = DataLoader(torch.utils.data.Subset(val_set, indices), ec.batch_size,
                        collate_fn=Collate(model.config.max_seq_len), num_workers=config.data.num_workers)
    panels = []

    def keep_pictures(batch, generation, predictions):
        for i in range(len(predictions)):
            image, truth, name = batch["image"][i].numpy(), batch["mask"][i].numpy(), str(batch["name"][i])
            if image.ndim == 3:  # a still image; a video window has a leading frame axis
                image, truth, predicted = image[None], truth[None], predictions[i][None]
            else:
                predicted = predictions[i]
            for t in range(len(image)):
                if len(panels) < config.output.pictures:
                    title = name if len(image) == 1 else f"{name} frame {t}"
                    panels.append(comparison_panel(image[t], truth[t], predicted[t], config.class_names(), title))

    meters = evaluate(model, loader, build_meters(config, model.tokenizer), ec, env.device,
                      keep_pictures if env.main else None)
    meters.all_reduce()
    metrics = meters.compute()
    if not env.main:
        return metrics
    score = lookup(metrics, ec.best_metric)
    record = {"step": state["step"], "metric": ec.best_metric, "value": score, "metrics": metrics}
    _write_json(run_dir / "metrics.json", record)
    with (run_dir / "eval_log.jsonl").open("a") as log:
        log.write(json.dumps({"step": state["step"], ec.best_metric: score}) + "\n")
    if panels:
        _save_pictures(panels, run_dir / "pictures" / f"step_{state['step']:07d}.png", writer, state["step"])
    if writer is not None:
        writer.add_scalar(f"val/{ec.best_metric}", score, state["step"])
    if state["best"] is None or (score == score and score > state["best"]):
        state["best"] = score
        save_best(run_dir, model, {"step": state["step"], ec.best_metric: score})
    return metrics


def _save_pictures(panels, path: Path, writer, step: int) -> None:
    from PIL import Image

    width, height = max(p.width for p in panels), sum(p.height for p in panels)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    y = 0
    for panel in panels:
        sheet.paste(panel, (0, y))
        y += panel.height
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    sheet.save(tmp)
    os.replace(tmp, path)
    if writer is not None:
        writer.add_image("val/predictions", np.asarray(sheet), step, dataformats="HWC")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _tensorboard(run_dir: Path, config: ExperimentConfig):
    if not config.output.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tensorboard"))


def _progress(env: Distributed, state: dict, tc):
    from tqdm import tqdm

    return tqdm(total=state["total_steps"], initial=state["step"], disable=not env.main, unit="step",
                dynamic_ncols=True, desc="train")
