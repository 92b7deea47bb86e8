"""Training: a run that learns, exact resume, signal checkpointing, config errors, DDP with torchrun."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import TINY
from rleseg.cli import main
from rleseg.data.sampler import epoch_order
from rleseg.engine import TrainConfig, build_optimizer, learning_rate
from rleseg.experiment import load_config
from rleseg.train import out_of_time, train
from rleseg.training_state import TrainingState, load_run_checkpoint

# A model and data small enough to train for a few steps in seconds on 2 CPU cores.


def tiny_config(tmp_path: Path, *extra: str):
    return load_config(None, [*TINY, f"output.dir={tmp_path / 'run'}", *extra])


def test_schedule_warms_up_then_decays():
    config = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    rates = [learning_rate(step, 100, config) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
    assert rates[-1] == pytest.approx(0.1, abs=1e-3)
    linear = TrainConfig(lr=1.0, warmup_steps=0, min_lr_ratio=0.0, schedule="linear")
    assert learning_rate(50, 100, linear) == pytest.approx(0.5)


def test_epoch_order_shards_cover_the_epoch_and_depend_only_on_seed_and_epoch():
    shards = [epoch_order(10, seed=1, epoch=2, rank=r, world=3) for r in range(3)]
    assert sorted(set().union(*map(set, shards))) == list(range(10))
    assert len({len(s) for s in shards}) == 1
    assert (epoch_order(10, 1, 2) == epoch_order(10, 1, 2)).all()
    assert not (epoch_order(10, 1, 2) == epoch_order(10, 1, 3)).all()


def test_short_run_lowers_the_loss_and_writes_its_outputs(tmp_path):
    result = train(tiny_config(tmp_path, "train.steps=30", "train.warmup_steps=3", "data.train_options={length: 8}"))
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert last < 0.8 * first, result.losses
    run = result.run_dir
    for name in ("config.yaml", "best.safetensors", "metrics.json", "eval_log.jsonl"):
        assert (run / name).is_file(), name
    assert list((run / "pictures").glob("step_*.png"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 30 and 0.0 <= metrics["value"] <= 1.0
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_0000030"]


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path):
    steps = ["train.steps=7", "train.deterministic=true", "output.save_every=100", "data.train_options={length: 10}"]
    straight = train(tiny_config(tmp_path / "a", *steps))
    config = tiny_config(tmp_path / "b", *steps)
    first = train(config, stop_at_step=4)  # crosses an epoch boundary: 10 samples = 2 batches of 4 per epoch
    assert first.interrupted and first.step == 4
    second = train(config, resume=True)
    assert second.step == 7 and not second.interrupted
    assert first.losses + second.losses == pytest.approx(straight.losses, abs=0, rel=0)
    for (name, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_trainer_json_keeps_the_keys_of_existing_checkpoints(tmp_path):
    config = tiny_config(tmp_path, "train.steps=2")
    result = train(config)
    folder = result.run_dir / "checkpoints" / "step_0000002"
    info = json.loads((folder / "trainer.json").read_text())
    assert set(info) == {"optimizer", "rng", "step", "epoch", "position", "total_steps", "elapsed", "best",
                         "loss_scale"}
    assert info["loss_scale"] is None  # fp32: no loss scaler
    # trainer.json as rleseg wrote it before TrainingState (one flat JSON object, no loss scale) still loads.
    del info["loss_scale"]
    info.update(step=1, epoch=3, position=4, total_steps=5, elapsed=6.5, best=None)
    (folder / "trainer.json").write_text(json.dumps(info))
    state = load_run_checkpoint(folder, result.model, build_optimizer(result.model, config.train))
    assert state == TrainingState(step=1, epoch=3, position=4, total_steps=5, elapsed=6.5, best=None)


def test_out_of_time_only_when_the_budget_is_spent():
    config = TrainConfig(steps=1000, minutes=1.0)  # 60 s
    assert not out_of_time(59.9, config) and out_of_time(60.0, config)
    assert not out_of_time(1e9, TrainConfig(steps=1000))  # no budget


def test_a_time_budget_uses_its_time_and_says_what_ended_the_run(tmp_path, capsys):
    budget = 6.0  # seconds; the tiny model's steps take a small fraction of one
    result = train(tiny_config(tmp_path, f"train.minutes={budget / 60}", "train.steps=1000000", "eval.max_samples=1"))
    state = json.loads(next((tmp_path / "run" / "checkpoints").glob("step_*/trainer.json")).read_text())
    assert budget <= state["elapsed"] <= 1.05 * budget  # the budget is used, not cut short by an early estimate
    assert result.step == state["step"] < 1000000
    out = capsys.readouterr().out
    assert "or a 0.1-minute budget" in out and f"budget ended the run at step {result.step} of 1000000" in out
    steps = train(tiny_config(tmp_path / "b", "train.minutes=10", "train.steps=2"))
    assert steps.step == 2 and "the schedule ended the run at step 2" in capsys.readouterr().out


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint to resume from"):
        train(tiny_config(tmp_path), resume=True)


def _write_config(tmp_path: Path, *extra: str) -> Path:
    from rleseg.typed_yaml import to_dict

    path = tmp_path / "tiny.yaml"
    import yaml

    path.write_text(yaml.safe_dump(to_dict(tiny_config(tmp_path, *extra))))
    return path


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_writes_a_checkpoint_before_exiting(tmp_path, signum, status):
    config = _write_config(tmp_path, "train.steps=100000")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "rleseg.cli", "train", str(config)], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.time() + 120
    run = tmp_path / "run"
    # train() installs its signal handlers before it writes config.yaml: from then on SIGTERM is answered.
    while time.time() < deadline and not (run / "config.yaml").exists():
        time.sleep(0.2)
    time.sleep(3)  # let a few steps run
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == status, output  # 128 + the signal's number, as shells report it
    saved = sorted((run / "checkpoints").glob("step_*"))
    assert len(saved) == 1, output
    step = json.loads((saved[0] / "trainer.json").read_text())["step"]
    assert 0 < step < 100000
    assert f"stopped at step {step}" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.stepz=3"], "unknown key 'train.stepz'"),
        (["--set", "train.steps=many"], "train.steps must be an integer"),
        (["--set", "model.preset=huge"], "model.preset must be one of"),
        (["--set", "tokenizer.scheme=binary"], "binary"),
    ],
)
def test_config_errors_are_one_line(tmp_path, capsys, args, message):
    config = _write_config(tmp_path)
    assert main(["train", str(config), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_two_process_ddp_stays_in_sync_and_pools_metrics_exactly(tmp_path):
    """torchrun with 2 gloo ranks: identical weights on both ranks after a time-budgeted run, and the DDP
    evaluation's pooled metrics equal a single-process evaluation of the saved model."""
    # A wall-clock budget too: the ranks must agree on when it runs out.
    config = _write_config(tmp_path, "train.steps=500", "train.minutes=0.04", "eval.max_samples=5",
                           "data.val_options={length: 6}")
    script = Path(__file__).with_name("ddp_worker.py")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(config), str(tmp_path / "ddp.json")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "ddp.json").read_text())
    assert report["world"] == 2 and 1 <= report["steps"] < 500
    assert report["checksums"][0] == report["checksums"][1]
    ddp, single = report["ddp_metrics"], report["single_metrics"]
    assert ddp["num_images"] == single["num_images"] == 5  # the ranks evaluate 3 and 2 patches
    assert ddp["pooled"] == single["pooled"] and ddp["confusion"] == single["confusion"]
    for key in ("dice", "iou", "precision", "recall"):  # per-image sums merge up to float rounding
        assert ddp["per_image"]["mean"][key] == pytest.approx(single["per_image"]["mean"][key], rel=1e-12)


def test_panoptic_run_reports_panoptic_quality(tmp_path):
    config = tiny_config(tmp_path, "train.steps=2", "tokenizer.task=panoptic", "tokenizer.thing_classes=[1, 2]")
    metrics = train(config).metrics
    assert set(metrics["panoptic"]["all"]) == {"pq", "sq", "rq", "n"}
    assert 0.0 <= metrics["panoptic"]["all"]["pq"] <= 1.0
    assert "pooled" in metrics  # the semantic scores of the painted instances come too


def test_demo_fast_mode_writes_every_output(tmp_path, capsys):
    out = tmp_path / "demo"
    overrides = [arg for item in [*TINY, "train.steps=3", "eval.max_samples=4"] for arg in ("--set", item)]
    assert main(["demo", "--minutes", "2", "--out", str(out), *overrides]) == 0
    for name in ("report.md", "best.safetensors", "metrics.json", "config.yaml", "tokens.png"):
        assert (out / name).is_file(), name
    assert list((out / "pictures").glob("step_*.png"))
    report = (out / "report.md").read_text()
    assert "all-background prediction" in report and "![tokens](tokens.png)" in report
    # The demo's config refines boundaries: the report and the last line tell the tokens' own score apart.
    assert "| its decoded tokens alone (no boundary refinement: `--token-only`) | " in report
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in printed and ", token-only " in printed


def test_a_demo_replaces_an_earlier_demo_but_no_other_run(tmp_path, capsys):
    overrides = [arg for item in [*TINY, "train.steps=2", "eval.max_samples=2"] for arg in ("--set", item)]
    out = tmp_path / "demo"
    assert main(["demo", "--minutes", "2", "--out", str(out), *overrides]) == 0
    first = (out / "report.md").stat().st_mtime_ns
    assert main(["demo", "--minutes", "2", "--out", str(out), *overrides]) == 0  # the earlier demo is replaced
    assert (out / "report.md").stat().st_mtime_ns > first
    other = tmp_path / "run"
    train(tiny_config(tmp_path, "train.steps=1"))  # a run in tmp_path / "run"
    before = sorted(p.name for p in other.rglob("*"))
    capsys.readouterr()
    assert main(["demo", "--minutes", "2", "--out", str(other), *overrides]) == 2
    assert "--overwrite" in capsys.readouterr().err and sorted(p.name for p in other.rglob("*")) == before
    assert main(["demo", "--minutes", "2", "--out", str(other), "--overwrite", *overrides]) == 0
    assert (other / "report.md").is_file()


def test_a_wall_clock_budget_moves_the_decay_along():
    config = TrainConfig(lr=1.0, warmup_steps=0, min_lr_ratio=0.0, schedule="linear")
    assert learning_rate(10, 100, config, time_fraction=0.5) == pytest.approx(0.5)  # time ahead of steps
    assert learning_rate(80, 100, config, time_fraction=0.5) == pytest.approx(0.2)  # steps ahead of time
    assert learning_rate(10, 100, config, time_fraction=1.0) == 0.0


@pytest.mark.parametrize("fusion", ["middle", "late", "static"])
def test_video_run_trains_each_fusion_and_reports_temporal_consistency(tmp_path, fusion):
    config = tiny_config(
        tmp_path, "train.steps=2", "tokenizer.task=video", "tokenizer.frames=2", "data.dataset=synthetic_video",
        f"model.fusion={fusion}", "model.max_seq_len=256", "output.pictures=2",
    )
    result = train(config)
    assert type(result.model).__name__ == "VideoPix2Seq" and result.model.config.fusion == fusion
    assert result.metrics["num_images"] == 2 * 4  # frames are scored one by one: 4 windows of 2 frames
    assert 0.0 <= result.metrics["temporal"]["pooled"]["pred_flip_rate"] <= 1.0
    assert list((result.run_dir / "pictures").glob("step_*.png"))
