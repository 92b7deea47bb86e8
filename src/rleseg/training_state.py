"""Everything an exact resume needs, and the run folder's checkpoints that hold it. Over 400 lines on purpose:
the run folder's format (checkpoints, their markers and checksums, the lock, leftovers) is written and read
here and nowhere else.

    RUN_DIR/config.yaml                                  the config of what ran (written atomically)
    RUN_DIR/history.json                                 the run's segments: one per call that trained
    RUN_DIR/checkpoints/step_000500/model.safetensors    the model (rleseg.models format, self-describing)
                                    trainer.safetensors  optimizer and RNG tensors
                                    trainer.json         TrainingState, RNG states, optimizer skeleton, fp16 loss scale
                                    complete             the sizes and SHA-256 of the three files above, written last
    RUN_DIR/best.safetensors                             the model of the best evaluation so far

A resumed run may change the keys of :data:`RESUMABLE` (:func:`resume_changes`); config.yaml then holds
the new values and history.json the step range and the changes of each segment, so that the two together
say what every step ran with. Every model file of a run stores the class names and colours (``extra``).

Stored as safetensors (tensors) + JSON (everything else), never pickle. A checkpoint folder is assembled
under a temporary name (starting with a dot) and renamed into place; readers look only at ``step_[0-9]*``.
A checkpoint counts only when complete: its ``complete`` marker lists its files with their sizes and
SHA-256 sums, they match, and they load. Folders of rleseg 0.1.0, which wrote no marker, count when their
files load. Resuming skips a damaged newest checkpoint with a warning (moving it aside as
``damaged_step_N``, where nothing reads it) and continues from the newest complete one. The newest
``keep_last`` are kept; an old one is renamed to a temporary name before it is deleted, so a kill while
pruning leaves no partial ``step_*`` folder. What a kill leaves (temporary names) is removed when the run
resumes.

One process at a time trains in a run folder: :func:`run_lock` holds an exclusive lock (``flock``) on the
folder for the life of the run, and writes who holds it to ``.rleseg-lock`` (pid and start time, removed
when the lock is released; a kill leaves a stale file, which the next holder overwrites). A second start
is refused with one line naming that process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .atomic import atomic_folder, write_json
from .models import renamed_weights, save_checkpoint
from .models.checkpoint import write_safetensors

MARKER = "complete"
CHECKPOINT_FILES = ("model.safetensors", "trainer.safetensors", "trainer.json")
# What a run writes into its folder; --overwrite removes these (config.yaml last, so that a removal cut
# short still reads as a run) and nothing else the folder may hold.
RUN_FILES = ("checkpoints", "best.safetensors", "metrics.json", "metrics.csv", "eval_log.jsonl", "pictures",
             "tensorboard", "history.json", "config.yaml")
HISTORY = "history.json"
# The keys a resumed run may change. How long it trains (train.train continues the schedule to the new
# length), how it evaluates, what it writes and how it loads data leave the checkpoint's weights and
# optimizer state valid; model.init_from is read only at a run's first step (a moved file may be pointed
# at anew). Everything else is refused: the model, tokenizer and data shape the weights and the batches,
# and the optimisation settings (train.lr included) are what the steps done so far followed. The learning
# rate of every step then follows from config.yaml alone; training on with another learning rate is a new
# run that starts from this one's weights (model.init_from=RUN_DIR).
RESUMABLE = ("train.steps", "train.minutes", "train.compile", "data.num_workers", "model.init_from", "eval.*",
             "output.*")


@dataclass
class TrainingState:
    """Where a run stands after ``step`` optimizer steps; trainer.json holds these fields by name."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # samples of ``epoch`` this rank has drawn: a resumed run continues from there
    total_steps: int = 0  # the schedule's length; a wall-clock budget shortens it as the run goes
    elapsed: float = 0.0  # seconds of training, over every call of a resumed run
    best: float | None = None  # the best validation score so far (None before the first)


# ----------------------------------------------------------------------------- optimizer and RNGs
def _optimizer_to_flat(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into named tensors and a JSON-able skeleton."""
    tensors, skeleton = {}, {"param_groups": state["param_groups"], "state": {}}
    for param_id, slots in state["state"].items():
        entry = {}
        for name, value in slots.items():
            if torch.is_tensor(value):
                key = f"optimizer.{param_id}.{name}"
                tensors[key] = value.detach().cpu().contiguous()
                entry[name] = {"tensor": key}
            else:
                entry[name] = {"value": value}
        skeleton["state"][str(param_id)] = entry
    return tensors, skeleton


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], skeleton: dict) -> dict:
    state = {}
    for param_id, slots in skeleton["state"].items():
        state[int(param_id)] = {
            name: tensors[spec["tensor"]] if "tensor" in spec else spec["value"] for name, spec in slots.items()
        }
    return {"state": state, "param_groups": skeleton["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    # The legacy global generator too: user augmentations may draw from it.
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    version, internal, gauss = random.getstate()
    return tensors, {
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }


def _set_rng_state(tensors: dict[str, torch.Tensor], info: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = info["python"]
    random.setstate((version, tuple(internal), gauss))


# ----------------------------------------------------------------------------- run checkpoints
def save_run_checkpoint(
    run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainingState, keep_last: int,
    extra: dict | None = None, scaler: torch.amp.GradScaler | None = None,
) -> Path:
    """Write ``checkpoints/step_N`` (N = ``state.step``) and drop all but the newest ``keep_last``. ``extra``
    goes into the model file beside the step (the class names and colours, see :func:`save_best`); ``scaler``:
    fp16's loss scaler, whose scale and growth count trainer.json keeps."""
    final = Path(run_dir) / "checkpoints" / f"step_{state.step:07d}"
    opt_tensors, opt_skeleton = _optimizer_to_flat(optimizer.state_dict())
    rng_tensors, rng_info = _rng_state()
    info = {"optimizer": opt_skeleton, "rng": rng_info, **dataclasses.asdict(state),
            "loss_scale": None if scaler is None else scaler.state_dict()}
    try:
        with atomic_folder(final, overwrite=True) as tmp:  # a failed write leaves nothing of it
            save_checkpoint(model, tmp / "model.safetensors", extra={**(extra or {}), "step": state.step})
            _fault("checkpoint-write", state.step)
            write_safetensors({**opt_tensors, **rng_tensors}, tmp / "trainer.safetensors", None,
                              final / "trainer.safetensors")
            (tmp / "trainer.json").write_text(json.dumps(info))
            (tmp / MARKER).write_text(json.dumps({name: _fingerprint(tmp / name) for name in CHECKPOINT_FILES}))
    except OSError as error:  # a full disk: one line; the checkpoints before this one are untouched
        raise OSError(f"{final}: cannot write the checkpoint ({error.strerror or error}); the run's earlier "
                      f"checkpoints are kept: make room and continue with 'rleseg train --resume {run_dir}'") from None
    for old in _step_folders(run_dir)[: -max(1, keep_last)]:
        doomed = old.with_name(f".pruned-{old.name}-{os.getpid()}")
        os.replace(old, doomed)  # out of the step_* namespace at once; the slow delete comes after
        _fault("checkpoint-prune", state.step)
        shutil.rmtree(doomed)
    return final


def _fault(point: str, step: int) -> None:
    # Fault injection for the tests: RLESEG_FAULT=checkpoint-write@N kills this process (SIGKILL, so no
    # cleanup runs) halfway through writing step N's checkpoint, RLESEG_FAULT=checkpoint-prune@N halfway
    # through the pruning after it: the leftovers of a crash, made on purpose.
    if os.environ.get("RLESEG_FAULT") == f"{point}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)


class DamagedCheckpoint(ValueError):
    """A checkpoint folder whose files are missing, cut short or unreadable."""


def load_run_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler | None = None) -> TrainingState:
    """Load weights, optimizer and RNG states (and the loss ``scaler``'s, where the run saved one: fp16) from
    a ``step_N`` folder; returns its training state.

    ValueError naming the folder when its files do not load, or its weights do not fit ``model`` (a
    checkpoint of another model).
    """
    folder = Path(folder)
    try:
        info = json.loads((folder / "trainer.json").read_text())
        state = TrainingState(**{field.name: info[field.name] for field in dataclasses.fields(TrainingState)})
        tensors = load_file(str(folder / "trainer.safetensors"))
        weights = load_file(str(folder / "model.safetensors"))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as error:
        raise DamagedCheckpoint(f"{folder}: not a readable training checkpoint ({error})") from None
    own = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    saved = {name: tuple(tensor.shape) for name, tensor in weights.items()}
    if own != saved:
        first = min(name for name in own.keys() | saved.keys() if own.get(name) != saved.get(name))
        raise ValueError(f"{folder}: its weights do not fit the model of this config ({first}: {saved.get(first)} "
                         f"in the checkpoint, {own.get(first)} in the model); resume with the model settings "
                         "the run was trained with (config.yaml of the run, without model.* overrides)")
    model.load_state_dict(renamed_weights(weights))
    try:
        optimizer.load_state_dict(_optimizer_from_flat(tensors, info["optimizer"]))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{folder}: its optimizer state does not fit this config's optimizer ({error})") from None
    _set_rng_state(tensors, info["rng"])
    if scaler is not None and info.get("loss_scale"):  # checkpoints before rleseg kept it: a fresh scale
        scaler.load_state_dict(info["loss_scale"])
    return state


def load_latest_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           main: bool = True, scaler: torch.amp.GradScaler | None = None) -> TrainingState:
    """:func:`load_run_checkpoint` of the newest complete ``step_N`` folder of ``run_dir``.

    Damaged newer ones are skipped with a warning on stderr and, by the ``main`` process (rank 0 of a DDP
    run), moved aside as ``damaged_step_N``: they would otherwise sort after the checkpoints the resumed
    run writes and get those pruned. The main process first removes what killed runs left behind.
    """
    if main:
        remove_leftovers(run_dir)
    found = _step_folders(run_dir)
    if not found:
        raise ValueError(f"{run_dir}: no checkpoint to resume from (looked in {Path(run_dir) / 'checkpoints'}); "
                         "start afresh with --overwrite")
    damaged = []
    for folder in reversed(found):
        try:
            _check_complete(folder)
            state = load_run_checkpoint(folder, model, optimizer, scaler)
        except DamagedCheckpoint as error:
            if main:
                print(f"rleseg: warning: {error}; trying the checkpoint before it", file=sys.stderr)
            damaged.append(folder)
            continue
        if main:
            for folder in damaged:
                _set_aside(folder)
        return state
    raise ValueError(f"{run_dir}: none of its {len(found)} checkpoints is complete (see the warnings above); start "
                     "afresh with --overwrite")


def _fingerprint(path: Path) -> dict[str, int | str]:
    """What the ``complete`` marker records of a checkpoint file: its size and SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def _check_complete(folder: Path) -> None:
    """DamagedCheckpoint unless ``folder``'s files have the sizes and SHA-256 sums its marker lists, so that
    bytes changed in place count as damage as a cut-short file does (markers of rleseg 0.1.x hold sizes
    only; a folder without a marker, as rleseg 0.1.0 wrote them, is judged by loading it)."""
    marker = folder / MARKER
    if not marker.exists():
        return
    try:
        listed = json.loads(marker.read_text())
        wrong = [name for name, expected in listed.items()
                 if (folder / name).stat().st_size != (expected if isinstance(expected, int) else expected["size"])]
        changed = [name for name, expected in listed.items() if name not in wrong and not isinstance(expected, int)
                   and _fingerprint(folder / name)["sha256"] != expected["sha256"]]
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as error:
        raise DamagedCheckpoint(f"{folder}: incomplete checkpoint ({error})") from None
    if wrong or changed:
        what = [f"{', '.join(wrong)} cut short or changed in size"] if wrong else []
        what += [f"{', '.join(changed)} changed (SHA-256 differs from its marker)"] if changed else []
        raise DamagedCheckpoint(f"{folder}: incomplete checkpoint ({'; '.join(what)})")


def _set_aside(folder: Path) -> None:
    for k in itertools.count():
        target = folder.with_name(f"damaged_{folder.name}" + (f".{k}" if k else ""))
        if not target.exists():
            os.replace(folder, target)
            print(f"rleseg: warning: moved {folder} to {target}", file=sys.stderr)
            return


def remove_leftovers(run_dir: Path) -> None:
    """Delete what a killed run leaves behind: the temporary files and folders (names starting with a dot)
    of checkpoints being written, replaced or pruned, and of atomically written run files."""
    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    for old in checkpoints.glob(".step_*.old-*"):  # killed while replacing step_N: the old copy is complete
        complete = checkpoints / old.name[1:].split(".old-")[0]
        if not complete.exists():
            old.rename(complete)
    leftovers = [*checkpoints.glob(".*"), *run_dir.glob(".*.tmp*"), *(run_dir / "pictures").glob(".*.tmp*")]
    for path in leftovers:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


LOCK_NOTE = ".rleseg-lock"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder ``run_dir`` (made if missing, and removed again if it is left empty) for one
    process; ValueError naming the holder when another process holds it."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = (run_dir / LOCK_NOTE).read_text().strip() or "another process"
            except OSError:  # it is being written or removed this instant
                holder = "another process"
            raise ValueError(f"{run_dir}: another rleseg process is training in this run folder ({holder}); "
                             "wait for it to end, or choose another folder") from None
        note = run_dir / LOCK_NOTE
        try:
            note.write_text(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            yield
        finally:
            note.unlink(missing_ok=True)
            if created:
                with contextlib.suppress(OSError):
                    run_dir.rmdir()  # only when empty: a start that failed before writing anything
    finally:
        os.close(fd)  # releases the lock


def check_no_run(run_dir: Path) -> None:
    """ValueError when ``run_dir`` holds a run (its config, best model or a checkpoint): a new run there
    would mix with it."""
    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").exists() or (run_dir / "best.safetensors").exists() or _step_folders(run_dir):
        raise ValueError(f"{run_dir} holds a run already: continue it with 'rleseg train --resume {run_dir}', or "
                         "start afresh there with --overwrite (which deletes it)")


def remove_run(run_dir: Path) -> None:
    """Delete the files of a run (:data:`RUN_FILES`, leftovers included) from ``run_dir``, and the folder if
    nothing else is left."""
    remove_leftovers(run_dir)
    for name in RUN_FILES:
        path = Path(run_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    with contextlib.suppress(OSError):
        Path(run_dir).rmdir()  # only when empty


@contextlib.contextmanager
def starting_run(run_dir: Path, overwrite: bool) -> Iterator[None]:
    """The block that starts a new run in ``run_dir``: with ``overwrite``, the run there is deleted first.
    When the block fails before the first checkpoint, the run files it wrote are deleted: a failed start
    leaves no run that cannot be resumed yet blocks a new one."""
    if overwrite:
        remove_run(run_dir)
    try:
        yield
    except BaseException:
        if not _step_folders(run_dir):
            remove_run(run_dir)
        raise


def save_best(run_dir: Path, model: torch.nn.Module, extra: dict) -> Path:
    """best.safetensors; ``extra`` holds the step, the score and ``class_names``/``class_colours`` (what
    :func:`rleseg.models.checkpoint_classes` reads back)."""
    path = Path(run_dir) / "best.safetensors"
    try:
        save_checkpoint(model, path, extra=extra)
    except OSError as error:  # a full disk: the previous best model is kept (atomic write)
        raise OSError(f"{path}: cannot write the best model ({error.strerror or error}); the previous one is "
                      "kept") from None
    return path


def _step_folders(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    return sorted(folder.glob("step_[0-9]*")) if folder.is_dir() else []


# ----------------------------------------------------------------------------- resuming with changes
def flatten(section: dict, prefix: str = "") -> dict[str, object]:
    """``{"train": {"steps": 4}}`` -> ``{"train.steps": 4}``; lists are values."""
    flat = {}
    for key, value in section.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def may_change_on_resume(key: str) -> bool:
    return any(key == allowed or (allowed.endswith(".*") and key.startswith(allowed[:-1])) for allowed in RESUMABLE)


def resume_changes(run_dir: Path, stored: dict, requested: dict) -> dict[str, list]:
    """``{dotted key: [value in the run's config, requested value]}`` for every key that differs.

    ValueError naming the first key that a resumed run may not change (see :data:`RESUMABLE`)."""
    old, new = flatten(stored), flatten(requested)
    # output.dir names the folder, which a run that was moved or copied changes without training otherwise.
    changes = {key: [old.get(key), new.get(key)] for key in sorted(old.keys() | new.keys())
               if old.get(key) != new.get(key) and key != "output.dir"}
    refused = [key for key in changes if not may_change_on_resume(key)]
    if refused:
        key = refused[0]
        raise ValueError(
            f"{run_dir}: {key} cannot change when a run is resumed ({changes[key][0]!r} in its config.yaml, "
            f"{changes[key][1]!r} asked); a resumed run may change {', '.join(RESUMABLE)}; to train with other "
            f"settings from this run's weights, start a new run with model.init_from={run_dir}")
    return changes


def read_history(run_dir: Path) -> list[dict]:
    """The segments of history.json (none for a run of an rleseg that kept none, or an unreadable file)."""
    return _segments(Path(run_dir) / HISTORY) or []


def _segments(path: Path) -> list[dict] | None:
    """The segments of the history file ``path``; None when it is missing or unreadable."""
    try:
        segments = json.loads(path.read_text())["segments"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return segments if isinstance(segments, list) else None


def start_segment(run_dir: Path, step: int, changes: dict[str, list], init_from: str | None = None) -> None:
    """Add a segment starting at ``step`` with the config ``changes`` it was resumed with (``init_from``:
    the checkpoint a new run's weights came from). Its end stays null until :func:`end_segment`, so a
    segment that a kill cut short shows as one."""
    segment = {"start_step": step, "end_step": None, "ended": None, "changes": changes}
    if init_from is not None:
        segment["init_from"] = init_from
    path = Path(run_dir) / HISTORY
    segments = _segments(path)
    if segments is None and path.exists():  # a history that cannot be read is kept, not written over
        for k in itertools.count():
            kept = path.with_name(f"{HISTORY}.damaged" + (f".{k}" if k else ""))
            if not kept.exists():
                break
        os.replace(path, kept)
        print(f"rleseg: warning: {path}: not a readable run history (expected {{\"segments\": [...]}}); kept as "
              f"{kept}, and a new history starts at step {step}", file=sys.stderr)
    write_json(path, {"segments": [*(segments or []), segment]})


def end_segment(run_dir: Path, step: int, ended: str) -> None:
    """Close the newest segment at ``step``; ``ended``: "schedule", "budget" or "interrupted"."""
    segments = read_history(run_dir)
    if segments:
        segments[-1].update(end_step=step, ended=ended)
        write_json(Path(run_dir) / HISTORY, {"segments": segments})
