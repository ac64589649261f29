"""In-training validation (learning curves) and the paired fidelity metric ``teacher_rmse``.

The training runs are gmm2d smoke runs with validation switched back on (debug=smoke turns it off): a few dozen
steps, a 16-sample validation set, CSV logging.
"""

import csv
import json
import math

import pytest
import torch

from tdd_lab.callbacks.validation import ValidationCallback, ValidationSettings
from tdd_lab.metrics import MetricSuite, TeacherDistance
from tdd_lab.metrics.paired import paired_rmse
from tdd_lab.train import train
from tdd_lab.validate import ConfigError, preflight

from .conftest import compose_cfg, fast_overrides


# ---- teacher_rmse ------------------------------------------------------------------------------------
def test_paired_rmse_by_hand():
    samples = torch.tensor([[[1.0, -1.0]], [[3.0, 4.0]], [[0.0, 0.0]]])  # (3, 1, 2)
    reference = torch.zeros(3, 1, 2)
    reference[2] = torch.tensor([[2.0, 0.0]])
    # per-sample RMSE: sqrt((1 + 1) / 2) = 1, sqrt((9 + 16) / 2) = sqrt(12.5), sqrt((4 + 0) / 2) = sqrt(2)
    expected = (1.0 + math.sqrt(12.5) + math.sqrt(2.0)) / 3
    assert paired_rmse(samples, reference) == pytest.approx(expected, rel=1e-12)
    assert paired_rmse(reference, reference) == 0.0
    with pytest.raises(ValueError, match="same evaluation noise"):
        paired_rmse(samples, reference[:2])


def test_teacher_distance_in_a_suite_gets_the_reference():
    metric = TeacherDistance()
    with pytest.raises(RuntimeError, match="set_teacher_samples"):
        metric.compute(torch.zeros(2, 2), None, None, None, None)
    suite = MetricSuite({"paired": metric})
    assert suite.needs_teacher_samples
    suite.set_teacher_samples(torch.zeros(2, 2))
    assert suite.compute(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), None, None, None, None) == {
        "teacher_rmse": pytest.approx(math.sqrt(12.5) / 2)}


def test_teacher_rmse_through_the_evaluator(tmp_path):
    """The Evaluator hands the metric the teacher's 6-step reference: zero for that run itself, and the paired RMSE of
    the 2-step samples to it otherwise."""
    from tdd_lab.evaluation import Evaluator
    from tdd_lab.guidance import DecoupledGuidance
    from tdd_lab.samplers import TDDSampler
    from tdd_lab.teachers.gmm import GMMTeacher

    teacher = GMMTeacher(num_components=8, num_classes=4, cache_dir=str(tmp_path), init_steps=1)
    evaluator = Evaluator(TeacherDistance(), steps=[2], num_samples=8, batch_size=8, teacher_steps=6,
                          cache_dir=str(tmp_path), progress=False)
    metrics, samples = evaluator.evaluate_teacher(teacher, DecoupledGuidance(w=2.0), TDDSampler(eta=0.0))
    assert metrics["teacher/teacher_rmse@6"] == 0.0
    assert metrics["teacher/teacher_rmse@2"] == pytest.approx(paired_rmse(samples[2], samples[6]))
    assert metrics["teacher/teacher_rmse@2"] > 0.0


# ---- settings ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("validation.every_n_steps=-1", "validation.every_n_steps must be >= 0"),
    ("validation.num_samples=1", "validation.num_samples must be >= 2"),
    ("validation.batch_size=0", "validation.batch_size must be >= 1"),
    ("validation.every_n_steps=abc", "validation.every_n_steps: expected an integer"),
    ("validation.steps=[2,99]", "validation.steps: 99 is outside"),
    ("validation.steps=[two]", "validation.steps: give a list of step counts"),
    ("validation.steps=4", "validation.steps: give a list of step counts"),
    ("+validation.every=3", "unknown key validation.every"),
])
def test_bad_validation_settings_fail_before_training(override, message, tmp_path, cache_dir):
    cfg = compose_cfg(fast_overrides("tdd_gmm2d") + ["validation.every_n_steps=10", override], tmp_path, cache_dir)
    with pytest.raises(ConfigError, match=message):
        preflight(cfg)


def test_settings_replace_the_run_evaluator_values(tmp_path, cache_dir):
    cfg = compose_cfg(fast_overrides("tdd_gmm2d") + ["validation.steps=[4]", "validation.num_samples=16"], tmp_path,
                      cache_dir)
    node = ValidationSettings.from_config(cfg.validation).evaluator_config(cfg.metrics)
    assert (node.num_samples, node.seed, list(node.steps), node.progress) == (16, 10000, [4], False)
    assert node.batch_size == cfg.metrics.batch_size and node.metrics.ode_steps == 100  # the rest: the run's
    assert ValidationSettings.from_config(None).every_n_steps == 0
    assert cfg.validation.every_n_steps == 0  # debug=smoke turns it off


# ---- training runs -------------------------------------------------------------------------------------
VAL = ["validation.every_n_steps=10", "validation.num_samples=16", "validation.steps=[2,4]", "cpu_threads=1"]


def csv_rows(run_dir):
    """Every row of every CSV logger version of the run, in order."""
    rows = []
    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        with open(path) as f:
            rows += list(csv.DictReader(f))
    return rows


def column(rows, key):
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]


def test_validation_does_not_change_training_and_logs_curves(tmp_path, cache_dir):
    """Same train/loss with validation on and off (to the bit); val/<metric>@K at steps 0, 10, 20 in the CSV and
    validation.json, a sample grid per validated step and step count, and the time fraction at the end."""
    base = fast_overrides("tdd_gmm2d") + ["trainer.max_steps=20", "metrics.num_samples=16", "metrics.batch_size=16"]
    off, on = tmp_path / "off", tmp_path / "on"
    train(compose_cfg(base + ["cpu_threads=1"], off, cache_dir))
    metrics = train(compose_cfg(base + VAL, on, cache_dir))
    loss_off, loss_on = column(csv_rows(off), "train/loss"), column(csv_rows(on), "train/loss")
    assert len(loss_off) == 20 and loss_on == loss_off
    assert json.loads((off / "metrics.json").read_text()) == metrics  # the final evaluation too

    rows = csv_rows(on)
    assert [s for s, _ in column(rows, "val/ode_error@4")] == [0, 10, 20]
    curve = json.loads((on / "validation.json").read_text())
    assert list(curve) == ["0", "10", "20"]
    assert set(curve["20"]) == {f"val/{m}@{k}" for m in ("ode_error", "swd") for k in (2, 4)} | {"val/seconds"}
    assert [v for _, v in column(rows, "val/ode_error@4")] == [curve[s]["val/ode_error@4"] for s in curve]
    assert curve["20"]["val/ode_error@4"] < curve["0"]["val/ode_error@4"]  # the student learns
    assert sorted(p.relative_to(on / "val_samples").as_posix() for p in (on / "val_samples").rglob("*.png")) == [
        f"step_{s:06d}/student_{k}steps.png" for s in (0, 10, 20) for k in (2, 4)]
    (fraction,) = column(rows, "val/time_fraction")
    assert fraction[0] == 20 and 0.0 < fraction[1] < 1.0


def test_resume_continues_the_curve_without_duplicates(tmp_path, cache_dir):
    """A run stopped at max_steps=20 and resumed (resume=auto) to 40 validates 30 and 40 only: validation.json and
    the CSV rows over both logger versions hold each of 0, 10, ..., 40 once; the first process's points are kept.
    (That a resumed run's numbers equal an uninterrupted run's is tests/test_resume.py's subject.)"""
    run = tmp_path / "run"
    base = fast_overrides("tdd_gmm2d") + VAL + [
        "validation.steps=[4]", "callbacks=default", "trainer.enable_checkpointing=true",
        "callbacks.checkpoint.every_n_train_steps=10", "metrics.num_samples=16", "metrics.batch_size=16"]
    train(compose_cfg(base + ["trainer.max_steps=20"], run, cache_dir))
    first = json.loads((run / "validation.json").read_text())
    assert list(first) == ["0", "10", "20"]
    train(compose_cfg(base + ["trainer.max_steps=40", "resume=auto"], run, cache_dir))

    curve = json.loads((run / "validation.json").read_text())
    assert list(curve) == ["0", "10", "20", "30", "40"]
    assert {s: curve[s] for s in first} == first
    rows = csv_rows(run)
    assert [s for s, _ in column(rows, "val/ode_error@4")] == [0, 10, 20, 30, 40]  # no point twice, none missing
    assert [s for s, _ in column(rows, "val/time_fraction")] == [20, 40]  # one per process


def test_resume_after_a_kill_replaces_the_points_after_the_checkpoint(tmp_path):
    """validation.json keeps the points up to the checkpoint's step; later ones (from steps the resumed run redoes)
    are dropped and validated again; the checkpoint's own step is not validated twice."""

    class Trainer:  # what the callback reads of a trainer
        def __init__(self, step):
            self.global_step, self.is_global_zero, self.ckpt_path, self.loggers = step, True, "last.ckpt", []

    callback = ValidationCallback(lambda: None, None, None, tmp_path, every_n_steps=2)
    (tmp_path / "validation.json").write_text(json.dumps({str(s): {"val/x@2": float(s)} for s in (0, 2, 4, 6)}))
    callback.load_state_dict({"validated": [0, 2, 4]})  # the checkpoint at step 4
    calls = []
    callback._validate = lambda trainer, module: calls.append(trainer.global_step)
    callback.on_train_start(Trainer(4), None)
    assert calls == [] and sorted(callback.history) == [0, 2, 4]
    callback.on_train_batch_end(Trainer(5), None)
    callback.on_train_batch_end(Trainer(6), None)
    assert calls == [6]


@pytest.mark.slow
def test_ddp_rank0_validates_while_the_other_rank_waits(tmp_path, cache_dir):
    """`trainer=ddp` with 2 CPU processes: validation runs on rank 0 only, the run does not hang at the barrier, and
    one curve is written."""
    from .test_resume import cli

    run = tmp_path / "ddp"
    res = cli(["+experiment=tdd_gmm2d", "debug=smoke", "trainer=ddp", "trainer.devices=2", "teacher.init_steps=20",
               "metrics.metrics.ode_steps=100", "trainer.max_steps=6", *VAL[:-1], "validation.every_n_steps=3",
               f"hydra.run.dir={run}"], cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert list(json.loads((run / "validation.json").read_text())) == ["0", "3", "6"]
    assert "validation at step 3" in (run / "train.log").read_text()
    assert "validation at step" not in (run / "train_ddp_process_1.log").read_text()
    assert [s for s, _ in column(csv_rows(run), "val/ode_error@4")] == [0, 3, 6]


def test_forked_rng_restores_every_stream():
    import random

    import numpy as np

    from tdd_lab.callbacks.validation import forked_rng

    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    with forked_rng(torch.device("cpu")):
        torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(torch.get_rng_state(), states[0])
    assert (np.random.get_state()[1] == states[1]).all() and random.getstate() == states[2]


def test_points_and_grids_go_to_every_logger_and_wandb_gets_images(tmp_path):
    from pytorch_lightning.loggers import WandbLogger

    class Recorder(WandbLogger):  # records what would be sent to W&B
        def __init__(self):
            super().__init__(offline=True, save_dir=str(tmp_path))
            self.calls = []

        def log_metrics(self, metrics, step=None):
            self.calls.append(("metrics", step, dict(metrics)))

        def log_image(self, key, images, step=None, **kwargs):
            self.calls.append(("image", step, key, images))

    class Plain:
        def __init__(self):
            self.calls = []

        def log_metrics(self, metrics, step=None):
            self.calls.append(("metrics", step, dict(metrics)))

    wandb, plain = Recorder(), Plain()
    trainer = type("T", (), {"loggers": [plain, wandb]})()
    callback = ValidationCallback(lambda: None, None, None, tmp_path, every_n_steps=5)
    grid = tmp_path / "student_2steps.png"
    callback._write(trainer, 10, {"val/x@2": 1.5, "val/seconds": 0.1}, {2: grid})
    assert plain.calls == [("metrics", 10, {"val/x@2": 1.5, "val/seconds": 0.1})]
    assert wandb.calls == [plain.calls[0], ("image", 10, "val/samples@2", [str(grid)])]
    callback._write(trainer, 5, {"val/x@2": 1.0}, {})
    curve = json.loads((tmp_path / "validation.json").read_text())
    assert curve == {"5": {"val/x@2": 1.0}, "10": {"val/x@2": 1.5, "val/seconds": 0.1}}
    assert list(curve) == ["5", "10"]  # numeric step order
