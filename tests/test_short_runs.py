"""Runs that say when they are too short: a warm-up the run will not finish (at the start), and at the end a
learning rate that never peaked, validation scores still rising steeply, a refiner that changed (almost)
nothing."""

import contextlib
import io
import json

from helpers import TINY
from rleseg.experiment import load_config
from rleseg.metrics.refinement import IDLE_SHARE
from rleseg.train import train
from rleseg.training_output import STILL_RISING, WarmupCheck, end_warnings


class Lines:
    """A progress bar's ``write``, kept."""

    def __init__(self):
        self.lines = []

    def write(self, text, file=None):
        self.lines.append(text)


def _config(*extra: str):
    return load_config(None, [*TINY, *extra])


# ----------------------------------------------------------------------------- at the start: the warm-up
def test_a_budget_that_ends_inside_the_warm_up_is_foreseen_from_the_pace_of_the_first_steps():
    bar = Lines()
    check = WarmupCheck(steps=5000, warmup_steps=100, minutes=1.0)
    for step, elapsed in [(1, 5.0), (2, 6.0), (3, 7.0)]:  # the first step pays for start-up; then 1 s a step
        check.observe(step, elapsed, bar)
    assert bar.lines == []  # not before WARMUP_PROBE_STEPS steps after the first were timed
    check.observe(4, 8.0, bar)
    assert len(bar.lines) == 1
    line = bar.lines[0]
    # 52 s left at 1 s a step: step 4 + 52 = 56 < 100 warm-up steps.
    assert line.startswith("rleseg: warning: at 1.00 s a step, the 1-minute budget (train.minutes) ends the run at "
                           "about step 56, inside its 100-step warm-up (train.warmup_steps)")
    assert "lower train.warmup_steps (to about 5) or raise train.minutes" in line
    for step in range(5, 20):
        check.observe(step, 3.0 + step, bar)
    assert len(bar.lines) == 1  # once


def test_a_budget_that_outlasts_the_warm_up_and_a_run_past_it_say_nothing():
    bar = Lines()
    roomy = WarmupCheck(steps=5000, warmup_steps=100, minutes=10.0)
    for step in range(1, 10):
        roomy.observe(step, float(step), bar)  # 1 s a step: about 600 steps
    resumed = WarmupCheck(steps=5000, warmup_steps=100, minutes=1.0)
    resumed.observe(150, 59.0, bar)  # resumed past its warm-up, almost out of time
    unbudgeted = WarmupCheck(steps=5000, warmup_steps=100, minutes=None)
    unbudgeted.observe(1, 100.0, bar)
    assert bar.lines == []


def test_a_schedule_shorter_than_its_warm_up_is_said_at_once():
    bar = Lines()
    WarmupCheck(steps=30, warmup_steps=50, minutes=None).observe(1, 0.1, bar)
    assert bar.lines == ["rleseg: warning: train.steps 30 ends the run, inside its 50-step warm-up "
                         "(train.warmup_steps): the learning rate would never reach train.lr; lower "
                         "train.warmup_steps"]


# ----------------------------------------------------------------------------- at the end
def _eval_log(tmp_path, entries):
    (tmp_path / "eval_log.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return tmp_path


def test_a_run_that_ended_inside_its_warm_up_says_the_rate_never_peaked(tmp_path):
    config = _config("train.warmup_steps=50", "train.lr=0.002")
    warnings = end_warnings(config, tmp_path, 35, {})
    assert warnings == ["the learning rate never reached its peak: the run ended at step 35, inside its 50-step "
                        "warm-up (train.warmup_steps), at 70% of train.lr 0.002; lower train.warmup_steps, or train "
                        "longer"]
    assert end_warnings(config, tmp_path, 50, {}) == []  # step 50 trained at the full rate


def test_validation_scores_still_rising_steeply_are_said(tmp_path):
    config = _config()
    metric = config.eval.best_metric
    rising = [{"step": 100, metric: 0.40}, {"step": 100, metric: 0.41},  # a step validated twice: its last line
              {"step": 150, "panoptic.all.pq": 0.9},  # another metric's line (a resumed run changed it)
              {"step": 200, metric: 0.41 + STILL_RISING}]
    (warning,) = end_warnings(config, _eval_log(tmp_path, rising), 200, {})
    assert warning.startswith(f"validation {metric} was still rising steeply: 0.410 at step 100, 0.430 at step 200 "
                              "(+0.020; steeply: +0.02 or more between the last two validations)")
    assert f"rleseg train --resume {tmp_path}" in warning
    flat = [{"step": 100, metric: 0.40}, {"step": 200, metric: 0.40 + STILL_RISING / 2}]
    assert end_warnings(config, _eval_log(tmp_path, flat), 200, {}) == []
    assert end_warnings(config, _eval_log(tmp_path, flat[1:]), 200, {}) == []  # one validation: no trend
    (tmp_path / "eval_log.jsonl").write_text('{"step": 100, "' + metric + '": 0.1}\n{"step": 2')  # a line cut short
    assert end_warnings(config, tmp_path, 200, {}) == []


def test_a_refiner_that_changed_almost_nothing_is_said(tmp_path):
    config = _config()
    idle = {"refinement": {"changed_pixels": 3, "patch_pixels": 65536, "changed_share": 3 / 65536}}
    (warning,) = end_warnings(config, tmp_path, 100, idle)
    assert warning.startswith("the refiner (model.refine_band) changed 3 of the 65,536 validation pixels (under 0.1%)")
    working = {"refinement": {"changed_pixels": 700, "patch_pixels": 65536, "changed_share": 700 / 65536}}
    assert 700 / 65536 > IDLE_SHARE and end_warnings(config, tmp_path, 100, working) == []


def test_a_short_budgeted_run_with_a_refiner_warns_at_its_start_and_end(tmp_path):
    """The issue's run in small: a budget that ends inside the warm-up, a refiner that learnt nothing yet."""
    config = _config("train.minutes=0.2", "train.steps=100000", "train.warmup_steps=100000", "model.refine_band=1",
                     f"output.dir={tmp_path / 'run'}")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        result = train(config, show_progress=False)
    warnings = [line for line in err.getvalue().splitlines() if line.startswith("rleseg: warning:")]
    assert result.step < 100000 and len(warnings) == 3, err.getvalue()
    assert "the 0.2-minute budget (train.minutes) ends the run at about step" in warnings[0]
    assert f"the learning rate never reached its peak: the run ended at step {result.step}" in warnings[1]
    assert "the refiner (model.refine_band) changed 0 of the" in warnings[2]
    refinement = json.loads((tmp_path / "run" / "metrics.json").read_text())["refinement"]
    assert refinement == result.metrics["refinement"] and refinement["changed_pixels"] == 0
    assert refinement["patch_pixels"] == 4 * 64 * 64  # eval.max_samples 4 patches of 64 px
